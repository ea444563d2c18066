"""Packaged local models: finding their chunk packages, joining and checking the GGUF, and the catalogue."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import typing
from pathlib import Path

import pytest

from chatgate.settings import LocalModelSettings, PackagedModelName
from chatgate.upstream import models
from chatgate.upstream.models import PACKAGED, ModelUnavailable, PackagedModel, chunk_paths, gguf_path

PIECES = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]


@pytest.fixture
def packages(tmp_path, monkeypatch) -> Path:
    """Three real chunk packages on sys.path, as pip would install them."""
    site = tmp_path / "site"
    for i, piece in enumerate(PIECES, 1):
        pkg = site / f"fake_chunk_{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('chunk packages are found, never imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(piece)
    monkeypatch.syspath_prepend(str(site))
    return site


def fake_model(**changes: object) -> PackagedModel:
    whole = b"".join(PIECES)
    model = PackagedModel(
        name="fake-model",
        title="Fake",
        distribution="fake-chunk-1",
        extra="local-fake",
        chunks=tuple((f"fake_chunk_{i}", f"data/part{i:02d}.bin") for i in range(1, 4)),
        file="fake.gguf",
        sha256=hashlib.sha256(whole).hexdigest(),
        size=len(whole),
        licence="none",
    )
    return dataclasses.replace(model, **changes)  # type: ignore[arg-type]


def test_chunks_are_joined_in_order_and_checked(packages, tmp_path):
    path = gguf_path(fake_model(), tmp_path / "data")
    assert path == tmp_path / "data" / "models" / "fake.gguf"
    assert path.read_bytes() == b"".join(PIECES)
    assert not list(path.parent.glob("*.partial"))
    assert "fake_chunk_1" not in sys.modules  # located, not imported


def test_a_checked_file_is_not_hashed_again_until_it_changes(packages, tmp_path, monkeypatch):
    data = tmp_path / "data"
    path = gguf_path(fake_model(), data)
    hashed: list[Path] = []
    real = models._digest
    monkeypatch.setattr(models, "_digest", lambda p: hashed.append(p) or real(p))
    assert gguf_path(fake_model(), data) == path and hashed == []  # the stamp vouches for it
    path.write_bytes(b"half-written")  # an interrupted copy, or someone else's file
    assert gguf_path(fake_model(), data).read_bytes() == b"".join(PIECES)
    assert hashed == [path]  # checked, found wrong, joined again


def test_chunks_that_do_not_make_the_pinned_file_are_refused(packages, tmp_path):
    with pytest.raises(ModelUnavailable, match="SHA-256"):
        gguf_path(fake_model(sha256="0" * 64), tmp_path)
    with pytest.raises(ModelUnavailable, match="size"):
        gguf_path(fake_model(size=3), tmp_path)
    assert not list((tmp_path / "models").glob("fake.gguf*"))  # nothing half-made is left to be served


def test_a_one_file_model_is_served_where_pip_put_it(packages, tmp_path):
    single = fake_model(
        chunks=(("fake_chunk_2", "data/part02.bin"),), sha256=hashlib.sha256(PIECES[1]).hexdigest(), size=777
    )
    assert gguf_path(single, tmp_path) == packages / "fake_chunk_2" / "data" / "part02.bin"
    assert (tmp_path / "models" / "fake.gguf.sha256").is_file()
    with pytest.raises(ModelUnavailable, match="not the expected one"):
        gguf_path(dataclasses.replace(single, sha256="1" * 64), tmp_path / "other")


def test_a_model_not_installed_names_the_extra_that_installs_it(tmp_path):
    missing = fake_model(chunks=(("no_such_chunk_package", "data/x.bin"),))
    with pytest.raises(ModelUnavailable, match=r"pip install 'chatgate\[local-fake\]'"):
        chunk_paths(missing)


def test_the_catalogue_and_the_setting_name_the_same_models():
    assert set(typing.get_args(PackagedModelName)) == set(PACKAGED)
    assert LocalModelSettings().model == models.DEFAULT
    assert PACKAGED[models.DEFAULT].extra is None  # the default is installed with chatgate
    for m in PACKAGED.values():
        assert len(m.sha256) == 64 and m.size > 0 and m.chunks


def test_the_default_model_is_installed_and_whole():
    paths = chunk_paths(PACKAGED[models.DEFAULT])
    assert sum(p.stat().st_size for p in paths) == PACKAGED[models.DEFAULT].size
