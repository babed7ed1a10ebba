"""Hostile scan files (issue 13, items 1-3 for scans): headers that name data files outside their folder, headers
that declare more voxels than the budget or more data than the file holds, and header values no scan can have
(zero, negative or NaN spacing, singular or NaN affines, complex, bit or colour voxels).

Each is refused from its header alone, before any voxel is decompressed and before the network runs, with one
message naming the file, the field, its value and what to do: by ``pipeline infer`` (the case fails, exit code 1,
the reason in the report and on stderr) and, for NIfTI, by ``pipeline run``'s prepare stage (exit code 2)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.bundle import write_bundle
from pipeline.cli import main
from pipeline.config.schema import InferConfig, PostprocessConfig, PreprocessConfig
from pipeline.models import MODELS
from tests.hostile.harness import refused
from tests.utils import AFFINES, Threshold, blob_dataset, tiny_workflow, write_dicom_series, write_nifti

SHAPE = (20, 18, 10)




@pytest.fixture(autouse=True)
def _threshold_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS._items, "test_scan_threshold", Threshold)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bundle for the module: a 3D threshold model, orientation only (no resampling). One refused batch runs
    first, unmeasured, so that the modules `pipeline infer` imports on first use are not timed as the refusal."""
    tmp = tmp_path_factory.mktemp("scan_model")
    bundle = write_bundle(
        tmp / "model", name="scanthresh",
        model={"name": "test_scan_threshold", "kwargs": {}, "in_channels": 1, "out_channels": 2},
        state_dict=Threshold(1, 2).state_dict(), labels={0: "background", 1: "bright"}, channels=["t1"],
        spatial_dims=3, preprocess=PreprocessConfig(orientation="RAS", intensity={"mode": "none"},
                                                    patch={"size": [16, 16, 8]}),
        infer=InferConfig(roi_size=[16, 16, 8], overlap=0.25), postprocess=PostprocessConfig(),
        source={"workflow": "test"},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(MODELS._items, "test_scan_threshold", Threshold)
        warm = metaimage(tmp / "warm" / "warm.mhd", "missing.raw")
        assert main(["infer", str(bundle), "--input", str(warm), "--output", str(tmp / "out"), "--no-mlflow",
                     "--quiet"]) == 1
    return bundle


def volume(shape=SHAPE, dtype=np.int16) -> np.ndarray:
    return (np.arange(int(np.prod(shape))).reshape(shape) % 200).astype(dtype)


def infer_refused(model: Path, scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], names: list[str],
                  *extra: str, untouched: list[Path] | None = None) -> str:
    """``pipeline infer`` on one hostile scan: the case fails (exit 1) with one message naming ``names``, nothing
    is written for it, the input folder (and ``untouched``) unchanged. Returns the report's reason."""
    out = tmp_path / "out"
    refused(["infer", str(model), "--input", str(scan), "--output", str(out), "--no-mlflow", "--quiet", *extra],
            capsys, names=[str(scan), *names], code=1, untouched=[scan.parent, *(untouched or [])])
    (case,) = json.loads((out / "report.json").read_text())["cases"]
    assert case["status"] == "failed" and all(n in case["error"] for n in names), case
    assert sorted(p.name for p in out.iterdir()) == [".pipeline-infer", "report.csv", "report.json"]
    return case["error"]


def run_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], image: bytes | Path, names: list[str],
                *sets: str) -> None:
    """``pipeline run`` with the tiny blob dataset, case1's image replaced by a hostile NIfTI: the prepare stage
    refuses it by case and file (exit 2) before any training."""
    manifest = blob_dataset(tmp_path / "data", n_train=2, n_val=1, n_test=1)
    target = tmp_path / "data" / "imagesTr" / "case1.nii.gz"
    if isinstance(image, Path):
        target.unlink()
        target = target.with_name("case1.nii")
        target.write_bytes(image.read_bytes())
        doc = json.loads(manifest.read_text())
        doc["training"][1]["image"] = "imagesTr/case1.nii"
        manifest.write_text(json.dumps(doc))
    else:
        target.write_bytes(image)
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest, **{"train.epochs": 1})
    argv = ["run", str(wf), "--run-dir", str(tmp_path / "run"), *[a for s in sets for a in ("--set", s)]]
    refused(argv, capsys, names=["case1", str(target), *names], untouched=[tmp_path / "data"])


