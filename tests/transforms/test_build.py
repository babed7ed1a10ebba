"""The MONAI chains built from a workflow's ``preprocess`` section, pinned with known values.

Deterministic chain: orientation to RAS (an LPS scan's voxels are flipped and still sit at the same world point),
spacing (the asked grid; a linear ramp resampled bilinearly still equals the world coordinate, labels resampled
with nearest keep their values), intensity (z-score per channel, with ``nonzero``; percentiles), the foreground
crop with its margin, 2D as well as 3D. Random chain: probability 0 is the identity, probability 1 always applies,
labels stay integer-valued (nearest) under rotation and zoom, 2D rotates in-plane.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from pipeline.config.schema import PreprocessConfig
from pipeline.transforms import deterministic_transforms, random_transforms
from tests.utils import make_affine, write_nifti

LPS = make_affine((1.0, 2.0, 3.0), np.diag([-1.0, -1.0, 1.0]), origin=(10.0, 20.0, 30.0))


def cfg(**kwargs: Any) -> PreprocessConfig:
    kwargs.setdefault("patch", {"size": [4, 4, 4]})
    return PreprocessConfig(**kwargs)


def run_files(tmp_path: Path, image: np.ndarray, label: np.ndarray, affine: np.ndarray, spatial_dims: int = 3,
              **kwargs: Any) -> dict[str, Any]:
    """The deterministic chain as the preprocess stage runs it: from NIfTI files."""
    write_nifti(tmp_path / "image.nii.gz", image, affine)
    write_nifti(tmp_path / "label.nii.gz", label, affine)
    chain = mt.Compose(deterministic_transforms(cfg(**kwargs), spatial_dims=spatial_dims))
    return chain({"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")})


def run_arrays(image: np.ndarray, label: np.ndarray, affine: np.ndarray | None = None, **kwargs: Any) -> dict:
    """The deterministic chain as ``pipeline infer`` runs it: from channel-first arrays with their affine
    (copies: MONAI's intensity transforms may work in place)."""
    aff = torch.as_tensor(np.eye(4) if affine is None else affine)
    chain = mt.Compose(deterministic_transforms(cfg(**kwargs), load=False))
    return chain({"image": MetaTensor(torch.tensor(image, dtype=torch.float32), affine=aff),
                  "label": MetaTensor(torch.tensor(label), affine=aff.clone())})


def world(affine: Any, index: np.ndarray) -> np.ndarray:
    a = np.asarray(affine, dtype=float)
    return index @ a[:3, :3].T + a[:3, 3]


# --------------------------------------------------------------------------------------------------- orientation
def test_orientation_to_ras_flips_an_lps_scan_and_keeps_every_voxel_in_place(tmp_path: Path) -> None:
    image = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
    label = (np.arange(24).reshape(4, 3, 2) % 3).astype(np.uint8)
    d = run_files(tmp_path, image, label, LPS, intensity={"mode": "none"})
    assert d["image"].shape == (1, 4, 3, 2)
    assert np.array_equal(d["image"][0].numpy(), image[::-1, ::-1, :])
    assert np.array_equal(d["label"][0].numpy(), label[::-1, ::-1, :])
    out = d["image"].affine.numpy()
    assert np.allclose(out[:3, :3], np.diag([1.0, 2.0, 3.0]))  # RAS: positive diagonal, same spacing
    assert np.allclose(out[:3, 3], [10.0 - 3, 20.0 - 2 * 2, 30.0])  # the old far corner is the new origin
    idx = np.array([[1, 2, 1], [3, 0, 0]])
    flipped = np.array([[4 - 1 - 1, 3 - 1 - 2, 1], [0, 2, 0]])
    assert np.allclose(world(out, idx), world(LPS, flipped))


def test_orientation_of_a_2d_scan_uses_the_first_two_codes(tmp_path: Path) -> None:
    image = np.arange(12, dtype=np.float32).reshape(4, 3)
    d = run_files(tmp_path, image, (image > 5).astype(np.uint8), LPS, spatial_dims=2, intensity={"mode": "none"})
    assert d["image"].shape == (1, 4, 3)
    assert np.array_equal(d["image"][0].numpy(), image[::-1, ::-1])
    assert np.array_equal(d["label"][0].numpy(), (image > 5)[::-1, ::-1])


def test_orientation_lps_keeps_an_lps_scan(tmp_path: Path) -> None:
    image = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    d = run_files(tmp_path, image, np.zeros((4, 3, 2), np.uint8), LPS, orientation="LPS", intensity={"mode": "none"})
    assert np.array_equal(d["image"][0].numpy(), image)
    assert np.allclose(d["image"].affine.numpy(), LPS)


# ------------------------------------------------------------------------------------------------------- spacing
def test_spacing_resamples_to_the_asked_grid(tmp_path: Path) -> None:
    """x (mm) as the image on a 1 mm grid: at 2 x 0.5 x 1 mm the image is still x (bilinear is exact on a
    ramp); a label resampled with nearest keeps its values 0 and 2 (bilinear would make 1s at the edge)."""
    x = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None, None], (8, 8, 8)).copy()
    y = np.broadcast_to(np.arange(8, dtype=np.float32)[None, :, None], (8, 8, 8)).copy()
    label = ((y > 3) * 2).astype(np.uint8)
    d = run_files(tmp_path, x + 10 * y, label, make_affine(), spacing=[2.0, 0.5, 1.0], intensity={"mode": "none"})
    out = d["image"].affine.numpy()
    assert np.allclose(out[:3, :3], np.diag([2.0, 0.5, 1.0])) and np.allclose(out[:3, 3], 0)
    assert d["image"].shape == (1, 4, 15, 8)
    xs, ys = np.arange(4) * 2.0, np.arange(15) * 0.5
    expected = xs[:, None, None] + 10 * ys[None, :, None] + np.zeros((1, 1, 8))
    assert np.allclose(d["image"][0].numpy(), expected, atol=1e-4)
    lab = d["label"][0].numpy()
    assert d["label"].dtype == torch.uint8 and set(np.unique(lab)) == {0, 2}
    nearest = (np.round(ys) > 3) * 2  # the label of the closest source voxel (ties at .5 mm are either)
    clear = np.abs(ys - np.floor(ys) - 0.5) > 0.1
    assert np.array_equal(lab[:, clear], np.broadcast_to(nearest[clear][None, :, None], lab[:, clear].shape))


