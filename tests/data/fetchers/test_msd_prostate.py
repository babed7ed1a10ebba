"""Tests for pipeline.data.fetchers.msd_prostate: fetching MSD Task05_Prostate and its manifest (no network)."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.data.fetchers import msd_prostate as msd
from pipeline.data.fetchers.msd_prostate import (
    MSD_PROSTATE_MD5,
    MSD_PROSTATE_URL,
    fetch_msd_prostate,
    write_msd_manifest,
)
from pipeline.data.splits import split_cases
from pipeline.errors import DataError
from tests.data.fetchers.helpers import AFFINE, ZOOMS, add_bytes, case_ids, make_dataset, make_tar, md5_of

REPO = Path(__file__).resolve().parents[3]


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
    assert sorted(seen) == case_ids(6)  # disjoint and covering every labelled case, no '._' junk
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
        add_bytes(tar, "Task04_Hippocampus/readme.txt", b"hi")
    with pytest.raises(DataError, match="Task05_Prostate"):
        fetch_msd_prostate(tmp_path / "root", archive=tar_path, md5=None, progress=False)


# --------------------------------------------------------------------------------------------------------------
# write_msd_manifest


def test_manifest_splits_32_cases_deterministic(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, n_cases=32, n_test=1, apple_double=False)
    a = write_msd_manifest(ds, tmp_path / "a" / "m.json", seed=0)
    b = write_msd_manifest(ds, tmp_path / "b" / "m.json", seed=0)
    c = write_msd_manifest(ds, tmp_path / "c" / "m.json", seed=1)
    # the importers' 70/10/20 split (pipeline.data.splits), formerly MSD's own 22/4/6
    assert (len(a["training"]), len(a["validation"]), len(a["test"])) == (23, 3, 6)
    ids = {k: [e["id"] for e in a[k]] for k in ("training", "validation", "test")}
    assert ids == {k: [e["id"] for e in b[k]] for k in ids}
    assert ids != {k: [e["id"] for e in c[k]] for k in ids}
    assert sorted(sum(ids.values(), [])) == case_ids(32)
    assert all(e["fold"] == -1 for e in a["test"])
    # folds round-robin over training only, as for every importer (formerly over training + validation)
    assert all(e["fold"] == -1 for e in a["validation"])
    assert sorted({e["fold"] for e in a["training"]}) == [0, 1, 2, 3, 4]
    # exactly the split (and folds) an importer would make of the same case ids
    shared = split_cases([{"id": i} for i in case_ids(32)], seed=0)
    assert {k: [(e["id"], e["fold"]) for e in a[k]] for k in ids} == {
        k: [(e["id"], e["fold"]) for e in shared[k]] for k in ids}
    # relative to the manifest's folder
    assert a["training"][0]["image"].startswith("../Task05_Prostate/imagesTr/")
    assert json.loads((tmp_path / "a" / "m.json").read_text()) == a


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