# ------------------------------------------------------------------------------------------------ hand-made headers


def nifti_file(path: Path, data: np.ndarray, *, datatype: int | None = None, payload: bytes | None = None,
               **fields: object) -> Path:
    """A NIfTI-1 file with header fields set as given, written as is (nibabel would repair some of them):
    ``pixdim1=0``, ``srow=<3x4>``, ``quatern_b=nan``, ``dim=[...]``; ``payload`` replaces the voxel bytes;
    ``.nii.gz`` names are gzipped."""
    img = nib.Nifti1Image(data, AFFINES["ras"])
    img.set_qform(AFFINES["ras"], code=1)
    img.set_sform(AFFINES["ras"], code=1)
    hdr = img.header.copy()
    for key, value in fields.items():
        if key.startswith("pixdim"):
            hdr["pixdim"][int(key[6:])] = value
        elif key == "srow":
            hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = np.asarray(value, dtype=float)
        else:
            hdr[key] = value
    if datatype is not None:
        hdr["datatype"] = datatype
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * 4 + (np.ascontiguousarray(data.T).tobytes() if payload is None else payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, 1) if path.name.endswith(".gz") else raw)
    return path


def metaimage(path: Path, data_file: str = "LOCAL", *, dims=SHAPE, spacing="1 1 1",
              matrix="1 0 0 0 1 0 0 0 1", data: bytes | None = None, extra: str = "") -> Path:
    """A MetaImage header (``.mha``/``.mhd``) of int16 voxels; LOCAL data follow it (zeros unless ``data``)."""
    head = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            f"CompressedData = False\nTransformMatrix = {matrix}\nOffset = 0 0 0\nElementSpacing = {spacing}\n"
            f"DimSize = {' '.join(map(str, dims))}\n{extra}ElementType = MET_SHORT\nElementDataFile = {data_file}\n")
    body = b""
    if data_file == "LOCAL":
        body = data if data is not None else volume(tuple(dims)).T.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head.encode() + body)
    return path


def nrrd(path: Path, *, data_file: str | None = None, sizes=SHAPE, directions="(1,0,0) (0,1,0) (0,0,1)",
         data: bytes | None = None, extra: str = "") -> Path:
    """A NRRD header of int16 voxels: attached raw data (zeros unless ``data``), or ``data file: DATA_FILE``."""
    geometry = (f"space: left-posterior-superior\nspace directions: {directions}\nspace origin: (0,0,0)\n"
                if directions else "")
    head = (f"NRRD0004\ntype: short\ndimension: 3\n{geometry}sizes: {' '.join(map(str, sizes))}\n"
            f"kinds: domain domain domain\nendian: little\nencoding: raw\n{extra}")
    if data_file is not None:
        text = head + f"data file: {data_file}\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((head + "\n").encode() + (data if data is not None else volume(tuple(sizes)).T.tobytes()))
    return path


def secret(folder: Path, nbytes: int = int(np.prod(SHAPE)) * 2) -> Path:
    """A file outside the scans' folder, as long as a scan's data (what a header must not make us read)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "secret.raw"
    path.write_bytes(bytes(range(256)) * (nbytes // 256) + b"\0" * (nbytes % 256))
    return path


def slices(folder: Path, n: int = SHAPE[2], stem: str = "s") -> list[Path]:
    """One raw int16 file per z slice, named s0.raw, s1.raw, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n):
        p = folder / f"{stem}{k}.raw"
        p.write_bytes(volume()[:, :, k].T.tobytes())
        out.append(p)
    return out


# ------------------------------------------------------------------------------------------------ confinement


