"""The postprocess stage on a hand-made run folder: what it reads (prepare's test images, infer's labels and
probabilities), what it writes (on the scan's grid, under ``postprocess/`` only) and its record.

No network runs: the inference outputs are written by the test, so every expected label map is known. The CRF
cases use weak, noisy probabilities (the argmax is speckled), where the CRF and its settings change the labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from pipeline.config.loader import load_workflow
from pipeline.config.schema import CRFConfig, PostprocessConfig, Workflow
from pipeline.data.checks import CheckedCase
from pipeline.data.stage import PrepareRecord
from pipeline.engine.stage import STAGES, StageContext
from pipeline.inference.stage import InferRecord
from pipeline.io.scan.write import write_like, write_probabilities_like
from pipeline.postprocess.apply_crf import load_crf_inputs, run_crf
from pipeline.postprocess.stage import PostprocessRecord
from tests.utils import AFFINES, blob_dataset, tiny_workflow, write_nifti

SHAPE = (14, 12, 8)
CRF = {"backend": "torch", "device": "cpu", "iterations": 3}


def two_blobs_per_class() -> np.ndarray:
    """Class 1: a 4x4x4 block and a single voxel; class 2: a 3x3x3 block and a 2-voxel bar."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[1:5, 1:5, 1:5] = 1
    labels[10, 10, 6] = 1
    labels[8:11, 1:4, 1:4] = 2
    labels[1:3, 9, 6] = 2
    return labels


def truth() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:12, 2:10, 2:6] = 1
    labels[5:9, 4:8, 3:5] = 2
    return labels


def weak_probabilities(seed: int) -> np.ndarray:
    """``(3, *SHAPE)``: the truth by a small margin under strong noise (the argmax is speckled)."""
    rng = np.random.default_rng(seed)
    logits = 0.8 * np.eye(3, dtype=np.float32)[truth()].transpose(3, 0, 1, 2) + rng.normal(0, 0.6, (3, *SHAPE))
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


class Run:
    """A run folder with the records of prepare (one test and one validation case) and infer."""

    def __init__(self, tmp: Path, postprocess: dict[str, Any]) -> None:
        self.dir = tmp / "run"
        manifest = blob_dataset(tmp / "data", n_train=1, n_val=0, n_test=0)
        wf = load_workflow(tiny_workflow(tmp / "wf.yaml", manifest)).workflow
        self.workflow: Workflow = wf.model_copy(update={"postprocess": PostprocessConfig.model_validate(postprocess)})
        rng = np.random.default_rng(0)
        cases = {}
        for split, cid, aff in (("test", "t0", AFFINES["oblique"]), ("validation", "v0", AFFINES["lps"])):
            image = write_nifti(tmp / "data" / f"{cid}.nii.gz",
                                (truth() * 50 + rng.normal(0, 20, SHAPE)).astype(np.float32), aff)
            label = write_nifti(tmp / "data" / f"{cid}_label.nii.gz", truth(), aff)
            cases[split] = (CheckedCase(id=cid, split=split, image=str(image), label=str(label), shape=list(SHAPE),
                                        spacing=[1.0, 1.0, 1.0], channels=1),)
        self.image = Path(cases["test"][0].image)
        self.prepare = PrepareRecord(manifest=str(manifest), cases=cases,
                                     labels={0: "background", 1: "outer", 2: "inner"}, channels=("T2",),
                                     spatial_dims=3, domain="", data_files={})
        self.network_labels = two_blobs_per_class()
        write_like(self.image, self.network_labels, self.dir / "infer" / "t0.nii.gz")
        self.probs = weak_probabilities(1)
        write_probabilities_like(self.image, self.probs, self.dir / "infer" / "t0_probs.nii.gz")
        write_probabilities_like(cases["validation"][0].image, weak_probabilities(2),
                                 self.dir / "infer" / "validation" / "v0_probs.nii.gz")
        self.infer = InferRecord(files=("infer/t0.nii.gz",), predictions={"t0": "infer/t0.nii.gz"},
                                 probabilities={"t0": "infer/t0_probs.nii.gz"},
                                 validation_probabilities={"v0": "infer/validation/v0_probs.nii.gz"})

    def run(self) -> tuple[PostprocessRecord, StageContext]:
        stage = STAGES.get("postprocess")()
        ctx = StageContext(workflow=self.workflow, run_dir=self.dir, stage_dir=self.dir / "postprocess",
                           upstream={"prepare": self.prepare, "infer": self.infer})
        ctx.stage_dir.mkdir(parents=True, exist_ok=True)
        before = {p for p in self.dir.rglob("*") if p.is_file() and "postprocess" not in p.parts}
        record = stage.run(ctx)
        assert isinstance(record, PostprocessRecord)
        after = {p for p in self.dir.rglob("*") if p.is_file() and "postprocess" not in p.parts}
        assert after == before, "the stage wrote outside its folder"
        written = {p.relative_to(self.dir).as_posix() for p in ctx.stage_dir.rglob("*") if p.is_file()}
        assert written == set(record.files), "every file written is in the record, and only those"
        return record, ctx

    def read(self, rel: str) -> np.ndarray:
        img = nib.load(self.dir / rel)
        ref = nib.load(self.image)
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine, atol=1e-6), "not on the scan's grid"
        data = np.asarray(img.dataobj)
        assert data.dtype == np.uint8
        return data


