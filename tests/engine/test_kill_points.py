"""``pipeline run`` killed (SIGKILL) at precise points of train, infer, postprocess and evaluate, then run again
with the same command, ends with exactly the results of an uninterrupted run with the same seed (CPU): every
tensor of ``train/best.pt`` and ``train/last.pt``, the predictions byte for byte, ``summary.json``; no temporary
is left in the run folder and no MLflow run is left ``RUNNING``.

The kills are chained to keep the test short: one run folder is killed at the first point, the rerun at the
second (later) point, and so on, until a last rerun finishes; the uninterrupted reference run goes on in parallel.
The points are hit by :mod:`tests.engine.kill_helper` (a wrapper around the command line that kills itself on the
N-th call of a function), so production code has no test hooks; its ``--serve`` mode imports everything once and
forks a process per killed command (each would pay about 8 s of imports). The reference run and the last rerun
are plain ``python -m pipeline.cli`` processes.

Chain 1 (8 points, about 65 s on 2 idle cores) is the one to keep in every run; chain 2 (7 more points, about as
long again) is marked ``slow``: ``-m "not slow"`` leaves it out.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.engine.kill_helper import temporaries, wait_no_running
from tests.utils import blob_dataset, tiny_workflow

HELPER = Path(__file__).with_name("kill_helper.py")
EPOCHS = 3

# (kill point, N): each rerun resumes where the previous process died and dies at the next point.
CHAIN_1 = [
    ("call:pipeline.training.trainer:compute_loss", 3),  # train: epoch 2 of 3, mid-epoch (2 steps an epoch)
    ("replace:*/train/last.pt", 1),  # train: inside save_checkpoint, epoch 2's last.pt written, not renamed
    ("call:pipeline.training.trainer:write_json", 2),  # train: last epoch's last.pt renamed, history.json not written
    ("call:pipeline.inference.stage:predict_file_all", 2),  # infer: first test case written, second not started
    ("replace:*/infer/case*.nii.gz", 1),  # infer: the second case's prediction written, not renamed
    ("replace:*/postprocess/case*.nii.gz", 2),  # postprocess: the second case's label map written, not renamed
    ("replace:*/evaluate/overview.png", 1),  # evaluate: while writing the overview figure
    ("replace:*/summary.json", 1),  # evaluate: while writing summary.json
]
CHAIN_2 = [
    ("replace:*/train/best.pt", 1),  # train: inside save_checkpoint of epoch 1's best.pt, before the rename
    ("replace:*/train/_stage.json", 1),  # train: every epoch done, the stage's record written, not renamed
    ("replace:*/infer/_stage.json", 1),  # infer: every case done, the record not renamed
    ("call:pipeline.postprocess.stage:write_like", 1),  # postprocess: before its first case is written
    ("replace:*/evaluate/cases.csv", 1),  # evaluate: while writing the per-case table
    ("replace:*/evaluate/overlays/case*.png", 2),  # evaluate: while writing the second overlay figure
    ("replace:*/evaluate/_stage.json", 1),  # evaluate: everything written but its record
]


def command(wf: Path, run_dir: Path) -> list[str]:
    return ["run", str(wf), "--run-dir", str(run_dir)]


def same(a: Any, b: Any, where: str, diffs: list[str]) -> None:
    """Collect every difference between two checkpoint values (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b)):
            diffs.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            diffs.append(f"{where}: keys {sorted(set(a) ^ set(b))}")
        for k in a.keys() & b.keys():
            same(a[k], b[k], f"{where}.{k}", diffs)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            diffs.append(f"{where}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]", diffs)
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        pass
    elif a != b:
        diffs.append(f"{where}: {a!r} != {b!r}")