@pytest.mark.parametrize("form", ["relative", "absolute", "mha"])
def test_mhd_data_file_outside_its_folder(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          form: str) -> None:
    """.mhd (or .mha) with ElementDataFile = ../../outside/secret.raw or an absolute path → the case fails naming
    the header, the field, the path and the rule; the file is never read."""
    outside = secret(tmp_path / "outside")
    name = str(outside) if form == "absolute" else os.path.relpath(outside, tmp_path / "in" / "deep")
    header = metaimage(tmp_path / "in" / "deep" / ("scan.mha" if form == "mha" else "scan.mhd"), name)
    infer_refused(model, header, tmp_path, capsys, ["ElementDataFile", name, "outside the header's folder"],
                  untouched=[outside.parent])


def test_mhd_data_file_symlink_pointing_out(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """.mhd whose data file scan.raw is a symbolic link to a file outside its folder → refused: naming the link, where
    it leads and that links count as where they point."""
    outside = secret(tmp_path / "outside")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "scan.raw").symlink_to(outside)
    header = metaimage(tmp_path / "in" / "scan.mhd", "scan.raw")
    infer_refused(model, header, tmp_path, capsys, ["ElementDataFile", "scan.raw", str(outside),
                                                    "symbolic links count as where they point"])


@pytest.mark.parametrize("form", ["LIST", "pattern"])
def test_mhd_slice_files_outside_its_folder(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            form: str) -> None:
    """.mhd with a LIST of slice files (one of them ../outside/s3.raw) or a pattern ../outside/s%d.raw 0 9 1 →
    refused naming the slice file that escapes."""
    slices(tmp_path / "in")
    slices(tmp_path / "outside")
    if form == "LIST":
        names = [f"s{k}.raw" for k in range(SHAPE[2])]
        names[3] = "../outside/s3.raw"
        header = metaimage(tmp_path / "in" / "scan.mhd", "LIST 2D\n" + "\n".join(names))
        bad = "../outside/s3.raw"
    else:
        header = metaimage(tmp_path / "in" / "scan.mhd", f"../outside/s%d.raw 0 {SHAPE[2] - 1} 1")
        bad = "../outside/s0.raw"
    infer_refused(model, header, tmp_path, capsys, ["ElementDataFile", bad, "outside the header's folder"],
                  untouched=[tmp_path / "outside"])


@pytest.mark.parametrize("form", ["data file", "datafile", "LIST", "pattern", "symlink"])
def test_nrrd_detached_data_file_outside_its_folder(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    form: str) -> None:
    """NRRD whose detached data (data file: / datafile:, a LIST, a pattern, or a link in its folder) lie outside
    its folder → refused naming the header, the field and the path."""
    outside = secret(tmp_path / "outside")
    slices(tmp_path / "outside")
    (tmp_path / "in").mkdir()
    bad = "../outside/secret.raw"
    if form == "data file":
        header = nrrd(tmp_path / "in" / "scan.nrrd", data_file=bad)
    elif form == "datafile":
        header = nrrd(tmp_path / "in" / "scan.nrrd", data_file=bad)
        header.write_text(header.read_text().replace("data file:", "datafile:"))
    elif form == "LIST":
        slices(tmp_path / "in")
        bad = "../outside/s4.raw"
        names = [bad if k == 4 else f"s{k}.raw" for k in range(SHAPE[2])]
        header = nrrd(tmp_path / "in" / "scan.nrrd", data_file="LIST 2\n" + "\n".join(names))
    elif form == "pattern":
        bad = "../outside/s0.raw"
        header = nrrd(tmp_path / "in" / "scan.nrrd", data_file=f"../outside/s%d.raw 0 {SHAPE[2] - 1} 1 2")
    else:
        (tmp_path / "in" / "scan.raw").symlink_to(outside)
        bad = "scan.raw"
        header = nrrd(tmp_path / "in" / "scan.nrrd", data_file=bad)
    infer_refused(model, header, tmp_path, capsys, ["data file", bad, "outside the header's folder"],
                  untouched=[tmp_path / "outside"])