def test_spacing_of_a_2d_scan(tmp_path: Path) -> None:
    image = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None], (8, 6)).copy()
    d = run_files(tmp_path, image, (image > 2).astype(np.uint8), make_affine(), spatial_dims=2, spacing=[2.0, 1.0],
                  intensity={"mode": "none"})
    assert d["image"].shape == (1, 4, 6)
    assert np.allclose(d["image"][0].numpy(), np.array([0.0, 2.0, 4.0, 6.0])[:, None] + np.zeros(6))
    assert np.allclose(d["image"].affine.numpy()[:2, :2], np.diag([2.0, 1.0]))


# ----------------------------------------------------------------------------------------------------- intensity
def two_channels() -> np.ndarray:
    a = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    return np.stack([a, 100 + 5 * a])  # channels of different units


def test_zscore_is_per_channel() -> None:
    d = run_arrays(two_channels(), np.zeros((1, 3, 4, 5), np.uint8), intensity={"mode": "zscore"})
    img = d["image"].numpy()
    for c, raw in enumerate(two_channels()):
        assert np.allclose(img[c], (raw - raw.mean()) / raw.std(), atol=1e-5)


def test_zscore_nonzero_leaves_the_background_at_zero() -> None:
    image = np.zeros((1, 6, 6, 6), np.float32)
    image[0, 1:4, 1:4, 1:4] = np.arange(27).reshape(3, 3, 3) + 1.0
    d = run_arrays(image, np.zeros((1, 6, 6, 6), np.uint8), intensity={"mode": "zscore", "nonzero": True})
    out, inside = d["image"][0].numpy(), image[0] > 0
    assert np.all(out[~inside] == 0)
    fg = image[0][inside]
    assert np.allclose(out[inside], (fg - fg.mean()) / fg.std(), atol=1e-5)