@dataclass
class Kit:
    """The workflow, the reference run (started in the background) and the kill server, shared by the chains."""

    tmp: Path
    workflow: Path
    uri: str
    reference_proc: subprocess.Popen[str]
    server: subprocess.Popen[str]

    def reference(self) -> Path:
        out, _ = self.reference_proc.communicate(timeout=300)
        assert self.reference_proc.returncode == 0, (out or "")[-3000:]
        return self.tmp / "reference"

    def kill(self, point: str, n: int, run_dir: Path, log: Path) -> tuple[int, str]:
        """Run the command on ``run_dir`` and kill it at ``point`` (its N-th time); its exit code and output."""
        assert self.server.stdin is not None and self.server.stdout is not None
        request = {"point": point, "n": n, "args": command(self.workflow, run_dir), "log": str(log)}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        code = int(json.loads(self.server.stdout.readline())["code"])
        return code, log.read_text()


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    tmp = tmp_path_factory.mktemp("kill")
    manifest = blob_dataset(tmp / "data", n_train=2, n_val=1, n_test=2)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    wf = tiny_workflow(tmp / "wf.yaml", manifest, **{
        "train.epochs": EPOCHS, "evaluate.figures": 2,
        "postprocess": {"keep_largest_component": True},
        "tracking": {"enabled": True, "tracking_uri": uri, "experiment": "kill"},
    })
    reference = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *command(wf, tmp / "reference")],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = subprocess.Popen([sys.executable, str(HELPER), "--serve"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        yield Kit(tmp, wf, uri, reference, server)
    finally:
        server.communicate(timeout=60)  # stdin closed: the server exits
        if reference.poll() is None:
            reference.communicate(timeout=300)


@pytest.mark.parametrize("chain", [CHAIN_1, pytest.param(CHAIN_2, marks=pytest.mark.slow)], ids=["chain1", "chain2"])
def test_killed_at_every_point_then_rerun_matches_uninterrupted(kit: Kit, chain: list[tuple[str, int]],
                                                                request: pytest.FixtureRequest) -> None:
    killed = kit.tmp / request.node.callspec.id
    for i, (point, n) in enumerate(chain):
        left = temporaries(killed) if killed.exists() else []
        code, err = kit.kill(point, n, killed, kit.tmp / f"{killed.name}-kill{i + 1}.log")
        assert code == -9, f"kill point {i + 1} ({point} #{n}) was not reached (exit {code}):\n{err[-3000:]}"
        for stale in left:  # what the previous kill left behind was removed first
            assert f"removed {killed / stale} left by an interrupted run" in err, (stale, err)
        if point.startswith("replace"):
            assert temporaries(killed), f"the kill at {point} left no temporary"
    left = temporaries(killed)
    final = subprocess.run([sys.executable, "-m", "pipeline.cli", *command(kit.workflow, killed)],
                           check=False, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert left and all(f"removed {killed / stale} left" in final.stderr for stale in left), final.stderr
    reference = kit.reference()

    assert temporaries(killed) == [] and temporaries(reference) == []
    diffs: list[str] = []
    for name in ("best.pt", "last.pt"):
        same(torch.load(killed / "train" / name, weights_only=True),
             torch.load(reference / "train" / name, weights_only=True), name, diffs)
    for rel in ("evaluate/cases.csv", "summary.json"):  # summary.json has no timing field: equal byte for byte
        if (killed / rel).read_bytes() != (reference / rel).read_bytes():
            diffs.append(f"{rel} differs")
    predictions = sorted(p.relative_to(reference) for folder in ("infer", "postprocess")
                         for p in (reference / folder).glob("*.nii.gz"))
    assert len(predictions) == 4
    diffs += [f"{p} differs" for p in predictions if (killed / p).read_bytes() != (reference / p).read_bytes()]
    assert diffs == [], "the resumed run differs from the uninterrupted one:\n" + "\n".join(diffs)

    runs = [r for r in wait_no_running(kit.uri) if r.data.tags.get("run_dir") == str(killed.resolve())]
    statuses = sorted(r.info.status for r in runs)
    assert statuses == sorted(["KILLED"] * len(chain) + ["FINISHED"]), statuses

    # Chain 1, point 3 kills between the last epoch's last.pt and history.json: the rerun has no epoch left to
    # train and must still write the complete history.
    assert (killed / "train" / "history.json").read_bytes() == (reference / "train" / "history.json").read_bytes()
