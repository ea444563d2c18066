"""The data directory made private: the process umask, an existing directory tightened, SQLite's file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatgate.datadir import make_private, private_file


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    """``make_private`` sets the process umask: put the test runner's back afterwards."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_files_created_afterwards_are_private(tmp_path: Path, umask: None) -> None:
    make_private(tmp_path / "not-yet")  # a missing directory is not created, the umask is set all the same
    assert not (tmp_path / "not-yet").exists()
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    assert mode(tmp_path / "f") == 0o600 and mode(tmp_path / "d") == 0o700


def test_an_existing_directory_is_tightened(tmp_path: Path, umask: None) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "file").write_text("x")
    (data / "db").write_text("x")
    os.symlink("/etc/hostname", data / "link")  # a link is left alone (chmod would change its target)
    for path, m in ((data, 0o755), (data / "sub", 0o775), (data / "sub" / "file", 0o664), (data / "db", 0o644)):
        os.chmod(path, m)
    make_private(data)  # the directory only
    assert mode(data) == 0o700 and mode(data / "db") == 0o644
    make_private(data, deep=True)
    assert (mode(data), mode(data / "sub"), mode(data / "sub" / "file"), mode(data / "db")) == (
        0o700,
        0o700,
        0o600,
        0o600,
    )
    assert mode(Path("/etc/hostname")) & 0o044  # untouched


def test_private_file_creates_or_tightens(tmp_path: Path) -> None:
    made = tmp_path / "new.db"
    private_file(made)
    assert made.stat().st_size == 0 and mode(made) == 0o600
    old = tmp_path / "old.db"
    old.write_text("data")
    os.chmod(old, 0o644)
    private_file(old)
    assert old.read_text() == "data" and mode(old) == 0o600


async def test_the_sqlite_store_and_its_wal_and_shm_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    from sqlalchemy import text

    from chatgate.store.db import Store

    old = os.umask(0o022)  # a process that did not set the private umask (an embedding application, a test)
    try:
        store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/chatgate.db")
        try:
            async with store.engine.begin() as conn:
                await conn.execute(text("CREATE TABLE t (x INTEGER)"))
                await conn.execute(text("INSERT INTO t VALUES (1)"))
            names = {name: mode(tmp_path / name) for name in os.listdir(tmp_path) if name.startswith("chatgate.db")}
        finally:
            await store.close()
    finally:
        os.umask(old)
    assert {"chatgate.db", "chatgate.db-wal", "chatgate.db-shm"} <= set(names)
    assert all(m == 0o600 for m in names.values()), names
