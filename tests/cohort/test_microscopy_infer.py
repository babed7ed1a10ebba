"""`pipeline infer` on microscopy images: a 16-bit TIFF, an OME-TIFF and an 8-bit PNG with pixel sizes through a
2D bundle; each label map has its input's name, format, shape and pixel size, on the same pixels."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.bundle import write_bundle
from pipeline.cli import main
from pipeline.config.schema import InferConfig, PostprocessConfig, PreprocessConfig
from pipeline.io.scan.png import png_header
from pipeline.models import MODELS
from tests.utils import Threshold


@pytest.fixture(autouse=True)
def _threshold_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS._items, "test_micro_threshold", Threshold)


def bundle_2d(folder: Path) -> Path:
    """A 2D threshold model (class 1 above 51), orientation only: no resampling, so labels are exact."""
    return write_bundle(
        folder, name="micro", model={"name": "test_micro_threshold", "kwargs": {}, "in_channels": 1,
                                     "out_channels": 2},
        state_dict=Threshold(1, 2).state_dict(), labels={0: "background", 1: "nucleus"}, channels=["dapi"],
        spatial_dims=2, preprocess=PreprocessConfig(orientation="RAS", intensity={"mode": "none"},
                                                    patch={"size": [16, 16]}),
        infer=InferConfig(roi_size=[16, 16], overlap=0.25), postprocess=PostprocessConfig(),
        source={"workflow": "test"},
    )


def nuclei(shape=(37, 45), high: int = 40000) -> np.ndarray:
    """Row-major (Y, X): an off-centre bright disc (``high``) on 10, so a flip or transpose would show."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    return np.where((y - 9) ** 2 + (x - 30) ** 2 < 49, high, 10)


def test_infer_tiff_ome_tiff_and_png_keep_name_format_shape_and_pixel_size(tmp_path: Path) -> None:
    bundle = bundle_2d(tmp_path / "model")
    inp = tmp_path / "in"
    inp.mkdir()
    tif16 = nuclei().astype(np.uint16)
    tifffile.imwrite(str(inp / "cells.tif"), tif16, photometric="minisblack", metadata=None,
                     resolution=((40000, 1), (40000, 1)), resolutionunit="CENTIMETER")  # 0.25 µm
    tifffile.imwrite(str(inp / "stain.ome.tif"), tif16, ome=True, photometric="minisblack",
                     metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    png8 = nuclei(high=200).astype(np.uint8)
    Image.fromarray(png8).save(str(inp / "dsb.png"), dpi=(2_000_000 * 0.0254, 2_000_000 * 0.0254))  # 0.5 µm
    out = tmp_path / "out"
    assert main(["infer", str(bundle), "--input", str(inp), "--output", str(out), "--no-mlflow", "--quiet",
                 "--save-probabilities"]) == 0
    expected = nuclei() > 51
    cases = {r["case"]: r for r in json.loads((out / "report.json").read_text())["cases"]}
    assert {c: r["status"] for c, r in cases.items()} == {"cells": "written", "stain": "written", "dsb": "written"}

    labels = tifffile.imread(str(out / "cells.tif"))
    assert labels.shape == tif16.shape and labels.dtype == np.uint8 and np.array_equal(labels > 0, expected)
    with tifffile.TiffFile(str(out / "cells.tif")) as tif:
        page = tif.pages[0]
        assert page.tags["XResolution"].value == (40000, 1) and int(page.tags["ResolutionUnit"].value) == 3

    labels = tifffile.imread(str(out / "stain.ome.tif"))
    assert labels.shape == tif16.shape and np.array_equal(labels > 0, expected)
    with tifffile.TiffFile(str(out / "stain.ome.tif")) as tif:
        pixels = next(e for e in ET.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels"))
        assert (pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")) == ("0.65", "0.65")

    with Image.open(out / "dsb.png") as im:
        labels = np.asarray(im)
    assert labels.shape == png8.shape and np.array_equal(labels > 0, expected)
    assert png_header(out / "dsb.png").phys == (2_000_000, 2_000_000, 1)

    probs = nib.load(str(out / "cells_probs.nii.gz"))  # probabilities are NIfTI, (x, y, class), on diag(spacing)
    assert probs.shape == (*tif16.T.shape, 2)
    np.testing.assert_allclose(probs.affine, np.diag([2.5e-4, 2.5e-4, 1.0, 1.0]), atol=1e-9)
