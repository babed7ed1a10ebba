"""Fixture factories: tiny NIfTI volumes with non-trivial affines, tiny manifests and workflows."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=float)
    a /= np.linalg.norm(a)
    t = math.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def make_affine(spacing=(1.0, 1.0, 1.0), direction: np.ndarray | None = None, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    aff = np.eye(4)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    aff[:3, :3] = d @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


AFFINES = {
    "ras": make_affine((1.0, 1.0, 1.0), origin=(-10.0, 5.0, 3.0)),
    "lps": make_affine((0.9, 0.9, 2.5), np.diag([-1.0, -1.0, 1.0]), origin=(40.0, 30.0, -12.0)),
    "oblique": make_affine((1.1, 0.8, 2.0), rotation((1, 2, 3), 17.0), origin=(7.0, -3.0, 11.0)),
    "anisotropic": make_affine((0.6, 0.6, 3.6), np.diag([-1.0, 1.0, 1.0]) @ rotation((0, 0, 1), 5.0),
                               origin=(-20.0, 10.0, 0.0)),
}


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, qform: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine if qform is None else qform, code=1)
    nib.save(img, str(path))
    return path


def blob_case(shape=(24, 20, 12), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image with two bright nested blobs and its labels (1 outer shell, 2 inner core)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    c = rng.uniform(-0.15, 0.15, 3)
    r = np.sqrt(((x - c[0]) / 0.6) ** 2 + ((y - c[1]) / 0.5) ** 2 + ((z - c[2]) / 0.7) ** 2)
    label = np.zeros(shape, np.uint8)
    label[r < 1.0] = 1
    label[r < 0.5] = 2
    image = (label * 100.0 + rng.normal(0, 10, shape)).astype(np.float32)
    return image, label


def write_manifest(path: Path, cases: dict[str, list[str]], labels=None, channels=("T2",), **extra: Any) -> Path:
    doc = {
        "name": "tiny",
        "labels": labels or {"0": "background", "1": "outer", "2": "inner"},
        "modality": {str(i): c for i, c in enumerate(channels)},
        **extra,
    }
    for split, ids in cases.items():
        doc[split] = [{"id": i, "image": f"imagesTr/{i}.nii.gz", "label": f"labelsTr/{i}.nii.gz"} for i in ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    return path


def blob_dataset(root: Path, n_train=2, n_val=1, n_test=1, affine_keys=("ras", "lps", "oblique")) -> Path:
    """A tiny labelled dataset of blob cases with varied affines; returns the manifest path."""
    ids = [f"case{i}" for i in range(n_train + n_val + n_test)]
    for i, cid in enumerate(ids):
        image, label = blob_case(seed=i)
        aff = AFFINES[affine_keys[i % len(affine_keys)]]
        write_nifti(root / "imagesTr" / f"{cid}.nii.gz", image, aff)
        write_nifti(root / "labelsTr" / f"{cid}.nii.gz", label, aff)
    return write_manifest(root / "dataset.json", {
        "training": ids[:n_train], "validation": ids[n_train:n_train + n_val], "test": ids[n_train + n_val:]})


def tiny_workflow(path: Path, manifest: Path, **overrides: Any) -> Path:
    """A workflow that runs in seconds on :func:`blob_dataset` (tracking off unless overridden)."""
    doc: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "data": {"manifest": str(manifest)},
        "preprocess": {"orientation": "RAS", "spacing": [1.5, 1.5, 2.0], "intensity": {"mode": "zscore"},
                       "patch": {"size": [16, 16, 8], "num_samples": 2}},
        "model": {"name": "vnet", "base_channels": 4, "levels": 2, "kernel_size": 3, "convs_per_level": [1, 1]},
        "train": {"epochs": 2, "iterations_per_epoch": 2, "batch_size": 1, "val_every": 1, "progress": False,
                  "loss": {"name": "dice_ce"}, "validation": {"overlap": 0.25}},  # patch-sized windows
        "infer": {"roi_size": [16, 16, 8], "overlap": 0.25},
        "tracking": {"enabled": False},
    }
    for key, value in overrides.items():
        node = doc
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path.write_text(yaml.safe_dump(doc))
    return path


def blob_dataset_2d(root: Path, n_train=3, n_val=1, n_test=2) -> Path:
    """A tiny 2D dataset (64x56 images, nested blobs, in-plane rotated or flipped affines)."""
    ids = [f"img{i}" for i in range(n_train + n_val + n_test)]
    affines = [make_affine((0.5, 0.5, 1.0), rotation((0, 0, 1), 20.0), origin=(3.0, -2.0, 0.0)),
               make_affine((0.4, 0.6, 1.0), np.diag([-1.0, -1.0, 1.0]), origin=(30.0, 20.0, 0.0))]
    for i, cid in enumerate(ids):
        image, label = blob_case(shape=(64, 56, 3), seed=i)  # the middle slice cuts through the blobs
        write_nifti(root / "imagesTr" / f"{cid}.nii.gz", image[..., 1], affines[i % 2])
        write_nifti(root / "labelsTr" / f"{cid}.nii.gz", label[..., 1], affines[i % 2])
    return write_manifest(root / "dataset.json", {
        "training": ids[:n_train], "validation": ids[n_train:n_train + n_val], "test": ids[n_train + n_val:]},
        spatial_dims=2)


def itk_image(array_xyz: np.ndarray, direction, origin, spacing) -> sitk.Image:
    """An ITK image of an array indexed (x, y, z), with the given geometry (ITK/LPS conventions)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.T))
    image.SetDirection(np.asarray(direction, dtype=float).ravel().tolist())
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    return image


def write_dicom_series(folder: Path, data: np.ndarray, direction, origin,
                       spacing, series_uid: str = "1.2.826.0.1.3680043.2.1125.1.42",
                       skip: tuple[int, ...] = ()) -> sitk.Image:
    """One file per slice (no .dcm extension), like SimpleITK's DicomSeriesFromArray example."""
    folder.mkdir(parents=True, exist_ok=True)
    volume_image = itk_image(data.astype(np.int16), direction=direction, origin=origin, spacing=spacing)
    d = volume_image.GetDirection()
    tags = {
        "0008|0060": "MR",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.1.7",
        "0020|000e": series_uid,
        "0020|0037": "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
        "0018|0050": f"{spacing[2]:.6f}",
        "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",  # row spacing (y), column spacing (x)
    }
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # no file extension to pick it by
    writer.KeepOriginalImageUIDOn()
    for k in range(data.shape[2]):
        if k in skip:
            continue
        slice_image = volume_image[:, :, k]
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        position = volume_image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_image.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in position))
        slice_image.SetMetaData("0020|0013", str(k + 1))
        slice_image.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"IM{series_uid.rsplit('.', 1)[-1]}_{k:04d}"))
        writer.Execute(slice_image)
    return volume_image


class Threshold(nn.Module):
    """Class 1 wherever the intensity is above 51: a network whose answer is known at every voxel, so bundles of it
    need no training. The one parameter makes the weights file real. Tests register it under a name of their own
    (``monkeypatch.setitem(MODELS._items, NAME, Threshold)``)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.level = nn.Parameter(torch.tensor(51.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.level - x, x - self.level], dim=1)


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, options: str, what: str = "a tmpfs") -> Iterator[Path]:
    """``folder`` with a tmpfs mounted on it (``mount -o OPTIONS``, needs root or CAP_SYS_ADMIN), unmounted after;
    the test is skipped, saying why, where mounting is not permitted."""
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=False,
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount {what} here ({exc})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount {what} here ({done.stderr.decode(errors='replace').strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True, timeout=10)
