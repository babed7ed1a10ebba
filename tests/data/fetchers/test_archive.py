"""Tests for pipeline.data.fetchers.archive: safe tar extraction (no network)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from pipeline.data.fetchers.archive import safe_extract
from pipeline.data.fetchers.msd_prostate import fetch_msd_prostate
from pipeline.errors import DataError
from tests.data.fetchers.helpers import add_bytes, add_link, all_files, make_tar, md5_of


def _evil_tar(tmp_path: Path, build) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        add_bytes(tar, "Task05_Prostate/dataset.json", b"{}")  # a benign member first
        build(tar)
    return path


EVIL = {
    "dotdot": lambda tar, out: add_bytes(tar, "../evil.txt", b"pwned"),
    "dotdot_nested": lambda tar, out: add_bytes(tar, "Task05_Prostate/../../evil.txt", b"pwned"),
    "absolute": lambda tar, out: add_bytes(tar, str(out / "evil_abs.txt"), b"pwned"),
    "symlink_outside": lambda tar, out: add_link(tar, "Task05_Prostate/link", "../../outside"),
    "symlink_absolute": lambda tar, out: add_link(tar, "Task05_Prostate/link", str(out)),
    "symlink_then_write": lambda tar, out: (
        add_link(tar, "Task05_Prostate/up", ".."),
        add_link(tar, "Task05_Prostate/up2", "up/.."),
        add_bytes(tar, "Task05_Prostate/up2/evil.txt", b"pwned"),
    ),
    "hardlink_outside": lambda tar, out: add_link(tar, "Task05_Prostate/hl", "../outside/x", tarfile.LNKTYPE),
    "fifo": lambda tar, out: tar.addfile(_typed("Task05_Prostate/fifo", tarfile.FIFOTYPE)),
    "chardev": lambda tar, out: tar.addfile(_typed("Task05_Prostate/dev", tarfile.CHRTYPE)),
}


def _typed(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


@pytest.mark.parametrize("case", sorted(EVIL))
def test_safe_extract_refuses_unsafe_members(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "work" / "dest"
    tar_path = _evil_tar(tmp_path, lambda tar: EVIL[case](tar, outside))
    before = all_files(tmp_path)
    with pytest.raises(DataError) as exc:
        safe_extract(tar_path, dest)
    assert str(tar_path) in str(exc.value)
    assert all_files(tmp_path) == before  # nothing extracted, nothing written anywhere (dest not even created)


def test_fetch_refuses_unsafe_archive(tmp_path: Path) -> None:
    tar_path = _evil_tar(tmp_path, lambda tar: add_bytes(tar, "../evil.txt", b"pwned"))
    root = tmp_path / "root"
    with pytest.raises(DataError):
        fetch_msd_prostate(root, url=tar_path.as_uri(), md5=md5_of(tar_path), progress=False)
    assert not (tmp_path / "evil.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == ["Task05_Prostate.tar"]


def test_safe_extract_allows_internal_links_and_dot_prefix(tmp_path: Path) -> None:
    tar_path = tmp_path / "ok.tar"
    with tarfile.open(tar_path, "w") as tar:
        add_bytes(tar, "./Task05_Prostate/a.txt", b"a")
        add_link(tar, "./Task05_Prostate/sub/link", "../a.txt")
        add_link(tar, "Task05_Prostate/hard", "Task05_Prostate/a.txt", tarfile.LNKTYPE)
    dest = tmp_path / "dest"
    safe_extract(tar_path, dest)
    assert (dest / "Task05_Prostate" / "sub" / "link").read_bytes() == b"a"
    assert (dest / "Task05_Prostate" / "hard").read_bytes() == b"a"
    assert sorted(p.name for p in dest.iterdir()) == ["Task05_Prostate"]


def test_safe_extract_replaces_existing_folder(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "Task05_Prostate").mkdir(parents=True)
    (dest / "Task05_Prostate" / "stale.txt").write_text("old")
    tar_path = tmp_path / "ok.tar"
    with tarfile.open(tar_path, "w") as tar:
        add_bytes(tar, "Task05_Prostate/new.txt", b"new")
    safe_extract(tar_path, dest)
    assert sorted(p.name for p in (dest / "Task05_Prostate").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in dest.iterdir()) == ["Task05_Prostate"]


def test_safe_extract_interrupted_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tar_path = make_tar(tmp_path, n_cases=3)
    dest = tmp_path / "dest"
    real = tarfile.TarFile.extractall

    def interrupted(self, path, *args, **kwargs):
        real(self, path, *args, **kwargs)  # everything written to the temporary folder...
        raise KeyboardInterrupt  # ...then the user presses Ctrl-C before it is moved into place

    monkeypatch.setattr(tarfile.TarFile, "extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        safe_extract(tar_path, dest)
    assert list(dest.iterdir()) == []


def test_safe_extract_corrupt_archive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(DataError, match="bad.tar"):
        safe_extract(bad, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
