"""Tiny MSD Task05_Prostate folders and archives in the real layout, and tar-building helpers (no network)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np

# A rotated affine with anisotropic zooms (0.6, 0.625, 3.6).
_ROT = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
ZOOMS = (0.6, 0.625, 3.6)
AFFINE = np.eye(4)
AFFINE[:3, :3] = _ROT @ np.diag(ZOOMS)
AFFINE[:3, 3] = [-12.5, 30.0, 7.25]


def case_ids(n: int) -> list[str]:
    return [f"prostate_{i:02d}" for i in range(n)]


def make_dataset(parent: Path, n_cases: int = 5, n_test: int = 2, apple_double: bool = True) -> Path:
    """Write a tiny Task05_Prostate folder in MSD's layout under ``parent``; return the folder."""
    ds = parent / "Task05_Prostate"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (ds / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    training = []
    for cid in case_ids(n_cases):
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


def all_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)
