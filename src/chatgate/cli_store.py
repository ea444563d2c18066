"""``chatgate keys ...`` and ``chatgate users ...``: manage the store's users and API keys."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, make_url

from chatgate.settings import Settings, data_dir_origin, masked
from chatgate.store.db import Store, async_url, database_url, migrate_engine
from chatgate.store.repos import PREFIX_LEN, key_digest

SCOPES = ("user", "admin", "trusted_forwarder")


def sqlite_file(settings: Settings) -> Path | None:
    """The SQLite file the store is in (``None``: a server database such as PostgreSQL)."""
    if not settings.database_url:
        return settings.data_dir.resolve() / "chatgate.db"
    url = make_url(async_url(settings.database_url))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).resolve()
    return None


def _where(settings: Settings) -> str:
    file = sqlite_file(settings)
    return str(file) if file is not None else masked(settings)["database_url"]


def no_store(settings: Settings) -> SystemExit:
    return SystemExit(
        f"chatgate: no store at {_where(settings)} (data directory {settings.data_dir}, from "
        f"{data_dir_origin(settings)}): `chatgate serve` creates it there; or give the server's own with "
        "--config or CHATGATE_DATA_DIR"
    )


async def open_store(settings: Settings, create: bool = False) -> Store:
    """The store; unless ``create``, only one that exists (a read never leaves an empty store behind)."""
    file = sqlite_file(settings)
    if not create and file is not None and not file.is_file():
        raise no_store(settings)
    if create or file is not None:
        return await Store.open(database_url(settings))
    store = await Store.open(database_url(settings), migrate=False)
    try:
        async with store.engine.connect() as conn:
            exists = await conn.run_sync(lambda c: inspect(c).has_table("alembic_version"))
        if not exists:
            raise no_store(settings)
        await migrate_engine(store.engine)  # an existing store is brought up to date, as `serve` does
    except BaseException:
        await store.close()
        raise
    return store


def _run(settings: Settings, work: Callable[[Store], Awaitable[int]], create: bool = False) -> int:
    async def main() -> int:
        store = await open_store(settings, create)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print("(none)")
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))


def keys(args: argparse.Namespace, settings: Settings) -> int:
    async def create(store: Store) -> int:
        if await store.users.get(args.user) is None:
            raise SystemExit(f"chatgate: no user '{args.user}' (create it with `chatgate users create`)")
        expires = datetime.now(UTC) + timedelta(days=args.expires_in_days) if args.expires_in_days else None
        row, plain = await store.keys.create(
            args.user, name=args.name, scopes=tuple(args.scope or ["user"]), expires_at=expires
        )
        print(f"key id:  {row.id}\nscopes:  {', '.join(row.scopes)}\nexpires: {row.expires_at or 'never'}\n")
        print(f"    {plain}\n\nShown once: only its SHA-256 is stored.")
        return 0

    async def list_(store: Store) -> int:
        rows = await store.keys.list(args.user)
        _print(
            [
                {
                    "id": r.id,
                    "prefix": r.prefix,
                    "user": r.user_id,
                    "name": r.name or "",
                    "scopes": ",".join(r.scopes),
                    "expires": r.expires_at or "",
                    "revoked": r.revoked_at or "",
                    "last_used": r.last_used_at or "",
                }
                for r in rows
            ],
            args.json,
        )
        return 0

    async def revoke(store: Store) -> int:
        target = args.key.strip()
        if len(target) > PREFIX_LEN and (row := await store.keys.by_digest(key_digest(target))) is not None:
            target = row.id  # the whole key: never printed back
        if not await store.keys.revoke(target):
            raise SystemExit("chatgate: no single key matches that (give the key itself, its id or its prefix)")
        print(f"revoked {target} (running servers stop accepting it within identity.key_cache_ttl seconds)")
        return 0

    return _run(settings, {"create": create, "list": list_, "revoke": revoke}[args.keys_command])


def users(args: argparse.Namespace, settings: Settings) -> int:
    async def create(store: Store) -> int:
        if args.id is not None and (not args.id or "/" in args.id or not args.id.isprintable() or len(args.id) > 256):
            # "/" separates a key owner from the OpenAI `user` it names: "a" naming "b" is the user "a/b"
            raise SystemExit("chatgate: a user id is 1-256 printable characters, without '/'")
        try:
            row = await store.users.create(args.name, email=args.email, role=args.role, user_id=args.id)
        except ValueError as exc:  # AlreadyExists
            raise SystemExit(f"chatgate: {exc}") from None
        print(f"user id: {row.id}")
        return 0

    async def list_(store: Store) -> int:
        rows = await store.users.list()
        _print(
            [
                {
                    "id": r.id,
                    "name": r.name or "",
                    "email": r.email or "",
                    "role": r.role or "",
                    "source": r.source,
                    "disabled": r.disabled,
                }
                for r in rows
            ],
            args.json,
        )
        return 0

    async def disable(store: Store) -> int:
        if not await store.users.set_disabled(args.user, not args.enable):
            raise SystemExit(f"chatgate: no user '{args.user}'")
        print(f"{'enabled' if args.enable else 'disabled'} {args.user}")
        return 0

    command = args.users_command
    return _run(settings, {"create": create, "list": list_, "disable": disable}[command], create=command == "create")


def add_parsers(sub: Any, settings_cmd: Callable[[argparse.Namespace], Settings]) -> None:
    k = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    c = k.add_parser("create", help="create a key for a user (shown once)")
    c.add_argument("--user", required=True, help="the owner's user id")
    c.add_argument("--name", help="a label")
    c.add_argument("--scope", action="append", choices=SCOPES, help="repeat for several (default: user)")
    c.add_argument("--expires-in-days", type=float, help="expiry (default: never)")
    ls = k.add_parser("list", help="list keys (prefixes only)")
    ls.add_argument("--user", help="only this user's keys")
    ls.add_argument("--json", action="store_true")
    r = k.add_parser("revoke", help="revoke a key: the key itself, its id or its prefix")
    r.add_argument("key", help="the whole key, its id (k-...) or its prefix as `keys list` shows it")
    for p in (c, ls, r):
        p.add_argument("--config", help="YAML config file (or CHATGATE_CONFIG)")
        p.set_defaults(func=lambda a: keys(a, settings_cmd(a)))

    u = sub.add_parser("users", help="manage users").add_subparsers(dest="users_command", required=True)
    uc = u.add_parser("create", help="create a user")
    uc.add_argument("name")
    uc.add_argument("--email")
    uc.add_argument("--role")
    uc.add_argument("--id", help="choose the id (default: generated)")
    ul = u.add_parser("list", help="list users")
    ul.add_argument("--json", action="store_true")
    ud = u.add_parser("disable", help="disable a user (their keys stop working)")
    ud.add_argument("user")
    ud.add_argument("--enable", action="store_true", help="enable again")
    for p in (uc, ul, ud):
        p.add_argument("--config", help="YAML config file (or CHATGATE_CONFIG)")
        p.set_defaults(func=lambda a: users(a, settings_cmd(a)))
