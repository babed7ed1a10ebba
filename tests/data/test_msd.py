"""Tests for pipeline.data.msd: fetching MSD Task05_Prostate, safe extraction and the manifest (no network)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.data import msd
from pipeline.data.msd import (
    MSD_PROSTATE_MD5,
    MSD_PROSTATE_URL,
    fetch_msd_prostate,
    safe_extract,
    split_counts,
    write_msd_manifest,
)
from pipeline.errors import DataError

REPO = Path(__file__).resolve().parents[2]

# A rotated affine with anisotropic zooms (0.6, 0.625, 3.6).
_ROT = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
ZOOMS = (0.6, 0.625, 3.6)
AFFINE = np.eye(4)
AFFINE[:3, :3] = _ROT @ np.diag(ZOOMS)
AFFINE[:3, 3] = [-12.5, 30.0, 7.25]


def _case_ids(n: int) -> list[str]:
    return [f"prostate_{i:02d}" for i in range(n)]


def make_dataset(parent: Path, n_cases: int = 5, n_test: int = 2, apple_double: bool = True) -> Path:
    """Write a tiny Task05_Prostate folder in MSD's layout under ``parent``; return the folder."""
    ds = parent / "Task05_Prostate"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    training = []
    for cid in _case_ids(n_cases):
        img = rng.random((8, 8, 4, 2), dtype=np.float32)
        lab = rng.integers(0, 3, size=(8, 8, 4), dtype=np.uint8)
        nib.save(nib.Nifti1Image(img, AFFINE), ds / "imagesTr" / f"{cid}.nii.gz")
        nib.save(nib.Nifti1Image(lab, AFFINE), ds / "labelsTr" / f"{cid}.nii.gz")
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    test = []
    for i in range(n_test):
        cid = f"prostate_{50 + i:02d}"
        img = rng.random((8, 8, 4, 2), dtype=np.float32)
        nib.save(nib.Nifti1Image(img, AFFINE), ds / "imagesTs" / f"{cid}.nii.gz")
        test.append(f"./imagesTs/{cid}.nii.gz")
    if apple_double:  # macOS resource-fork junk, as found in some MSD archives
        (ds / "imagesTr" / "._prostate_00.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
        (ds / "._dataset.json").write_bytes(b"\x00\x05\x16\x07junk")
    meta = {
        "name": "PROSTATE",
        "description": "Prostate transitional zone and peripheral zone segmentation",
        "reference": "Radboud University, Nijmegen Medical Centre",
        "licence": "CC-BY-SA 4.0",
        "release": "1.0 04/05/2018",
        "tensorImageSize": "4D",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": n_cases,
        "numTest": n_test,
        "training": training,
        "test": test,
    }
    (ds / "dataset.json").write_text(json.dumps(meta, indent=4))
    return ds


def make_tar(tmp_path: Path, n_cases: int = 5, prefix: str = "./") -> Path:
    """A tiny Task05_Prostate.tar in the real layout (members prefixed with ``prefix``)."""
    src = tmp_path / "src"
    ds = make_dataset(src, n_cases)
    tar_path = tmp_path / "upstream" / "Task05_Prostate.tar"
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w") as tar:
        tar.add(ds, arcname=f"{prefix}Task05_Prostate")
    return tar_path


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _all_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


# --------------------------------------------------------------------------------------------------------------
# fetch


@pytest.mark.parametrize("prefix", ["./", ""])
def test_fetch_file_url_writes_manifest_monai_reads(tmp_path: Path, prefix: str) -> None:
    from monai.data import load_decathlon_datalist

    tar_path = make_tar(tmp_path, n_cases=6, prefix=prefix)
    root = tmp_path / "root"
    out = fetch_msd_prostate(root, url=tar_path.as_uri(), md5=md5_of(tar_path), progress=False)

    assert out == root / "msd_prostate.json"
    assert (root / "Task05_Prostate.tar").read_bytes() == tar_path.read_bytes()
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "temporary files left behind"
    manifest = json.loads(out.read_text())
    assert manifest["numTraining"] == 6
    assert manifest["domain"] == "prostate_mri"
    assert manifest["labels"] == {"0": "background", "1": "PZ", "2": "TZ"}
    assert manifest["modality"] == manifest["channel_names"] == {"0": "T2", "1": "ADC"}
    assert manifest["source"] == {"url": MSD_PROSTATE_URL, "md5": MSD_PROSTATE_MD5, "archive": "Task05_Prostate.tar"}

    seen: list[str] = []
    for key in ("training", "validation", "test"):
        data = load_decathlon_datalist(str(out), is_segmentation=True, data_list_key=key)
        assert data, key
        for item in data:
            assert Path(item["image"]).is_file() and Path(item["label"]).is_file()
            assert Path(item["image"]).name == f"{item['id']}.nii.gz"
            assert Path(item["label"]).name == f"{item['id']}.nii.gz"
            assert "imagesTr" in item["image"] and "labelsTr" in item["label"]
            assert item["spacing"] == pytest.approx(list(ZOOMS), abs=1e-5)
            assert isinstance(item["fold"], int)
            seen.append(item["id"])
    assert sorted(seen) == _case_ids(6)  # disjoint and covering every labelled case, no '._' junk
    assert len(manifest["training"]) == 4 and len(manifest["validation"]) == 1 and len(manifest["test"]) == 1

    # paths in the file are relative to the manifest's folder
    for item in manifest["training"]:
        assert not os.path.isabs(item["image"]) and (root / item["image"]).is_file()
    assert [u["id"] for u in manifest["unlabeled"]] == ["prostate_50", "prostate_51"]
    assert all((root / u["image"]).is_file() and "label" not in u for u in manifest["unlabeled"])


def test_fetch_with_local_archive(tmp_path: Path) -> None:
    tar_path = make_tar(tmp_path, n_cases=4)
    root = tmp_path / "root"
    out = fetch_msd_prostate(
        root, url="file:///nonexistent/should/not/be/used.tar", md5=md5_of(tar_path), archive=tar_path,
        progress=False,
    )
    manifest = json.loads(out.read_text())
    assert manifest["numTraining"] == 4
    assert (root / "Task05_Prostate" / "dataset.json").is_file()
    assert not (root / "Task05_Prostate.tar").exists()  # the local archive is used in place, not copied


def test_fetch_md5_mismatch_downloaded(tmp_path: Path) -> None:
    tar_path = make_tar(tmp_path)
    root = tmp_path / "root"
    with pytest.raises(DataError) as exc:
        fetch_msd_prostate(root, url=tar_path.as_uri(), md5="0" * 32, progress=False)
    msg = str(exc.value)
    assert "0" * 32 in msg and md5_of(tar_path) in msg
    assert not (root / "Task05_Prostate").exists()
    assert not (root / "msd_prostate.json").exists()
    assert list(root.iterdir()) == []  # neither the bad archive nor a .part file is kept


def test_fetch_md5_mismatch_local_archive(tmp_path: Path) -> None:
    tar_path = make_tar(tmp_path)
    root = tmp_path / "root"
    with pytest.raises(DataError) as exc:
        fetch_msd_prostate(root, md5="f" * 32, archive=tar_path, progress=False)
    msg = str(exc.value)
    assert "f" * 32 in msg and md5_of(tar_path) in msg and "Delete" in msg and str(tar_path) in msg
    assert not (root / "Task05_Prostate").exists()
    assert not (root / "msd_prostate.json").exists()


def test_fetch_existing_archive_wrong_md5(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "Task05_Prostate.tar").write_bytes(b"truncated")
    with pytest.raises(DataError) as exc:
        fetch_msd_prostate(root, url="file:///nonexistent.tar", progress=False)
    msg = str(exc.value)
    assert MSD_PROSTATE_MD5 in msg and "Delete" in msg and "Task05_Prostate.tar" in msg
    assert not (root / "msd_prostate.json").exists()


def test_fetch_does_not_redownload(tmp_path: Path) -> None:
    tar_path = make_tar(tmp_path)
    md5 = md5_of(tar_path)
    url = tar_path.as_uri()
    root = tmp_path / "root"
    first = json.loads(fetch_msd_prostate(root, url=url, md5=md5, progress=True).read_text())
    tar_path.unlink()  # a second download would now fail
    (root / "msd_prostate.json").unlink()
    out = fetch_msd_prostate(root, url=url, md5=md5, progress=False)
    assert json.loads(out.read_text()) == first

    # also when the extracted folder is gone: re-extracted from the archive already there
    shutil.rmtree(root / "Task05_Prostate")
    out = fetch_msd_prostate(root, url=url, md5=md5, progress=False)
    assert json.loads(out.read_text()) == first


def test_fetch_network_failure_names_url_and_archive_option(tmp_path: Path) -> None:
    url = (tmp_path / "missing" / "Task05_Prostate.tar").as_uri()
    root = tmp_path / "root"
    with pytest.raises(DataError) as exc:
        fetch_msd_prostate(root, url=url, progress=False)
    assert url in str(exc.value) and "--archive" in str(exc.value)
    assert list(root.iterdir()) == []


def test_fetch_archive_not_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        fetch_msd_prostate(tmp_path / "root", archive=tmp_path / "nope.tar", progress=False)


def test_fetch_rejects_archive_without_dataset_folder(tmp_path: Path) -> None:
    tar_path = tmp_path / "other.tar"
    with tarfile.open(tar_path, "w") as tar:
        _add_bytes(tar, "Task04_Hippocampus/readme.txt", b"hi")
    with pytest.raises(DataError, match="Task05_Prostate"):
        fetch_msd_prostate(tmp_path / "root", archive=tar_path, md5=None, progress=False)


# --------------------------------------------------------------------------------------------------------------
# safe_extract


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def _evil_tar(tmp_path: Path, build) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        _add_bytes(tar, "Task05_Prostate/dataset.json", b"{}")  # a benign member first
        build(tar)
    return path


EVIL = {
    "dotdot": lambda tar, out: _add_bytes(tar, "../evil.txt", b"pwned"),
    "dotdot_nested": lambda tar, out: _add_bytes(tar, "Task05_Prostate/../../evil.txt", b"pwned"),
    "absolute": lambda tar, out: _add_bytes(tar, str(out / "evil_abs.txt"), b"pwned"),
    "symlink_outside": lambda tar, out: _add_link(tar, "Task05_Prostate/link", "../../outside"),
    "symlink_absolute": lambda tar, out: _add_link(tar, "Task05_Prostate/link", str(out)),
    "symlink_then_write": lambda tar, out: (
        _add_link(tar, "Task05_Prostate/up", ".."),
        _add_link(tar, "Task05_Prostate/up2", "up/.."),
        _add_bytes(tar, "Task05_Prostate/up2/evil.txt", b"pwned"),
    ),
    "hardlink_outside": lambda tar, out: _add_link(tar, "Task05_Prostate/hl", "../outside/x", tarfile.LNKTYPE),
    "fifo": lambda tar, out: tar.addfile(_typed("Task05_Prostate/fifo", tarfile.FIFOTYPE)),
    "chardev": lambda tar, out: tar.addfile(_typed("Task05_Prostate/dev", tarfile.CHRTYPE)),
}


def _typed(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


@pytest.mark.parametrize("case", sorted(EVIL))
def test_safe_extract_refuses_unsafe_members(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "work" / "dest"
    tar_path = _evil_tar(tmp_path, lambda tar: EVIL[case](tar, outside))
    before = _all_files(tmp_path)
    with pytest.raises(DataError) as exc:
        safe_extract(tar_path, dest)
    assert str(tar_path) in str(exc.value)
    assert _all_files(tmp_path) == before  # nothing extracted, nothing written anywhere (dest not even created)


def test_fetch_refuses_unsafe_archive(tmp_path: Path) -> None:
    tar_path = _evil_tar(tmp_path, lambda tar: _add_bytes(tar, "../evil.txt", b"pwned"))
    root = tmp_path / "root"
    with pytest.raises(DataError):
        fetch_msd_prostate(root, url=tar_path.as_uri(), md5=md5_of(tar_path), progress=False)
    assert not (tmp_path / "evil.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == ["Task05_Prostate.tar"]


def test_safe_extract_allows_internal_links_and_dot_prefix(tmp_path: Path) -> None:
    tar_path = tmp_path / "ok.tar"
    with tarfile.open(tar_path, "w") as tar:
        _add_bytes(tar, "./Task05_Prostate/a.txt", b"a")
        _add_link(tar, "./Task05_Prostate/sub/link", "../a.txt")
        _add_link(tar, "Task05_Prostate/hard", "Task05_Prostate/a.txt", tarfile.LNKTYPE)
    dest = tmp_path / "dest"
    safe_extract(tar_path, dest)
    assert (dest / "Task05_Prostate" / "sub" / "link").read_bytes() == b"a"
    assert (dest / "Task05_Prostate" / "hard").read_bytes() == b"a"
    assert sorted(p.name for p in dest.iterdir()) == ["Task05_Prostate"]


def test_safe_extract_replaces_existing_folder(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "Task05_Prostate").mkdir(parents=True)
    (dest / "Task05_Prostate" / "stale.txt").write_text("old")
    tar_path = tmp_path / "ok.tar"
    with tarfile.open(tar_path, "w") as tar:
        _add_bytes(tar, "Task05_Prostate/new.txt", b"new")
    safe_extract(tar_path, dest)
    assert sorted(p.name for p in (dest / "Task05_Prostate").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in dest.iterdir()) == ["Task05_Prostate"]


def test_safe_extract_interrupted_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tar_path = make_tar(tmp_path, n_cases=3)
    dest = tmp_path / "dest"
    real = tarfile.TarFile.extractall

    def interrupted(self, path, *args, **kwargs):
        real(self, path, *args, **kwargs)  # everything written to the temporary folder...
        raise KeyboardInterrupt  # ...then the user presses Ctrl-C before it is moved into place

    monkeypatch.setattr(tarfile.TarFile, "extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        safe_extract(tar_path, dest)
    assert list(dest.iterdir()) == []


def test_safe_extract_corrupt_archive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file" * 100)
    with pytest.raises(DataError, match="bad.tar"):
        safe_extract(bad, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# --------------------------------------------------------------------------------------------------------------
# write_msd_manifest


def test_manifest_splits_32_cases_deterministic(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, n_cases=32, n_test=1, apple_double=False)
    a = write_msd_manifest(ds, tmp_path / "a" / "m.json", seed=0)
    b = write_msd_manifest(ds, tmp_path / "b" / "m.json", seed=0)
    c = write_msd_manifest(ds, tmp_path / "c" / "m.json", seed=1)
    assert (len(a["training"]), len(a["validation"]), len(a["test"])) == (22, 4, 6)
    ids = {k: [e["id"] for e in a[k]] for k in ("training", "validation", "test")}
    assert ids == {k: [e["id"] for e in b[k]] for k in ids}
    assert ids != {k: [e["id"] for e in c[k]] for k in ids}
    assert sorted(sum(ids.values(), [])) == _case_ids(32)
    assert all(e["fold"] == -1 for e in a["test"])
    folds = [e["fold"] for k in ("training", "validation") for e in a[k]]
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    # relative to the manifest's folder
    assert a["training"][0]["image"].startswith("../Task05_Prostate/imagesTr/")
    assert json.loads((tmp_path / "a" / "m.json").read_text()) == a


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, (1, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)), (4, (2, 1, 1)), (6, (4, 1, 1)), (16, (11, 2, 3)),
     (32, (22, 4, 6))],
)
def test_split_counts(n: int, expected: tuple[int, int, int]) -> None:
    assert split_counts(n) == expected
    assert sum(split_counts(n)) == n


def test_manifest_missing_dataset_json(tmp_path: Path) -> None:
    (tmp_path / "Task05_Prostate").mkdir()
    with pytest.raises(DataError, match="dataset.json"):
        write_msd_manifest(tmp_path / "Task05_Prostate", tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_manifest_missing_listed_file(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, n_cases=3)
    (ds / "labelsTr" / "prostate_01.nii.gz").unlink()
    (ds / "imagesTs" / "prostate_50.nii.gz").unlink()
    with pytest.raises(DataError) as exc:
        write_msd_manifest(ds, tmp_path / "m.json")
    msg = str(exc.value)
    assert "labelsTr/prostate_01.nii.gz" in msg and "imagesTs/prostate_50.nii.gz" in msg
    assert not (tmp_path / "m.json").exists()


def test_manifest_rejects_other_task(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, n_cases=3)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "Anterior", "2": "Posterior"}
    (ds / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="labels"):
        write_msd_manifest(ds, tmp_path / "m.json")


def test_manifest_rejects_mismatched_label_shape(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, n_cases=3)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 5), np.uint8), AFFINE), ds / "labelsTr" / "prostate_02.nii.gz")
    with pytest.raises(DataError, match="prostate_02"):
        write_msd_manifest(ds, tmp_path / "m.json")


def test_repo_template_manifest() -> None:
    path = REPO / "data_manifests" / "msd_prostate.json"
    template = json.loads(path.read_text())
    assert template["labels"] == {"0": "background", "1": "PZ", "2": "TZ"}
    assert template["modality"] == {"0": "T2", "1": "ADC"}
    assert template["channel_names"] == template["modality"]
    assert template["source"]["md5"] == MSD_PROSTATE_MD5 == "35138f08b1efaef89d7424d2bcc928db"
    assert template["source"]["url"] == MSD_PROSTATE_URL
    assert template["source"]["archive"] == "Task05_Prostate.tar"
    assert "pipeline data fetch msd-prostate --root" in template["note"]
    for key in ("training", "validation", "test", "unlabeled"):
        assert template[key] == []
    assert template["spatial_dims"] == 3 and template["tensorImageSize"] == "4D"
    assert template["domain"] == "prostate_mri" and template["licence"]
    # the template has every top-level field the filled manifest has
    assert set(msd.manifest_template()) <= set(template)
