"""An interrupted write leaves the old file (or none), never a partial one."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from pipeline.io.atomic import atomic_path, write_text


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_replaces_existing_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new but unfinished")
        raise RuntimeError
    assert target.read_text() == "old"
    write_text(target, "new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_temporaries_and_targets_follow_the_umask(tmp_path: Path) -> None:
    from pipeline.io.atomic import create_temporary, make_temporary_folder

    before = os.umask(0o002)
    try:
        write_text(tmp_path / "a" / "b.txt", "x")
        tmp, folder = create_temporary(tmp_path, ".t.", ".part"), make_temporary_folder(tmp_path, ".d.", ".part")
    finally:
        os.umask(before)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "a", tmp_path / "a" / "b.txt", tmp, folder)}
    assert modes == {"a": 0o775, "b.txt": 0o664, tmp.name: 0o664, folder.name: 0o775}


def test_only_environment_errors_become_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """EACCES, EROFS, ENOSPC, ... with a file name are the environment; any other OSError is a bug: traceback kept."""
    from pipeline import cli
    from pipeline.io.atomic import CannotWriteError, os_error_message, write_fault

    target = tmp_path / "x.json"
    assert write_fault(OSError(errno.EIO, "I/O error", str(target)), target) is None
    fault = write_fault(OSError(errno.EROFS, "Read-only file system", str(target)), target, "--output folder")
    assert isinstance(fault, CannotWriteError) and fault.persistent and str(target) in str(fault)
    assert "read-only filesystem" in str(fault) and "choose another --output folder" in str(fault)
    assert os_error_message(OSError(errno.EACCES, "Permission denied")) is None  # no file: cannot say where
    assert os_error_message(OSError(errno.EACCES, "Permission denied", "/data/x")) == (
        "/data/x: permission denied; check that you may read and write there (ls -ld), or choose another path")

    def raises(code: int) -> object:
        def command(args: object) -> int:
            raise OSError(code, os.strerror(code), str(target))
        return command

    monkeypatch.setattr(cli, "_cmd_validate", raises(errno.EACCES))
    assert cli.main(["validate", "wf.yaml"]) == 2
    assert capsys.readouterr().err == f"error: {target}: permission denied; check that you may read and write " \
        "there (ls -ld), or choose another path\n"
    monkeypatch.setattr(cli, "_cmd_validate", raises(errno.ENOENT))  # a bug (a missing file the code assumed)
    with pytest.raises(FileNotFoundError):
        cli.main(["validate", "wf.yaml"])


def test_errno_less_error_under_an_exhausted_quota_is_a_full_disk(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save's RuntimeError while the filesystem has room but the user's quota is spent: a probe write tells."""
    from pipeline.io import faults  # free_bytes is looked up there (also by the atomic writers)
    from pipeline.io.atomic import DiskFullError, atomic_path

    monkeypatch.setattr(faults, "free_bytes", lambda folder: 10 << 30)
    with pytest.raises(RuntimeError, match="unexpected pos"), atomic_path(tmp_path / "a.pt"):  # quota fine: a bug
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    def quota_spent(fd: int) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(os, "fsync", quota_spent)
    with pytest.raises(DiskFullError, match=r"a\.pt"), atomic_path(tmp_path / "a.pt"):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert list(tmp_path.iterdir()) == []  # the temporary and the probe are gone
