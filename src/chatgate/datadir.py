"""The data directory is its owner's only: created 0700, its files 0600.

Everything chatgate writes under ``data_dir`` (the SQLite store and its WAL and SHM files, the admin
key digest, Chroma's files, uploads, postings, metrics snapshots, the assembled model) is created
by processes whose umask is ``077`` (``chatgate serve`` and every CLI command set it at start, and
their workers and child processes inherit it). A data directory created by an earlier version,
or by hand, is tightened: ``chatgate serve`` takes the group's and others' permissions off it and
off everything in it, every other command off the directory itself.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("chatgate")

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700


def make_private(data_dir: Path, *, deep: bool = False) -> None:
    """Umask ``077`` for this process and its children; ``data_dir`` (and, ``deep``, what it holds) tightened."""
    os.umask(PRIVATE_UMASK)
    if not data_dir.is_dir():
        return
    paths = [data_dir]
    if deep:
        for root, dirs, files in os.walk(data_dir):
            paths += [Path(root, name) for name in (*dirs, *files)]
    refused = 0
    for path in paths:
        try:
            mode = os.lstat(path).st_mode
            if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & PRIVATE_UMASK:
                os.chmod(path, stat.S_IMODE(mode) & ~PRIVATE_UMASK)
        except PermissionError:  # not ours: say so once, go on
            refused += 1
        except FileNotFoundError:  # removed meanwhile
            continue
    if refused:
        log.warning("could not make %d path(s) under the data directory private (not owned by us)", refused)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing, else take the group's and others' permissions off it.

    For files a library creates with its own default mode (SQLite: 0644, less the umask; its WAL and
    SHM files then copy the database file's mode).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & PRIVATE_UMASK:
            os.chmod(path, mode & ~PRIVATE_UMASK)
        return
    os.close(fd)
