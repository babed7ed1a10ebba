"""`pipeline infer` over cohorts: every format keeps its geometry, bad files are reported, done cases are skipped
(a killed batch and the Ray executor: test_cohort_resume.py)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.bundle import write_bundle
from pipeline.cli import main
from pipeline.config.schema import InferConfig, PostprocessConfig, PreprocessConfig
from pipeline.models import MODELS
from tests.utils import AFFINES, Threshold, itk_image, make_affine, rotation, write_dicom_series, write_nifti


@pytest.fixture(autouse=True)
def _threshold_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered for this module's tests only (other tests list the registered models)."""
    monkeypatch.setitem(MODELS._items, "test_threshold", Threshold)


def threshold_bundle(folder: Path, spacing: list[float] | None = None, spatial_dims: int = 3,
                     overwrite: bool = False) -> Path:
    model = Threshold(1, 2)
    size = [16, 16, 8][:spatial_dims]
    return write_bundle(
        folder, name="threshold", model={"name": "test_threshold", "kwargs": {}, "in_channels": 1, "out_channels": 2},
        state_dict=model.state_dict(), labels={0: "background", 1: "bright"}, channels=["t2"],
        spatial_dims=spatial_dims,
        preprocess=PreprocessConfig(orientation="RAS", spacing=spacing, intensity={"mode": "none"},
                                    patch={"size": size}),
        infer=InferConfig(roi_size=size, overlap=0.25), postprocess=PostprocessConfig(), source={"workflow": "test"},
        overwrite=overwrite,
    )