def test_dicom_folder_with_a_link_pointing_out(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A DICOM series folder in which one slice is a symbolic link to a DICOM file elsewhere → refused naming the
    link and its target (the series is not read with a slice from outside, nor with a slice missing)."""
    series = tmp_path / "in" / "series"
    write_dicom_series(series, volume(), np.eye(3), (0.0, 0.0, 0.0), (1.0, 1.0, 2.0))
    victim = sorted(series.iterdir())[4]
    (tmp_path / "outside").mkdir()
    moved = tmp_path / "outside" / victim.name
    victim.rename(moved)
    victim.symlink_to(moved)
    infer_refused(model, series, tmp_path, capsys, [victim.name, "symbolic link", str(moved),
                                                    "outside the series folder"], untouched=[tmp_path / "outside"])


# ------------------------------------------------------------------------------------------------ limits


def gzip_bomb(path: Path, shape=(1000, 1000, 900)) -> Path:
    """A .nii.gz of 900 M zero voxels (uint8) in under 1 MB: a valid header, then the same compressed 1 MiB of
    zeros repeated (gzip members concatenate)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.uint8)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    block = gzip.compress(b"\0" * (1 << 20), 9)
    n = int(np.prod(shape)) >> 20
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4) + block * n)
    return path


def test_gzip_bomb_nifti(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 0.9 MB .nii.gz that decompresses to 900 MB (1000x1000x900) → refused from its header, in < 2 s and < 1 GiB,
    naming the shape, the count, the budget and how to raise it (infer and run)."""
    bomb = gzip_bomb(tmp_path / "in" / "bomb.nii.gz")
    assert bomb.stat().st_size < 1 << 20
    names = ["1000x1000x900", "900000000 voxels", f"budget of {2**28}", "--max-voxels", "data.max_voxels"]
    infer_refused(model, bomb, tmp_path, capsys, names)
    run_refused(tmp_path / "run", capsys, bomb.read_bytes(), names)


@pytest.mark.parametrize("fmt", [".nii", ".mha", ".nrrd"])
def test_header_declares_more_voxels_than_the_budget(model: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """An uncompressed header (NIfTI, MetaImage, NRRD) declaring 30000x30000x100 voxels over a few bytes → refused
    before reading or allocating, naming the count and the budget."""
    dims = (30000, 30000, 100)
    path = tmp_path / "in" / f"huge{fmt}"
    if fmt == ".nii":
        nifti_file(path, volume((2, 2, 2)), dim=[3, *dims, 1, 1, 1, 1])
    elif fmt == ".mha":
        metaimage(path, dims=dims, data=b"\0" * 64)
    else:
        nrrd(path, sizes=dims, data=b"\0" * 64)
    infer_refused(model, path, tmp_path, capsys, ["30000x30000x100", "90000000000 voxels", "budget"])


def test_scan_over_a_lowered_budget(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid scan with --max-voxels (data.max_voxels) below its size → refused naming the budget given; with the
    default budget the same scan is segmented."""
    scan = write_nifti(tmp_path / "in" / "scan.nii.gz", volume(), AFFINES["oblique"])
    count = str(int(np.prod(SHAPE)))
    infer_refused(model, scan, tmp_path, capsys, [f"{count} voxels", "budget of 3000 "], "--max-voxels", "3000")
    ok = tmp_path / "ok"
    assert main(["infer", str(model), "--input", str(scan), "--output", str(ok), "--no-mlflow", "--quiet"]) == 0
    assert (ok / "scan.nii.gz").is_file()
    run_refused(tmp_path / "run", capsys, scan.read_bytes(), [f"{count} voxels", "budget of 3000 "],
                "data.max_voxels=3000")


@pytest.mark.parametrize("fmt", [".nii", ".mha", ".mhd", ".nrrd"])
def test_truncated_uncompressed_scan(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     fmt: str) -> None:
    """An uncompressed scan cut short (an interrupted copy) → refused before reading, naming what the header
    declares, the bytes needed and the bytes there."""
    need = int(np.prod(SHAPE)) * 2
    cut = volume().T.tobytes()[: need - 100]
    path = tmp_path / "in" / f"cut{fmt}"
    if fmt == ".nii":
        full = nifti_file(tmp_path / "full.nii", volume())
        path.parent.mkdir()
        path.write_bytes(full.read_bytes()[:-100])
        names = ["truncated", "20x18x10 int16", f"{352 + need} bytes", f"holds only {352 + need - 100}"]
    elif fmt == ".mha":
        metaimage(path, data=cut)
        names = ["truncated", "20x18x10", f"{need} bytes", f"holds only {need - 100}"]
    elif fmt == ".mhd":
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "cut.raw").write_bytes(cut)
        metaimage(path, "cut.raw")
        names = ["truncated", f"{need} bytes", f"its data file cut.raw holds only {need - 100}"]
    else:
        nrrd(path, data=cut)
        names = ["truncated", f"{need} bytes", f"holds only {need - 100}"]
    infer_refused(model, path, tmp_path, capsys, names)
    if fmt == ".nii":
        run_refused(tmp_path / "run", capsys, path, names)


