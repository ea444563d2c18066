"""The command line: ``chatgate serve | version | config show | config docs | keys ... | users ...``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from chatgate import __version__
from chatgate.datadir import make_private
from chatgate.settings import CONFIG_ENV, Settings, data_dir_origin, load_settings, masked

log = logging.getLogger("chatgate")


def _settings(args: argparse.Namespace, announce: bool = True) -> Settings:
    """The settings, by the one rule every command shares (``load_settings``); the data directory used is
    said on standard error (``serve`` logs it instead)."""
    try:
        settings = load_settings(getattr(args, "config", None))
    except FileNotFoundError as exc:
        raise SystemExit(f"chatgate: {exc}") from None
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise SystemExit(f"chatgate: invalid configuration:\n{exc}") from None
    if announce:
        print(f"chatgate: data directory {settings.data_dir} (from {data_dir_origin(settings)})", file=sys.stderr)
    make_private(settings.data_dir)  # files the command creates are private from here on (umask 077)
    return settings


def prepare_metrics_dir(directory: Path) -> None:
    """Empty ``directory`` and have the workers share their metrics through it (``observe/metrics.py``)."""
    from chatgate.observe.metrics import DIR_ENV

    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.json"):
        stale.unlink()
    os.environ[DIR_ENV] = str(directory)


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    """uvicorn, with chatgate's limits on request heads (``api/httpserver.py``), as ``uvicorn.run`` would."""
    import uvicorn

    from chatgate.api.httpserver import GatewayConfig, HeadLimits, LimitedHttpTools

    s = settings.server
    config = GatewayConfig(
        "chatgate.app:create_app_from_env",
        head_limits=HeadLimits(max_bytes=s.max_header_bytes, max_fields=s.max_headers, timeout=s.header_timeout),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=LimitedHttpTools,
        log_config=None,
        access_log=False,
        server_header=False,
        # X-Forwarded-For is chatgate's to judge (identity.trusted_proxies), not uvicorn's: left as sent.
        proxy_headers=False,
        timeout_graceful_shutdown=30,
    )
    if workers > 1:
        _Supervisor(config, sockets=[config.bind_socket()]).run()  # each worker reloads on SIGHUP
        return
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app's lifespan reloads on it
    server = uvicorn.Server(config)
    server.run()
    if not server.started:  # as uvicorn.run: the app did not start
        raise SystemExit(3)


def cmd_serve(args: argparse.Namespace) -> int:

    from chatgate.app import print_new_admin_key
    from chatgate.identity.keys import bootstrap_admin_digest
    from chatgate.observe.logging import configure
    from chatgate.upstream.local import LocalModel

    settings = _settings(args, announce=False)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    workers = args.workers or settings.server.workers
    configure(settings.log)
    log.info(
        "data directory",
        extra={
            "data_dir": str(settings.data_dir),
            "from": data_dir_origin(settings),
            "config": os.environ.get(CONFIG_ENV),
        },
    )
    # The workers read the same settings: the data directory as resolved here, whatever their folder.
    os.environ["CHATGATE_DATA_DIR"] = str(settings.data_dir)
    # And how many they are (``--workers`` wins over the setting): with more than one, they share one limiter.
    os.environ["CHATGATE_SERVER__WORKERS"] = str(workers)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    make_private(settings.data_dir, deep=True)  # a data directory from before: its files made private too
    # Before the workers start, so they all share one key and none prints it again.
    admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
    _, new_key = bootstrap_admin_digest(settings.data_dir, admin_key)
    if new_key:
        print_new_admin_key(new_key, settings)

    local = None
    if settings.wants_local_model():
        log.info("no upstream configured: starting the bundled local model")
        local = LocalModel(settings.local, settings.data_dir)
        try:
            os.environ["CHATGATE_LOCAL__BASE_URL"] = local.start()
        except (RuntimeError, TimeoutError) as exc:
            local.stop()
            raise SystemExit(f"chatgate: the local model did not start: {exc}") from None
        os.environ["CHATGATE_LOCAL__API_KEY"] = local.api_key
        os.environ["CHATGATE_LOCAL__GGUF_PATH"] = str(local.model_path)  # the workers need not assemble it again
    if settings.metrics.enabled and workers > 1:
        prepare_metrics_dir(settings.data_dir / "metrics")
    # uvicorn drains and shuts down on SIGTERM/SIGINT, then re-raises the signal: end with a clean exit
    # (status 0) that still runs the ``finally`` below, instead of dying on the default handler.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    try:
        serve(settings, host, port, workers)
    finally:
        if local is not None:
            local.stop()
    return 0


def _Supervisor(config: Any, sockets: list[Any]) -> Any:
    """uvicorn's worker supervisor, except that SIGHUP reaches every worker (each reloads the configuration:
    ``app.reload_config``) instead of replacing them all."""
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:
            log.info("SIGHUP: every worker reloads the configuration")
            for process in self.processes:
                if process.pid is not None and process.process.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGHUP)

    return Supervisor(config, sockets=sockets)


def _exit_cleanly(signum: int, _frame: object) -> None:
    raise SystemExit(0)


def cmd_version(_: argparse.Namespace) -> int:
    print(f"chatgate {__version__}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from chatgate.cli_store import sqlite_file

    settings = _settings(args)
    store = sqlite_file(settings)
    if store is not None and not store.is_file():  # said, not created: this command only reads
        print(f"chatgate: no store at {store} yet (`chatgate serve` creates it)", file=sys.stderr)
    data = masked(settings)
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def cmd_config_docs(args: argparse.Namespace) -> int:
    from chatgate.settings_doc import render

    text = render()
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text, end="")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chatgate", description="A self-hosted, OpenAI-compatible chat gateway.")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="bind address (default: server.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: server.port, 8080)")
    serve.add_argument("--workers", type=int, help="worker processes (default: server.workers, 1)")
    serve.add_argument("--config", help="YAML config file (or CHATGATE_CONFIG)")
    serve.set_defaults(func=cmd_serve)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)

    config = sub.add_parser("config", help="inspect the configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the effective configuration, secrets masked")
    show.add_argument("--config", help="YAML config file (or CHATGATE_CONFIG)")
    show.add_argument("--format", choices=["yaml", "json"], default="yaml")
    show.set_defaults(func=cmd_config_show)
    docs = config_sub.add_parser("docs", help="print the configuration reference (Markdown)")
    docs.add_argument("--output", help="write to this file instead of stdout")
    docs.set_defaults(func=cmd_config_docs)

    from chatgate.cli_rag import add_parsers as add_rag_parsers
    from chatgate.cli_store import add_parsers

    add_parsers(sub, _settings)
    add_rag_parsers(sub, _settings)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
