"""File modes: what the pipeline writes follows the user's umask like any other tool (``0o666 & ~umask`` for files,
``0o777 & ~umask`` for folders), so colleagues on shared storage can read runs, bundles and reports.

Every test sets the umask itself (``0o022``: others may read; ``0o002``: the group may write too) and puts the old
one back. ``tempfile.mkstemp``/``mkdtemp`` made every output 0600 and every bundle 0700 whatever the umask."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipeline.cli import main
from tests.utils import blob_dataset, tiny_workflow, write_nifti

UMASKS = [0o022, 0o002]


@pytest.fixture(params=UMASKS, ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The test runs under this umask (process-wide: set here, restored after)."""
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def wrong_modes(umask: int, *folders: Path) -> list[str]:
    """Every file and folder under ``folders`` (and the folders) whose mode is not what ``umask`` gives."""
    bad = []
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            want = (0o777 if stat.S_ISDIR(st.st_mode) else 0o666) & ~umask
            if stat.S_IMODE(st.st_mode) != want:
                bad.append(f"{path}: {stat.S_IMODE(st.st_mode):04o}, expected {want:04o}")
    return bad


def test_run_export_infer_outputs_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """umask 022 or 002, then run + export + infer (NIfTI, .mhd, probabilities) → every file 0644/0664, folder 0755/0775."""
    manifest = blob_dataset(tmp_path / "data", n_train=1, n_val=1, n_test=1)
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{"train.epochs": 1})
    mhd = tmp_path / "scans" / "scan.mhd"  # the .mhd writer's temporary folder and its .raw
    mhd.parent.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "data" / "imagesTr" / "case2.nii.gz")), str(mhd))
    runs, bundle, out = tmp_path / "runs", tmp_path / "models" / "tiny", tmp_path / "out"
    assert main(["run", str(wf), "--run-dir", str(runs / "tiny" / "r1")]) == 0
    assert main(["export", str(runs / "tiny" / "r1"), "--out", str(bundle), "--no-mlflow"]) == 0
    assert main(["infer", str(bundle), "--input", str(tmp_path / "data" / "imagesTr" / "case2.nii.gz"), str(mhd),
                 "--output", str(out), "--save-probabilities", "--no-mlflow", "--quiet"]) == 0
    for expected in (runs / "tiny" / "r1" / "train" / "best.pt", runs / "tiny" / "r1" / "summary.json",
                     bundle / "weights.pt", out / "report.csv", out / "scan.raw", out / "case2_probs.nii.gz"):
        assert expected.is_file(), expected
    assert wrong_modes(umask, runs, tmp_path / "models", out) == []


def test_each_writer_follows_the_umask(tmp_path: Path, umask: int) -> None:
    """umask 022 or 002 → checkpoints, MLflow fallback files, reports, label maps (4 formats), new folders follow it."""
    from pipeline.cohort.report import Row, write_report
    from pipeline.io.atomic import make_folder, write_bytes
    from pipeline.io.scan import read_scan, write_labels
    from pipeline.tracking.fallback import write_pending
    from pipeline.training.checkpoint import save_checkpoint

    root = tmp_path / "w"
    save_checkpoint(root / "train" / "last.pt", {"w": torch.zeros(3)})
    write_pending(root, {"format": 1, "runs": []})  # RUN_DIR/mlflow-fallback/pending.json
    write_report(root / "out", [Row("a", "a.nii.gz", "written")], {"model": {}})
    write_bytes(root / "deep" / "er" / "f.bin", b"x")
    make_folder(root / "made" / "here")
    scan = read_scan(write_nifti(tmp_path / "src" / "s.nii.gz", np.zeros((4, 3, 2), np.float32), np.eye(4)))
    for name in ("l.nii.gz", "l.mha", "l.nrrd", "l.mhd"):
        write_labels(scan, np.ones((4, 3, 2), np.uint8), root / "labels" / name)
    assert (root / "mlflow-fallback" / "pending.json").is_file() and (root / "labels" / "l.raw").is_file()
    assert wrong_modes(umask, root) == []


def test_writer_threads_leave_the_umask_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 threads writing at once (as `pipeline infer` does) → the umask is never set, every file gets its mode."""
    from pipeline.io.atomic import write_bytes

    before = os.umask(0o027)
    calls: list[int] = []
    real_umask = os.umask

    def recording_umask(mask: int) -> int:  # set-and-restore would race with the other threads' file creations
        calls.append(mask)
        return real_umask(mask)

    monkeypatch.setattr(os, "umask", recording_umask)
    try:
        def write(i: int) -> None:
            for j in range(25):
                write_bytes(tmp_path / f"t{i}" / f"{j}.bin", b"x" * 100)

        writers = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        assert calls == [], "a writer set the process-wide umask"
        assert len(list(tmp_path.rglob("*.bin"))) == 200
        assert wrong_modes(0o027, *(tmp_path / f"t{i}" for i in range(8))) == []
    finally:
        real_umask(before)