def test_truncated_gzip_stream(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A .nii.gz whose compressed stream is whole but holds less data than its header declares (a file cut before
    it was compressed) → refused from the gzip trailer's length, naming the bytes needed and found."""
    full = nifti_file(tmp_path / "full.nii", volume())
    path = tmp_path / "in" / "short.nii.gz"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(full.read_bytes()[:-1000]))
    need = 352 + int(np.prod(SHAPE)) * 2
    names = ["truncated", f"{need} bytes", f"the decompressed file holds only {need - 1000}"]
    infer_refused(model, path, tmp_path, capsys, names)


# ------------------------------------------------------------------------------------------------ header values


@pytest.mark.parametrize("fmt", ["nifti-qform", "nifti-no-transform", ".mha", ".nrrd"])
def test_zero_spacing(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """A voxel size of 0 (NIfTI pixdim used by the qform or the fall-back, MetaImage ElementSpacing, a NRRD space
    direction of length 0) → refused naming the field and the value, before the network (not "RuntimeError:
    applying transform <Orientationd object at 0x…>")."""
    if fmt.startswith("nifti"):
        codes = {"sform_code": 0} if fmt == "nifti-qform" else {"sform_code": 0, "qform_code": 0}
        path = nifti_file(tmp_path / "in" / "zero.nii.gz", volume(), pixdim2=0.0, **codes)
        names = ["pixdim[1,2,3]", "(1, 0, 1)", "positive"]
        if fmt == "nifti-qform":
            run_refused(tmp_path / "run", capsys, path.read_bytes(), names)
    elif fmt == ".mha":
        path = metaimage(tmp_path / "in" / "zero.mha", spacing="1 0 1")
        names = ["ElementSpacing", "(1, 0, 1)", "positive"]
    else:
        path = nrrd(tmp_path / "in" / "zero.nrrd", directions="(1,0,0) (0,0,0) (0,0,1)")
        names = ["space directions", "(1, 0, 1)", "positive"]
    infer_refused(model, path, tmp_path, capsys, names)


@pytest.mark.parametrize("fmt", ["nifti-qform", "nifti-no-transform", ".mha", ".nrrd"])
def test_negative_spacing(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """A negative voxel size (NIfTI pixdim where the qform uses it: nibabel takes |x|, niftilib 1 mm; MetaImage
    ElementSpacing; NRRD spacings) → refused naming the field and the value."""
    if fmt.startswith("nifti"):
        codes = {"sform_code": 0} if fmt == "nifti-qform" else {"sform_code": 0, "qform_code": 0}
        path = nifti_file(tmp_path / "in" / "neg.nii.gz", volume(), pixdim1=-1.5, **codes)
        names = ["pixdim[1,2,3]", "(-1.5, 1, 1)", "positive"]
    elif fmt == ".mha":
        path = metaimage(tmp_path / "in" / "neg.mha", spacing="-1.5 1 1")
        names = ["ElementSpacing", "(-1.5, 1, 1)", "positive"]
    else:
        path = nrrd(tmp_path / "in" / "neg.nrrd", directions=None, extra="spacings: -1.5 1 1\n")
        names = ["spacing", "(-1.5, 1, 1)", "positive"]
    infer_refused(model, path, tmp_path, capsys, names)


@pytest.mark.parametrize("fmt", ["nifti-sform", ".mha"])
def test_all_zero_affine(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """An all-zero voxel-to-world matrix (NIfTI sform with sform_code 1, MetaImage TransformMatrix) → refused
    naming the field, the value and what to do (set sform_code 0 when the qform holds the geometry)."""
    if fmt == "nifti-sform":
        path = nifti_file(tmp_path / "in" / "zero.nii.gz", volume(), srow=np.zeros((3, 4)))
        names = ["sform (sform_code 1", "is all zero", "invertible"]
    else:
        path = metaimage(tmp_path / "in" / "zero.mha", matrix="0 0 0 0 0 0 0 0 0")
        names = ["TransformMatrix", "is all zero", "invertible"]
    infer_refused(model, path, tmp_path, capsys, names)


@pytest.mark.parametrize("field", ["sform", "qform"])
def test_nan_affine(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str) -> None:
    """A NaN in the geometry (a NIfTI sform row, a qform quaternion) → refused at read time, before the network
    runs, naming the field and the NaN."""
    if field == "sform":
        srow = AFFINES["ras"][:3].copy()
        srow[1, 1] = np.nan
        path = nifti_file(tmp_path / "in" / "nan.nii.gz", volume(), srow=srow)
        names = ["sform (sform_code 1", "nan", "NaN or infinite"]
    else:
        path = nifti_file(tmp_path / "in" / "nan.nii.gz", volume(), sform_code=0, quatern_c=np.nan)
        names = ["qform (qform_code 1)", "quatern_b/c/d", "nan", "not a rotation"]
    infer_refused(model, path, tmp_path, capsys, names)
    if field == "sform":
        run_refused(tmp_path / "run", capsys, path.read_bytes(), names)


@pytest.mark.parametrize("fmt", [".mha", ".nrrd", "nifti-sform"])
def test_singular_direction(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """Axes that are parallel (MetaImage TransformMatrix, NRRD space directions, a NIfTI sform with two equal
    columns) → refused as singular, naming the field and the matrix."""
    if fmt == ".mha":
        path = metaimage(tmp_path / "in" / "flat.mha", matrix="1 0 0 1 0 0 0 0 1")
        names = ["TransformMatrix", "singular"]
    elif fmt == ".nrrd":
        path = nrrd(tmp_path / "in" / "flat.nrrd", directions="(1,0,0) (2,0,0) (0,0,1)")
        names = ["space directions", "singular"]
    else:
        path = nifti_file(tmp_path / "in" / "flat.nii.gz", volume(),
                          srow=[[1.0, 1.0, 0, 0], [0, 0, 0, 0], [0, 0, 1.0, 0]])
        names = ["sform (sform_code 1", "singular"]
    infer_refused(model, path, tmp_path, capsys, names)


@pytest.mark.parametrize("fmt", ["nifti", ".nrrd"])
def test_complex_voxels(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """A complex64 scan (NIfTI datatype 32, NRRD kinds: complex) → refused naming the type and what to save instead
    (segmenting it would silently drop the imaginary part)."""
    data = volume().astype(np.complex64) * (1 + 1j)
    if fmt == "nifti":
        path = nifti_file(tmp_path / "in" / "complex.nii.gz", data)
        names = ["datatype 32 (complex64)", "imaginary part", "magnitude"]
        run_refused(tmp_path / "run", capsys, path.read_bytes(), names)
    else:
        path = tmp_path / "in" / "complex.nrrd"
        path.parent.mkdir()
        image = sitk.GetImageFromArray(np.ascontiguousarray(data.T))
        sitk.WriteImage(image, str(path))
        names = ["complex of 32-bit float", "imaginary part"]
    infer_refused(model, path, tmp_path, capsys, names)


def test_one_bit_voxels(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A NIfTI of 1-bit (binary, datatype 1) voxels → refused naming the type and to save it as uint8 (not
    "truncated or corrupt")."""
    path = nifti_file(tmp_path / "in" / "mask.nii.gz", volume(dtype=np.uint8), datatype=1, bitpix=1)
    infer_refused(model, path, tmp_path, capsys, ["datatype 1 (binary)", "uint8"])


def test_colour_voxels(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A NIfTI of RGB24 (structured) voxels → refused naming the type and to convert to grey or one channel per
    colour."""
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    path = nifti_file(tmp_path / "in" / "photo.nii.gz", rgb)
    infer_refused(model, path, tmp_path, capsys, ["datatype 128 (RGB)", "one channel per colour"])


def test_extended_precision_voxels(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A NIfTI of float128 voxels (datatype 1536, which PyTorch cannot take) → refused naming the type and to save
    float32 or float64."""
    path = nifti_file(tmp_path / "in" / "wide.nii.gz", volume(dtype=np.float64), datatype=1536, bitpix=128,
                      payload=b"\0" * (16 * int(np.prod(SHAPE))))
    infer_refused(model, path, tmp_path, capsys, ["datatype 1536 (float128)", "float32 or float64"])


# ------------------------------------------------------------------------------------------------ microscopy formats


def tiff_file(path: Path, data: np.ndarray, **options: object) -> Path:
    """A TIFF written by tifffile (``options`` passed on), one page per z."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(str(path), data, photometric=options.pop("photometric", "minisblack"), **options)
    return path


@pytest.mark.parametrize("form", ["uncompressed", "deflate-stack"])
def test_truncated_tiff(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str) -> None:
    """A TIFF cut short (an interrupted copy): a single uncompressed 16-bit page, or the last deflate strip of a
    z-stack → refused before decoding, naming what the header declares and the bytes there."""
    if form == "uncompressed":
        full = tiff_file(tmp_path / "full.tif", volume((40, 50), np.uint16), metadata=None)
        names = ["truncated", "50x40 uint16 pixels", "4208 bytes", "holds only 3208"]
        cut = 1000
    else:
        full = tiff_file(tmp_path / "full.tif", volume((3, 40, 50), np.uint16), metadata=None, compression="zlib")
        names = ["truncated", "50x40x3 uint16 pixels in strips ending at byte"]
        cut = 20
    path = tmp_path / "in" / "cut.tif"
    path.parent.mkdir()
    path.write_bytes(full.read_bytes()[:-cut])
    infer_refused(model, path, tmp_path, capsys, names)


def test_tiff_header_declares_more_pixels_than_the_budget(model: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A 2 kB TIFF whose ImageWidth and ImageLength say 60000 x 60000 → refused from the header (tifffile gives the
    shape without decoding), naming the size, the count and the budget; nothing is allocated."""
    import struct

    import tifffile

    path = tiff_file(tmp_path / "in" / "huge.tif", volume((40, 50), np.uint8), metadata=None)
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(str(path)) as tif:
        fields = [tif.pages[0].tags[name] for name in ("ImageWidth", "ImageLength")]
    for tag in fields:
        fmt = "<H" if int(tag.dtype) == 3 else "<I"
        raw[tag.valueoffset: tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, 60000)
    path.write_bytes(bytes(raw))
    infer_refused(model, path, tmp_path, capsys, ["60000x60000", "3600000000 voxels", "budget", "--max-voxels"])


@pytest.mark.parametrize("fmt", [".png", ".tif"])
def test_colour_png_or_tiff(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """A colour photograph (RGB PNG or TIFF whose channels differ) → refused naming the file and to convert it to
    grey (an RGB(A) image of grey, R = G = B as DSB 2018 ships them, is read as grey: tests/io)."""
    from PIL import Image

    grey = volume((40, 50), np.uint8)
    rgb = np.stack([grey, grey // 2, 255 - grey], -1)
    path = tmp_path / "in" / f"photo{fmt}"
    if fmt == ".png":
        path.parent.mkdir()
        Image.fromarray(rgb).save(str(path))
    else:
        tiff_file(path, rgb, photometric="rgb")
    infer_refused(model, path, tmp_path, capsys, ["colour image whose red, green and blue differ",
                                                  "convert the image to grey"])