def test_percentile_scales_each_channel_to_0_1_and_clips() -> None:
    d = run_arrays(two_channels(), np.zeros((1, 3, 4, 5), np.uint8),
                   intensity={"mode": "percentile", "lower": 10, "upper": 90})
    for c, raw in enumerate(two_channels()):
        lo, hi = np.percentile(raw, [10, 90])
        assert np.allclose(d["image"][c].numpy(), np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_intensity_none_keeps_values_and_labels_are_never_normalised() -> None:
    label = (np.arange(60).reshape(1, 3, 4, 5) % 3).astype(np.uint8)
    none = run_arrays(two_channels(), label, intensity={"mode": "none"})
    assert np.array_equal(none["image"].numpy(), two_channels())
    for mode in ("none", "zscore", "percentile"):
        d = run_arrays(two_channels(), label, intensity={"mode": mode})
        assert d["label"].dtype == torch.uint8 and np.array_equal(d["label"].numpy(), label), mode


# -------------------------------------------------------------------------------------------------- foreground
def head(shape=(20, 18, 16)) -> tuple[np.ndarray, np.ndarray]:
    """Air 0, a dim tissue box (10) with a small bright core (100), the label covering most of the tissue."""
    image = np.zeros((1, *shape), np.float32)
    image[0, 3:15, 4:14, 2:12] = 10.0
    image[0, 8:10, 8:10, 6:8] = 100.0
    label = np.zeros_like(image, dtype=np.uint8)
    label[0, 4:14, 5:13, 3:11] = 1
    return image, label


@pytest.mark.parametrize(("margin", "start", "size"), [(0, (3, 4, 2), (12, 10, 10)), (2, (1, 2, 0), (16, 14, 14)),
                                                       (5, (0, 0, 0), (20, 18, 16))])
def test_crop_foreground_keeps_the_box_plus_margin(margin: int, start: tuple, size: tuple) -> None:
    """The box of the non-zero voxels grown by ``crop_margin`` (clipped at the image), image and label alike; the
    affine moves the origin to the box's first voxel."""
    image, label = head()
    aff = make_affine((0.5, 1.0, 2.0), origin=(-5.0, 3.0, 7.0))
    d = run_arrays(image, label, aff, intensity={"mode": "none"}, crop_foreground=True, crop_margin=margin)
    window = tuple(slice(s, s + n) for s, n in zip(start, size))
    assert tuple(d["image"].shape[1:]) == size == tuple(d["label"].shape[1:])
    assert np.array_equal(d["image"][0].numpy(), image[0][window])
    assert np.array_equal(d["label"][0].numpy(), label[0][window])
    assert np.allclose(d["image"].affine.numpy()[:3, 3], world(aff, np.array(start, dtype=float)))


@pytest.mark.parametrize("intensity", [{"mode": "zscore"}, {"mode": "zscore", "nonzero": True},
                                       {"mode": "percentile"}, {"mode": "none"}])
def test_crop_foreground_never_cuts_labelled_tissue(intensity: dict) -> None:
    """The foreground is the scan's non-zero region whatever the normalisation: after a z-score over the
    non-zero voxels, dim tissue is negative, and a crop taken after it would keep only the bright core."""
    image, label = head()
    d = run_arrays(image, label, intensity=intensity, crop_foreground=True, crop_margin=0)
    assert tuple(d["image"].shape[1:]) == (12, 10, 10)
    assert int(d["label"].sum()) == int(label.sum())


# ----------------------------------------------------------------------------------------------- random chain
RNG = np.random.default_rng(0)
IMAGE3 = RNG.normal(size=(1, 8, 8, 4)).astype(np.float32)
LABEL3 = RNG.integers(0, 3, (1, 8, 8, 4)).astype(np.uint8)
RANDOM_KINDS = (mt.RandRotated, mt.RandZoomd, mt.RandFlipd, mt.RandScaleIntensityd, mt.RandShiftIntensityd)


def sample(augment: dict, image: np.ndarray = IMAGE3, label: np.ndarray = LABEL3, seed: int = 0,
           size: tuple[int, ...] | None = None) -> tuple[mt.Compose, dict]:
    """One patch of the whole image (patch size = image size unless given) through the random chain."""
    dims = image.ndim - 1
    pp = PreprocessConfig(patch={"size": list(size or image.shape[1:]), "num_samples": 1}, augment=augment)
    chain = mt.Compose(random_transforms(pp, dims))
    chain.set_random_state(seed)
    out = chain({"image": MetaTensor(torch.tensor(image)), "label": MetaTensor(torch.tensor(label))})
    assert isinstance(out, list) and len(out) == 1
    return chain, out[0]


ALL_ON = {"flip_axes": [0, 1, 2], "rotate_deg": [20.0, 20.0, 20.0], "scale_limits": [0.7, 1.3],
          "intensity_shift": 0.5, "intensity_scale": 0.5}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probability_zero_is_the_identity(seed: int) -> None:
    chain, d = sample({**ALL_ON, "flip_prob": 0.0, "rotate_prob": 0.0, "scale_prob": 0.0, "intensity_prob": 0.0},
                      seed=seed)
    assert not [t for t in chain.transforms if isinstance(t, RANDOM_KINDS)]
    assert torch.equal(d["image"], torch.tensor(IMAGE3)) and torch.equal(d["label"], torch.tensor(LABEL3).float())
    assert not isinstance(d["image"], MetaTensor)  # plain tensors to the network


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flip_probability_one_always_flips_image_and_label_together(axis: int) -> None:
    for seed in range(3):
        _, d = sample({"flip_prob": 1.0, "flip_axes": [axis]}, seed=seed)
        assert torch.equal(d["image"], torch.tensor(IMAGE3).flip(axis + 1))
        assert torch.equal(d["label"], torch.tensor(LABEL3).float().flip(axis + 1))


def test_every_probability_reaches_its_transform() -> None:
    chain, _ = sample({**ALL_ON, "flip_prob": 0.3, "rotate_prob": 0.4, "scale_prob": 0.5, "intensity_prob": 0.6})
    probs = {type(t): t.prob for t in chain.transforms if isinstance(t, RANDOM_KINDS)}
    assert probs == {mt.RandRotated: 0.4, mt.RandZoomd: 0.5, mt.RandFlipd: 0.3, mt.RandScaleIntensityd: 0.6,
                     mt.RandShiftIntensityd: 0.6}
    assert len([t for t in chain.transforms if isinstance(t, mt.RandFlipd)]) == 3  # one per flip axis


@pytest.mark.parametrize("seed", [0, 1])
def test_rotation_and_zoom_keep_the_label_integer(seed: int) -> None:
    """Nearest for the label (its values stay a subset of {0, 1, 2}), interpolation for the image."""
    _, d = sample({**ALL_ON, "rotate_prob": 1.0, "scale_prob": 1.0}, seed=seed)
    assert set(torch.unique(d["label"]).tolist()) <= {0.0, 1.0, 2.0}
    assert not torch.equal(d["image"], torch.tensor(IMAGE3))
    assert len(set(d["image"].flatten().tolist()) - set(IMAGE3.flatten().tolist())) > 10  # interpolated values


def test_3d_rotation_about_z_turns_each_slice_in_plane() -> None:
    """``rotate_deg: [0, 0, a]`` rotates in the x-y plane: an image constant along z stays constant along z."""
    base = np.repeat(RNG.normal(size=(1, 10, 10, 1)).astype(np.float32), 6, axis=3)
    label = (base > 0.5).astype(np.uint8)
    _, about_z = sample({"rotate_prob": 1.0, "rotate_deg": [0.0, 0.0, 30.0]}, base, label)
    assert (about_z["image"] - about_z["image"][..., :1]).abs().max() < 1e-5
    assert (about_z["image"] - torch.tensor(base)).abs().max() > 0.5
    _, about_x = sample({"rotate_prob": 1.0, "rotate_deg": [30.0, 0.0, 0.0]}, base, label)
    assert (about_x["image"] - about_x["image"][..., :1]).abs().max() > 0.5


def test_2d_rotation_is_in_plane_by_the_z_entry() -> None:
    image, label = IMAGE3[..., 0], LABEL3[..., 0]
    _, still = sample({"rotate_prob": 1.0, "rotate_deg": [30.0, 30.0, 0.0]}, image, label)
    assert torch.allclose(still["image"], torch.tensor(image), atol=1e-6)
    _, turned = sample({"rotate_prob": 1.0, "rotate_deg": [0.0, 0.0, 30.0]}, image, label)
    assert (turned["image"] - torch.tensor(image)).abs().max() > 0.5
    assert set(torch.unique(turned["label"]).tolist()) <= {0.0, 1.0, 2.0}


def test_2d_zoom_and_flip() -> None:
    image, label = IMAGE3[..., 0], LABEL3[..., 0]
    _, zoomed = sample({"scale_prob": 1.0, "scale_limits": [1.5, 1.5]}, image, label)
    assert zoomed["image"].shape == (1, 8, 8) and set(torch.unique(zoomed["label"]).tolist()) <= {0.0, 1.0, 2.0}
    assert not torch.equal(zoomed["image"], torch.tensor(image))
    _, flipped = sample({"flip_prob": 1.0, "flip_axes": [1]}, image, label)
    assert torch.equal(flipped["image"], torch.tensor(image).flip(2))


def test_intensity_augmentation_scales_the_image_only() -> None:
    _, d = sample({"intensity_prob": 1.0, "intensity_scale": 0.5, "intensity_shift": 0.0})
    ratio = d["image"] / torch.tensor(IMAGE3)
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), atol=1e-4)  # one factor for the image
    assert 0.5 <= ratio.flatten()[0].item() <= 1.5 and abs(ratio.flatten()[0].item() - 1) > 1e-3
    assert torch.equal(d["label"], torch.tensor(LABEL3).float())


def test_patches_have_the_patch_size_and_small_images_are_padded() -> None:
    pp = PreprocessConfig(patch={"size": [6, 6, 6], "num_samples": 3})
    out = mt.Compose(random_transforms(pp, 3))({"image": MetaTensor(torch.tensor(IMAGE3)),
                                                "label": MetaTensor(torch.tensor(LABEL3))})
    assert len(out) == 3
    assert all(tuple(d["image"].shape) == (1, 6, 6, 6) == tuple(d["label"].shape) for d in out)