def test_nothing_configured_passes_the_network_labels_through(tmp_path: Path) -> None:
    run = Run(tmp_path, {})
    record, ctx = run.run()
    assert record.predictions == {"t0": "infer/t0.nii.gz"} and record.files == ()
    assert record.no_crf_predictions is None and record.crf is None and record.crf_tuning is None
    assert STAGES.get("postprocess")().report(ctx, record).params == {}


def test_keep_largest_component_of_every_class(tmp_path: Path) -> None:
    run = Run(tmp_path, {"keep_largest_component": True})
    record, _ = run.run()
    assert record.predictions == {"t0": "postprocess/t0.nii.gz"} and record.files == ("postprocess/t0.nii.gz",)
    assert record.no_crf_predictions is None and record.crf is None
    expected = run.network_labels.copy()
    expected[10, 10, 6] = 0
    expected[1:3, 9, 6] = 0
    out = run.read(record.predictions["t0"])
    assert np.array_equal(out, expected)
    assert (out == 1).sum() == 64 and (out == 2).sum() == 27


def test_keep_largest_component_of_listed_classes_only(tmp_path: Path) -> None:
    run = Run(tmp_path, {"keep_largest_component": [2]})
    record, _ = run.run()
    expected = run.network_labels.copy()
    expected[1:3, 9, 6] = 0  # class 2's bar goes, class 1's single voxel stays
    assert np.array_equal(run.read(record.predictions["t0"]), expected)


def test_crf_on_writes_the_crf_labels_and_the_same_clean_up_without_it(tmp_path: Path) -> None:
    run = Run(tmp_path, {"crf": {**CRF, "smooth_weight": 3.0, "bilateral_weight": 5.0},
                         "keep_largest_component": True})
    record, ctx = run.run()
    assert record.predictions == {"t0": "postprocess/t0.nii.gz"}
    assert record.no_crf_predictions == {"t0": "postprocess/no_crf/t0.nii.gz"}
    assert record.crf == CRFConfig(**CRF).model_dump(mode="json", exclude={"tune"}) and record.crf_tuning is None
    probs, image, spacing, _ = load_crf_inputs(run.dir / "infer" / "t0_probs.nii.gz", run.image, 3)
    post = run.workflow.postprocess
    from pipeline.postprocess.largest_component import keep_largest_component
    with_crf = keep_largest_component(run_crf(probs, image, spacing, post.crf), [1, 2])
    without = keep_largest_component(probs.argmax(0).astype(np.uint8), [1, 2])
    assert np.array_equal(run.read(record.predictions["t0"]), with_crf)
    assert np.array_equal(run.read(record.no_crf_predictions["t0"]), without)
    assert (with_crf != without).mean() > 0.05, "the probe is too confident for the CRF to matter"
    report = STAGES.get("postprocess")().report(ctx, record)
    assert report.params["crf_used.smooth_weight"] == 3.0 and report.params["crf_used.iterations"] == 3
    assert report.artifacts == ()


