"""A write that runs out of space (ENOSPC) or quota (EDQUOT) is one clear error naming the file, the space left and
the size needed, leaves nothing partial, and a stage that failed that way resumes once space is freed."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.cli import main
from pipeline.io import faults  # free_bytes is looked up there (also by the atomic writers)
from pipeline.io.atomic import DiskFullError, atomic_path, write_bytes, write_text
from pipeline.training.checkpoint import save_checkpoint
from tests.utils import blob_dataset, mounted_tmpfs, tiny_workflow


def no_space(code: int = errno.ENOSPC) -> OSError:
    return OSError(code, os.strerror(code))


def test_enospc_names_target_free_space_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out" / "big.bin"
    write_text(target, "old")
    real = Path.write_bytes

    def half_then_full(self: Path, data: bytes) -> int:  # what a filling disk does: part written, then ENOSPC
        real(self, data[: len(data) // 2])
        raise no_space()

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(DiskFullError) as info:
        write_bytes(target, b"x" * 3000)
    msg = str(info.value)
    assert str(target) in msg and "free on its filesystem" in msg and "needs 2.9 KiB" in msg, msg
    assert "run the same command again" in msg
    assert info.value.needed == 3000 and info.value.free is not None and info.value.free > 0
    assert isinstance(info.value.__cause__, OSError)
    monkeypatch.undo()
    assert sorted(p.name for p in target.parent.iterdir()) == ["big.bin"] and target.read_text() == "old"


def test_edquot_of_any_writer_says_what_was_written(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    full = pytest.raises(DiskFullError, match=r"quota exceeded\) while writing .*ckpt\.pt.*more than the 5 B")
    with full, atomic_path(target) as tmp:
        tmp.write_bytes(b"12345")
        raise no_space(errno.EDQUOT)
    assert list(tmp_path.iterdir()) == []


def test_torch_style_error_counts_as_full_only_when_the_disk_is(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save reports a full disk as a RuntimeError without an errno ("unexpected pos ...")."""
    monkeypatch.setattr(faults, "free_bytes", lambda folder: 0)
    with pytest.raises(DiskFullError, match="0 B free"), atomic_path(tmp_path / "a.pt"):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(faults, "free_bytes", lambda folder: 10 << 30)
    with pytest.raises(RuntimeError, match="unexpected pos"), atomic_path(tmp_path / "a.pt"):
        raise RuntimeError("unexpected pos 576 vs 534")
    with pytest.raises(PermissionError), atomic_path(tmp_path / "a.pt"):  # other OS errors stay what they are
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(faults, "free_bytes", lambda folder: 0)
    with pytest.raises(ValueError), atomic_path(tmp_path / "a.pt"):  # a bug stays a bug, full disk or not
        raise ValueError("bad value")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (needs root or CAP_SYS_ADMIN; skipped where mounting is not permitted)."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    with mounted_tmpfs(mnt, "size=1m"):
        yield mnt


def test_a_real_full_filesystem(small_tmpfs: Path) -> None:
    with pytest.raises(DiskFullError, match="needs 2.0 MiB"):
        write_bytes(small_tmpfs / "big.bin", b"\0" * (2 << 20))
    with pytest.raises(DiskFullError, match=r"last\.pt"):  # torch.save's own error, recognised by the space left
        save_checkpoint(small_tmpfs / "last.pt", {"w": torch.zeros(1 << 19)})
    assert list(small_tmpfs.iterdir()) == []
    write_text(small_tmpfs / "small.txt", "fits")  # the space was given back
    assert (small_tmpfs / "small.txt").read_text() == "fits"


def test_stage_that_fills_the_disk_fails_cleanly_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    manifest = blob_dataset(tmp_path / "data", n_train=2, n_val=1, n_test=1)
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{"train.epochs": 2, "evaluate.overlays": False})
    run_dir = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def fills_up(obj: Any, f: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] < 3:  # epoch 1's checkpoints fit
            return real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"partial")
        raise no_space()

    monkeypatch.setattr(torch, "save", fills_up)
    assert main(["run", str(wf), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "error: no space left on the device" in err and str(run_dir / "train") in err, err
    assert not [p for p in run_dir.rglob("*") if ".part" in p.name], "partial temporary left"
    assert (run_dir / "train" / "_started.json").is_file() and not (run_dir / "train" / "_stage.json").exists()

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    caplog.set_level("INFO", logger="pipeline")
    assert main(["run", str(wf), "--run-dir", str(run_dir)]) == 0
    assert "reused: prepare, preprocess" in capsys.readouterr().out
    assert "[train] resuming" in caplog.text
    assert (run_dir / "summary.json").is_file() and (run_dir / "evaluate" / "_stage.json").is_file()
    assert torch.load(run_dir / "train" / "last.pt", weights_only=True)["epoch"] == 1
