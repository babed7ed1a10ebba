"""Predictions come back on each scan's own grid: shape, affine, qform/sform, and voxel-for-voxel position."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config.schema import InferConfig, PreprocessConfig, Workflow
from pipeline.inference.stage import predict_to_original
from pipeline.io.scan import write_like
from pipeline.runtime.device import select_device
from tests.utils import AFFINES, make_affine, rotation, write_nifti


class Pointwise(nn.Module):
    """Class 1 wherever the intensity is above 51 (half-way between 1 and 101): a network whose answer we know
    everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([51 - x, x - 51], dim=1)


def _workflow(tmp_path: Path, spacing: list[float] | None, crop: bool) -> Workflow:
    manifest = tmp_path / "m.json"
    manifest.write_text("{}")
    return Workflow(
        name="geom",
        data={"manifest": manifest},
        preprocess=PreprocessConfig(orientation="RAS", spacing=spacing, crop_foreground=crop, intensity={"mode": "none"},
                                    patch={"size": [16, 16, 8]}),
        model={"name": "vnet"},
        train={"epochs": 1},
        infer=InferConfig(roi_size=[16, 16, 8], overlap=0.25),
    )


def off_centre_blob(shape: tuple[int, int, int]) -> np.ndarray:
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = ((x - 0.4) / 0.4) ** 2 + ((y + 0.35) / 0.4) ** 2 + ((z - 0.3) / 0.55) ** 2
    return (r < 1).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum((a > 0) & (b > 0)) / ((a > 0).sum() + (b > 0).sum()))


CASES = {
    "oblique": (AFFINES["oblique"], None),
    "lps": (AFFINES["lps"], None),
    "anisotropic_qform_differs": (
        AFFINES["anisotropic"],
        make_affine((0.6, 0.6, 3.6), rotation((0, 0, 1), 12.0), origin=(3.0, 2.0, 1.0)),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(("spacing", "crop"), [(None, False), (None, True), ([1.3, 1.1, 2.2], False), ([1.3, 1.1, 2.2], True)])
def test_prediction_keeps_scan_geometry(tmp_path: Path, name: str, spacing: list[float] | None, crop: bool) -> None:
    affine, qform = CASES[name]
    label = off_centre_blob((40, 36, 18))
    image = label * 100.0 + 1.0  # noise-free and positive
    src = write_nifti(tmp_path / f"{name}.nii.gz", image, affine, qform=qform)
    wf = _workflow(tmp_path, spacing, crop)
    labels = predict_to_original(Pointwise(), str(src), wf, select_device("cpu"))
    out = tmp_path / "pred.nii.gz"
    write_like(src, labels, out)

    ref, pred = nib.load(src), nib.load(out)
    assert pred.shape == ref.shape
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-6)
    np.testing.assert_allclose(pred.get_qform(), ref.get_qform(), atol=1e-5)
    np.testing.assert_allclose(pred.get_sform(), ref.get_sform(), atol=1e-6)
    assert int(pred.header["qform_code"]) == int(ref.header["qform_code"])
    assert int(pred.header["sform_code"]) == int(ref.header["sform_code"])
    assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(ref.affine)

    # The prediction must sit on the right voxels: compare with the same rule applied to the original scan.
    got = np.asarray(pred.dataobj)
    assert dice(got, label) > (0.99 if spacing is None else 0.9), dice(got, label)
    for axis in range(3):  # the check can tell: a mirrored prediction would score far lower
        assert dice(np.flip(got, axis), label) < 0.5


def test_write_like_refuses_wrong_shape(tmp_path: Path) -> None:
    from pipeline.errors import PipelineError

    src = write_nifti(tmp_path / "a.nii.gz", np.zeros((4, 5, 6), np.float32), AFFINES["lps"])
    with pytest.raises(PipelineError, match="expected"):
        write_like(src, np.zeros((4, 5, 7), np.uint8), tmp_path / "b.nii.gz")
    assert not (tmp_path / "b.nii.gz").exists()


@pytest.mark.parametrize("spacing", [None, [0.7, 0.45]])
def test_2d_prediction_keeps_image_geometry(tmp_path: Path, spacing: list[float] | None) -> None:
    label = off_centre_blob((48, 40, 3))[..., 1]
    image = label * 100.0 + 1.0
    affine = make_affine((0.5, 0.3, 1.0), np.diag([-1.0, 1.0, 1.0]) @ rotation((0, 0, 1), 25.0), origin=(4, 5, 0))
    src = write_nifti(tmp_path / "img.nii.gz", image.astype(np.float32), affine)
    wf = _workflow(tmp_path, spacing, False).model_copy(
        update={"infer": InferConfig(roi_size=[16, 16], overlap=0.25)})
    labels = predict_to_original(Pointwise(), str(src), wf, select_device("cpu"), spatial_dims=2)
    write_like(src, labels, tmp_path / "pred.nii.gz")
    pred = nib.load(tmp_path / "pred.nii.gz")
    assert pred.shape == image.shape
    np.testing.assert_allclose(pred.affine, affine, atol=1e-6)
    got = np.asarray(pred.dataobj)
    assert dice(got, label) > (0.99 if spacing is None else 0.9)
    assert dice(np.flip(got, 0), label) < 0.5 and dice(np.flip(got, 1), label) < 0.5