def test_crf_weights_reach_the_labels(tmp_path: Path) -> None:
    """A pairwise weight ten times stronger gives other labels: the stage uses the configured weights."""
    outs = []
    for weight in (1.0, 10.0):
        run = Run(tmp_path / str(weight), {"crf": {**CRF, "smooth_weight": weight, "bilateral_weight": weight}})
        record, _ = run.run()
        outs.append(run.read(record.predictions["t0"]))
    assert (outs[0] != outs[1]).mean() > 0.02


def test_crf_tuning_picks_the_best_grid_point_and_uses_it(tmp_path: Path) -> None:
    grid = {"smooth_weight": [0.0, 6.0], "bilateral_weight": [0.0], "bilateral_sigma_mm": [5.0],
            "bilateral_sigma_intensity": [0.5]}
    run = Run(tmp_path, {"crf": {**CRF, "tune": grid}})
    record, ctx = run.run()
    assert record.crf_tuning == "postprocess/crf_tuning.json" and "postprocess/crf_tuning.json" in record.files
    tuning = json.loads((run.dir / record.crf_tuning).read_text())
    assert [g["smooth_weight"] for g in tuning["grid"]] == [0.0, 6.0]

    # the validation Dice of each grid point, computed here
    vcase = run.prepare.split("validation")[0]
    probs, image, spacing, _ = load_crf_inputs(run.dir / "infer/validation/v0_probs.nii.gz", Path(vcase.image), 3)
    ref = truth()

    def dice(labels: np.ndarray) -> float:
        return float(np.mean([2 * ((labels == c) & (ref == c)).sum() / ((labels == c).sum() + (ref == c).sum())
                              for c in (1, 2)]))

    cfg = CRFConfig(**CRF)
    scores = {w: dice(run_crf(probs, image, spacing, cfg, **{**{k: v[0] for k, v in grid.items()},
                                                               "smooth_weight": w})) for w in (0.0, 6.0)}
    assert scores[0.0] != pytest.approx(scores[6.0], abs=1e-3), "the grid points must differ on this probe"
    best = max(scores, key=scores.__getitem__)
    assert [g["dice"] for g in tuning["grid"]] == pytest.approx([scores[0.0], scores[6.0]], abs=1e-6)
    assert tuning["best"]["smooth_weight"] == best and record.crf["smooth_weight"] == best
    assert tuning["no_crf_dice"] == pytest.approx(dice(probs.argmax(0)), abs=1e-6)
    # the test case is postprocessed with the chosen values
    tprobs, timage, tspacing, _ = load_crf_inputs(run.dir / "infer/t0_probs.nii.gz", run.image, 3)
    chosen = run_crf(tprobs, timage, tspacing, cfg, **tuning["best"])
    assert np.array_equal(run.read(record.predictions["t0"]), chosen)
    report = STAGES.get("postprocess")().report(ctx, record)
    assert report.params["crf_used.smooth_weight"] == best
    assert report.artifacts == ((run.dir / "postprocess/crf_tuning.json", "postprocess"),)


def test_the_key_is_the_postprocess_section(tmp_path: Path) -> None:
    """Changing a postprocess setting (and only that) re-runs the stage."""
    run = Run(tmp_path, {"keep_largest_component": [1]})
    stage = STAGES.get("postprocess")()
    assert stage.config(run.workflow) == {"keep_largest_component": [1], "crf": None}
    assert stage.requires == ("prepare", "infer")
