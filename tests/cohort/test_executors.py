"""`pipeline infer`'s executors are a registry: each module registers itself, `infer_cohort` runs the one named."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.cohort import InferOptions, infer_cohort
from pipeline.cohort.executors import EXECUTORS
from pipeline.cohort.executors.local import local_executor
from pipeline.cohort.executors.ray import run_ray
from pipeline.cohort.report import Row
from pipeline.config.schema import InferConfig
from pipeline.errors import PipelineError


def test_every_module_registers_its_executor() -> None:
    import pkgutil

    import pipeline.cohort.executors as package

    modules = {f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)}
    owners = {EXECUTORS.get(n).__module__ for n in EXECUTORS.names()}
    assert modules <= owners, f"modules that register no executor: {sorted(modules - owners)}"
    assert EXECUTORS.get("local") is local_executor and EXECUTORS.get("ray") is run_ray


def test_infer_cohort_runs_the_named_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(bundle, options, jobs, on_row, address=None, workers=None, on_started=None) -> None:  # type: ignore[no-untyped-def]
        calls.append((address, workers, [j.case for j in jobs]))
        on_started("fp32", 1.5)
        for job in reversed(jobs):
            on_row(Row(job.case, str(job.input), "written", output=str(job.output), index=job.index))

    monkeypatch.setitem(EXECUTORS._items, "fake", fake)
    scans = [tmp_path / "in" / f"{name}.nii.gz" for name in ("b", "a")]
    for scan in scans:
        scan.parent.mkdir(exist_ok=True)
        scan.write_bytes(b"")
    bundle = SimpleNamespace(name="m", path=tmp_path, digest="0" * 64, infer=InferConfig(roi_size=[8, 8, 8]))
    out = tmp_path / "out"
    rows = infer_cohort(bundle, scans, InferOptions(output=out, nan_policy="refuse"), executor="fake", ray_address="here",  # type: ignore[arg-type]
                        ray_workers=3, progress=False)
    assert calls == [("here", 3, ["b", "a"])]
    assert [r.case for r in rows] == ["b", "a"]  # input order
    report = json.loads((out / "report.json").read_text())
    assert report["executor"] == "fake" and [c["case"] for c in report["cases"]] == ["b", "a"]
    assert report["precision"] == "fp32" and report["compile_warm_up_seconds"] == 1.5
    assert {"cpu", "cpu_flags", "hardware_bf16", "torch_threads"} <= set(report["hardware"])


def test_unknown_executor_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="unknown executor 'rya'; known: local, ray. Did you mean 'ray'"):
        infer_cohort(SimpleNamespace(), [tmp_path / "a.nii.gz"], InferOptions(output=tmp_path / "out"),  # type: ignore[arg-type]
                     executor="rya", progress=False)
    assert not (tmp_path / "out").exists()