def blob(shape=(30, 26, 12)) -> np.ndarray:
    """An off-centre ellipsoid (101 inside, 1 outside): a flipped or shifted output would not match it."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = ((x - 0.4) / 0.4) ** 2 + ((y + 0.35) / 0.4) ** 2 + ((z - 0.3) / 0.55) ** 2
    return np.where(r < 1, 101, 1).astype(np.int16)


def write_itk(path: Path, data: np.ndarray, spacing, direction: np.ndarray, origin) -> Path:
    sitk.WriteImage(itk_image(data, direction, origin, spacing), str(path))
    return path


OBLIQUE = rotation((1, 2, 3), 17.0)


def make_cohort(folder: Path) -> dict[str, Path]:
    """One scan of every kind the issue names, each with the same blob."""
    data = blob()
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "oblique": write_nifti(folder / "oblique.nii.gz", data, AFFINES["oblique"]),
        "lps": write_nifti(folder / "lps.nii", data, AFFINES["lps"]),
        "aniso": write_nifti(folder / "aniso.nii.gz", data, AFFINES["anisotropic"],
                             qform=make_affine((0.6, 0.6, 3.6), rotation((0, 0, 1), 12.0), origin=(3.0, 2.0, 1.0))),
        "nrrd": write_itk(folder / "scan.nrrd", data, (0.8, 0.9, 2.5), OBLIQUE, (10.0, -4.0, 7.0)),
        "mha": write_itk(folder / "scan_b.mha", data, (1.1, 0.7, 3.0), np.diag([1.0, -1.0, -1.0]), (-5.0, 2.0, 0.5)),
        "mhd": write_itk(folder / "scan_c.mhd", data, (1.0, 1.0, 2.0), np.eye(3), (0.0, 0.0, 0.0)),
        "dicom": dicom_series(folder / "series1", data, OBLIQUE, (-80.0, -60.0, 20.0), (0.7, 0.7, 3.0)),
    }


def dicom_series(folder: Path, *args) -> Path:
    write_dicom_series(folder, *args)
    return folder


def infer(*args: str) -> int:
    return main(["infer", *args, "--quiet"])


def read_report(folder: Path) -> dict[str, dict]:
    return {Path(r["input"]).name: r for r in json.loads((folder / "report.json").read_text())["cases"]}


@pytest.mark.parametrize("spacing", [None, [1.3, 0.9, 2.0]], ids=["no-resampling", "resampled"])
def test_every_format_keeps_its_geometry(tmp_path, spacing):
    bundle = threshold_bundle(tmp_path / "model", spacing)
    scans = make_cohort(tmp_path / "in")
    out = tmp_path / "out"
    assert infer(str(bundle), "--input", str(tmp_path / "in"), "--output", str(out), "--save-probabilities") == 0
    expected = blob() > 51
    for kind, src in scans.items():
        if kind == "dicom":
            written = out / "series1.nii.gz"
            ref = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(src)))
            img = nib.load(str(written))
            corner = np.array([3, 5, 7, 1.0])
            lps = np.array(ref.TransformIndexToPhysicalPoint([3, 5, 7]))
            np.testing.assert_allclose((img.affine @ corner)[:3], lps * [-1, -1, 1], atol=1e-3)
            labels = np.asarray(img.dataobj)
        elif kind in ("nrrd", "mha", "mhd"):
            written = out / src.name
            a, b = sitk.ReadImage(str(written)), sitk.ReadImage(str(src))
            assert a.GetSize() == b.GetSize()
            np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
            np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
            np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
            labels = sitk.GetArrayFromImage(a).T
        else:
            written = out / src.name
            a, b = nib.load(str(written)), nib.load(str(src))
            assert a.shape == b.shape
            np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
            np.testing.assert_allclose(a.get_qform(), b.get_qform(), atol=1e-5)
            np.testing.assert_allclose(a.get_sform(), b.get_sform(), atol=1e-5)
            assert (int(a.header["qform_code"]), int(a.header["sform_code"])) == (
                int(b.header["qform_code"]), int(b.header["sform_code"]))
            labels = np.asarray(a.dataobj)
        assert labels.shape == expected.shape, kind
        agreement = np.mean((labels > 0) == expected)
        # Without resampling the answer is exact; with it, only voxels on the blob's edge may differ.
        assert agreement == 1.0 if spacing is None else agreement > 0.97, (kind, agreement)
        probs_name = (src.name if kind == "dicom" else src.name.split(".")[0]) + "_probs.nii.gz"
        probs = nib.load(str(out / probs_name))
        assert probs.shape == (*expected.shape, 2)
        np.testing.assert_allclose(np.asarray(probs.dataobj).sum(-1), 1.0, atol=1e-4)
    report = read_report(out)
    assert {r["status"] for r in report.values()} == {"written"} and len(report) == len(scans)
    assert not [p for p in out.iterdir() if ".part" in p.name]


def test_2d_model_on_2d_images(tmp_path):
    bundle = threshold_bundle(tmp_path / "model", spatial_dims=2)
    data = blob((40, 33, 1))[:, :, 0]
    src = write_nifti(tmp_path / "in" / "img.nii.gz", data, make_affine((0.5, 0.4, 1.0), rotation((0, 0, 1), 20.0)))
    assert infer(str(bundle), "--input", str(src), "--output", str(tmp_path / "out"), "--suffix", "_seg") == 0
    out = nib.load(str(tmp_path / "out" / "img_seg.nii.gz"))
    assert out.shape == data.shape
    np.testing.assert_allclose(out.affine, nib.load(str(src)).affine, atol=1e-6)
    assert np.array_equal(np.asarray(out.dataobj) > 0, data > 51)


def test_2d_model_on_scans_one_slice_thick(tmp_path):
    """2D images stored as 3D NIfTI / MetaImage of shape (x, y, 1) are segmented as 2D images and written back
    with their own shape and geometry; a thicker volume is refused with a reason."""
    bundle = threshold_bundle(tmp_path / "model", spatial_dims=2)
    data = blob((40, 33, 1))
    inp = tmp_path / "in"
    nii = write_nifti(inp / "slice.nii.gz", data, AFFINES["lps"])
    mha = write_itk(inp / "plane.mha", data, (0.5, 0.4, 2.0), np.diag([1.0, -1.0, -1.0]), (3.0, -2.0, 1.0))
    write_nifti(inp / "thick.nii.gz", blob((40, 33, 3)), AFFINES["ras"])
    coronal = np.array([[0.5, 0, 0, 4.0], [0, 0, 2.0, -3.0], [0, 0.4, 0, 7.0], [0, 0, 0, 1]])  # y runs up (S)
    tilted = make_affine((0.5, 0.4, 2.0), rotation((1, 0, 0), 40.0), origin=(1.0, 2.0, 3.0))
    others = [write_nifti(inp / "coronal.nii.gz", data, coronal), write_nifti(inp / "tilted.nii.gz", data, tilted)]
    out = tmp_path / "out"
    assert infer(str(bundle), "--input", str(inp), "--output", str(out), "--save-probabilities") == 1
    for src in (nii, *others):
        result = nib.load(str(out / src.name))
        assert result.shape == (40, 33, 1)
        np.testing.assert_allclose(result.affine, nib.load(str(src)).affine, atol=1e-6)
        assert np.array_equal(np.asarray(result.dataobj) > 0, data > 51), src.name
    # The 2D preprocessing sees each slice's true in-plane voxel size (a tilted slice is not foreshortened).
    from pipeline.inference.predictor import in_plane_affine

    for src, size in ((nii, (0.9, 0.9)), (others[0], (0.5, 0.4)), (others[1], (0.5, 0.4))):
        in_plane = in_plane_affine(nib.load(str(src)).affine)[:2, :2]
        np.testing.assert_allclose(np.linalg.norm(in_plane, axis=0), size, atol=1e-6)
        assert abs(np.linalg.det(in_plane)) > 0
    assert nib.load(str(out / "slice_probs.nii.gz")).shape == (40, 33, 1, 2)
    itk_in, itk_out = sitk.ReadImage(str(mha)), sitk.ReadImage(str(out / mha.name))
    assert itk_out.GetSize() == itk_in.GetSize() == (40, 33, 1)
    assert itk_out.GetDirection() == itk_in.GetDirection() and itk_out.GetOrigin() == itk_in.GetOrigin()
    assert np.array_equal(sitk.GetArrayFromImage(itk_out).transpose(2, 1, 0) > 0, data > 51)
    report = read_report(out)
    assert report["thick.nii.gz"]["status"] == "failed"
    assert "40x33x3" in report["thick.nii.gz"]["error"] and "one slice thick" in report["thick.nii.gz"]["error"]


def test_bad_files_are_reported_and_the_rest_written(tmp_path, capsys):
    bundle = threshold_bundle(tmp_path / "model")
    inp = tmp_path / "in"
    good = [write_nifti(inp / f"good{i}.nii.gz", blob(), AFFINES["oblique"]) for i in range(2)]
    raw = (inp / "good0.nii.gz").read_bytes()
    (inp / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    write_nifti(inp / "flat.nii.gz", blob((30, 26, 1))[:, :, 0], np.eye(4))
    nan = blob().astype(np.float32)
    nan[3, 4, 5] = np.nan
    write_nifti(inp / "nan.nii.gz", nan, AFFINES["lps"])
    out = tmp_path / "out"
    assert infer(str(bundle), "--input", str(inp), "--output", str(out)) == 1
    report = read_report(out)
    for g in good:
        assert report[g.name]["status"] == "written" and (out / g.name).is_file()
    reasons = {name: report[name]["error"] for name in ("truncated.nii.gz", "flat.nii.gz", "nan.nii.gz")}
    assert all(report[n]["status"] == "failed" for n in reasons)
    assert "truncated or corrupt" in reasons["truncated.nii.gz"]
    assert "2D image" in reasons["flat.nii.gz"] and "3D" in reasons["flat.nii.gz"]
    assert "NaN" in reasons["nan.nii.gz"]
    assert all(str(inp) in r for r in reasons.values())  # each reason names its file
    assert not (out / "truncated.nii.gz").exists() and not (out / "nan.nii.gz").exists()
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert csv_lines[0] == "case,input,status,seconds,output,probabilities,filled_voxels,error" and len(csv_lines) == 6
    assert "3 failed" in capsys.readouterr().out


def test_done_cases_are_skipped_until_model_input_or_options_change(tmp_path):
    inp = tmp_path / "in"
    a = write_nifti(inp / "a.nii.gz", blob(), AFFINES["lps"])
    write_nifti(inp / "b.nii.gz", blob(), AFFINES["ras"])
    out = tmp_path / "out"
    bundle = threshold_bundle(tmp_path / "model")
    statuses = lambda: {k: v["status"] for k, v in read_report(out).items()}
    assert infer(str(bundle), "--input", str(inp), "--output", str(out)) == 0
    assert statuses() == {"a.nii.gz": "written", "b.nii.gz": "written"}
    assert infer(str(bundle), "--input", str(inp), "--output", str(out)) == 0
    assert statuses() == {"a.nii.gz": "skipped", "b.nii.gz": "skipped"}
    write_nifti(a, blob() + 1, AFFINES["lps"])  # a changed input re-runs
    assert infer(str(bundle), "--input", str(inp), "--output", str(out)) == 0
    assert statuses() == {"a.nii.gz": "written", "b.nii.gz": "skipped"}
    assert infer(str(bundle), "--input", str(inp), "--output", str(out), "--overwrite") == 0
    assert statuses() == {"a.nii.gz": "written", "b.nii.gz": "written"}
    threshold_bundle(tmp_path / "model", spacing=[2.0, 2.0, 2.0], overwrite=True)  # a changed model re-runs all
    assert infer(str(bundle), "--input", str(inp), "--output", str(out)) == 0
    assert statuses() == {"a.nii.gz": "written", "b.nii.gz": "written"}


def test_bad_arguments_are_one_clear_error(tmp_path, capsys):
    bundle = threshold_bundle(tmp_path / "model")
    assert infer(str(bundle), "--input", str(tmp_path / "missing.nii.gz"), "--output", str(tmp_path / "o")) == 2
    assert "no such file" in capsys.readouterr().err
    src = write_nifti(tmp_path / "x.nii.gz", blob(), np.eye(4))
    assert infer(str(tmp_path), "--input", str(src), "--output", str(tmp_path / "o")) == 2
    assert "not a model bundle" in capsys.readouterr().err
    assert infer(str(bundle), "--input", str(src), "--output", str(tmp_path)) == 2
    assert "overwritten by its own segmentation" in capsys.readouterr().err and src.is_file()
    (bundle / "weights.pt").write_bytes(b"changed")
    assert infer(str(bundle), "--input", str(src), "--output", str(tmp_path / "o")) == 2
    assert "sha256 differs" in capsys.readouterr().err


def test_crf_and_probabilities_keep_geometry(tmp_path):
    bundle = threshold_bundle(tmp_path / "model")
    data = blob((24, 20, 10))
    src = write_itk(tmp_path / "scan.mha", data, (0.8, 0.9, 2.5), OBLIQUE, (10.0, -4.0, 7.0))
    out = tmp_path / "out"
    assert infer(str(bundle), "--input", str(src), "--output", str(out), "--crf", "--save-probabilities",
                 "--suffix", "_crf") == 0
    labels = sitk.ReadImage(str(out / "scan_crf.mha"))
    assert labels.GetDirection() == pytest.approx(sitk.ReadImage(str(src)).GetDirection())
    # The network is sure everywhere, so the CRF keeps its answer.
    assert np.array_equal(sitk.GetArrayFromImage(labels).T > 0, data > 51)
    probs = nib.load(str(out / "scan_crf_probs.nii.gz"))
    assert probs.shape == (*data.shape, 2)


def test_colliding_outputs_and_a_busy_output_folder_are_refused(tmp_path, capsys):
    import fcntl

    bundle = threshold_bundle(tmp_path / "model")
    a = write_nifti(tmp_path / "in" / "case.nii.gz", blob(), np.eye(4))
    b = write_nifti(tmp_path / "in" / "case.nii", blob(), np.eye(4))
    out = tmp_path / "out"
    assert infer(str(bundle), "--input", str(a), str(b), "--output", str(out), "--save-probabilities") == 2
    assert "would both write probabilities" in capsys.readouterr().err
    (out / ".pipeline-infer").mkdir(parents=True, exist_ok=True)
    with open(out / ".pipeline-infer" / "lock", "w") as held:  # another run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX)
        assert infer(str(bundle), "--input", str(a), "--output", str(out)) == 2
    assert "another `pipeline infer` is writing" in capsys.readouterr().err
    assert infer(str(bundle), "--input", str(a), "--output", str(out)) == 0  # free again
