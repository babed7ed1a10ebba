"""Per-object measurements (:mod:`pipeline.instances.measure`) on hand-built shapes with known answers."""

from __future__ import annotations

import csv
import errno
import math
import os
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import regionprops_table

from pipeline.errors import DataError, PipelineError
from pipeline.instances import measure
from pipeline.instances.measure import (
    COLUMNS_2D,
    COLUMNS_3D,
    measure_instances,
    summary,
    write_instances_csv,
)

UM = 1e-3  # 1 µm in mm, the pipeline's unit


def ellipse(shape: tuple[int, int], centre: tuple[float, float], semi: tuple[float, float]) -> np.ndarray:
    """A filled ellipse with semi-axes ``semi`` (in voxels) along axes 0 and 1."""
    x, y = np.indices(shape, dtype=np.float64)
    return ((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 <= 1


def ellipsoid(shape: tuple[int, int, int], semi: tuple[float, float, float]) -> np.ndarray:
    """A filled ellipsoid with semi-axes ``semi`` (in voxels), centred in ``shape``."""
    grid = np.indices(shape, dtype=np.float64)
    return sum(((g - (s - 1) / 2) / r) ** 2 for g, s, r in zip(grid, shape, semi, strict=True)) <= 1


def test_rectangle_area_centroid_and_diameter_in_micrometres() -> None:
    labels = np.zeros((30, 40), np.uint16)
    labels[5:15, 10:30] = 3  # 10 x 20 pixels
    (row,) = measure_instances(labels, None, (0.5 * UM, 0.5 * UM))
    assert tuple(row) == COLUMNS_2D
    assert row["id"] == 3 and row["n_voxels"] == 200
    assert row["area_um2"] == pytest.approx(50.0)
    assert row["equivalent_diameter_um"] == pytest.approx(math.sqrt(4 * 50 / math.pi))
    assert (row["centroid_x_um"], row["centroid_y_um"]) == pytest.approx((9.5 * 0.5, 19.5 * 0.5))  # index × spacing
    assert math.isnan(row["mean_intensity"])
    assert row["touches_border"] is False


def test_disk_is_round_and_a_1_to_2_ellipse_has_eccentricity_sqrt3_over_2() -> None:
    disk = measure_instances(ellipse((64, 64), (32, 32), (20, 20)).astype(np.int32), None, (UM, UM))[0]
    assert disk["eccentricity"] == pytest.approx(0.0, abs=0.03)
    oval = measure_instances(ellipse((64, 100), (32, 50), (20, 40)).astype(np.int32), None, (UM, UM))[0]
    assert oval["eccentricity"] == pytest.approx(math.sqrt(3) / 2, abs=0.01)


def test_anisotropic_pixels_are_measured_in_physical_space() -> None:
    """A physical circle of radius 40 µm on 1 × 2 µm pixels is a 40 × 20 pixel ellipse: nearly round (the sampled
    shape itself is not quite: e ≈ 0.1, and e grows steeply from 0), and of area π 40²; with the spacing ignored it
    would be a 1:2 ellipse, e ≈ 0.87, of area π 800."""
    labels = ellipse((85, 45), (42, 22), (40, 20)).astype(np.int32)
    (row,) = measure_instances(labels, None, (1 * UM, 2 * UM))
    assert row["eccentricity"] < 0.15
    assert row["area_um2"] == pytest.approx(math.pi * 40**2, rel=0.01)
    assert (row["centroid_x_um"], row["centroid_y_um"]) == pytest.approx((42.0, 44.0))


def test_3d_box_with_anisotropic_spacing_volume_and_centroid() -> None:
    labels = np.zeros((10, 12, 8), np.uint32)
    labels[2:6, 3:9, 1:5] = 1  # 4 x 6 x 4 voxels of 0.5 x 0.5 x 2 µm
    (row,) = measure_instances(labels, None, (0.5 * UM, 0.5 * UM, 2 * UM))
    assert tuple(row) == COLUMNS_3D
    assert row["n_voxels"] == 96
    assert row["volume_um3"] == pytest.approx(96 * 0.5 * 0.5 * 2)  # 48; 96 if the spacing were ignored
    assert row["centroid_z_um"] == pytest.approx(2.5 * 2)  # voxel index 2.5
    assert (row["centroid_x_um"], row["centroid_y_um"]) == pytest.approx((3.5 * 0.5, 5.5 * 0.5))
    assert row["equivalent_diameter_um"] == pytest.approx((6 * 48 / math.pi) ** (1 / 3))


def test_3d_eccentricity_of_a_ball_on_anisotropic_voxels_and_of_a_spheroid() -> None:
    """A ball of radius 12 µm on 1 × 1 × 2 µm voxels is nearly round (e ≈ 0.16: 13 slices sample it coarsely; taken
    as 1 µm voxels, flattened 2:1, it would have e ≈ 0.87); a 1:2 prolate spheroid has sqrt(3)/2."""
    ball = ellipsoid((27, 27, 15), (12, 12, 6)).astype(np.int32)
    (row,) = measure_instances(ball, None, (UM, UM, 2 * UM))
    assert row["eccentricity"] < 0.25
    assert row["volume_um3"] == pytest.approx(4 / 3 * math.pi * 12**3, rel=0.02)
    assert row["centroid_z_um"] == pytest.approx(14.0)
    spheroid = ellipsoid((21, 21, 41), (9, 9, 18)).astype(np.int32)
    assert measure_instances(spheroid, None, (UM, UM, UM))[0]["eccentricity"] == pytest.approx(
        math.sqrt(3) / 2, abs=0.01)


def test_eccentricity_is_skimages_in_2d_and_from_its_axis_lengths_in_3d() -> None:
    rng = np.random.default_rng(0)
    blobs = np.zeros((40, 40), np.int32)
    for i, (x, y) in enumerate(rng.integers(5, 35, (6, 2)), start=1):
        blobs[x - rng.integers(1, 5): x + rng.integers(1, 5), y - rng.integers(1, 5): y + rng.integers(1, 5)] = i
    table = regionprops_table(blobs, properties=("label", "eccentricity"), spacing=(0.5, 2.0))
    rows = measure_instances(blobs, None, (0.5 * UM, 2 * UM))
    assert [r["id"] for r in rows] == table["label"].tolist()
    assert [r["eccentricity"] for r in rows] == pytest.approx(table["eccentricity"].tolist(), abs=1e-9)
    blob3 = ellipsoid((12, 14, 10), (5, 6, 3)).astype(np.int32)
    t3 = regionprops_table(blob3, properties=("axis_major_length", "axis_minor_length"), spacing=(0.3, 0.5, 1.0))
    (row,) = measure_instances(blob3, None, (0.3 * UM, 0.5 * UM, UM))
    expected = math.sqrt(1 - (t3["axis_minor_length"][0] / t3["axis_major_length"][0]) ** 2)
    assert row["eccentricity"] == pytest.approx(expected, abs=1e-9)


def test_mean_intensity_single_and_channels_last() -> None:
    labels = np.zeros((6, 6), np.int32)
    labels[1:3, 1:3] = 1
    labels[3:5, 2:5] = 2
    image = np.arange(36, dtype=np.float32).reshape(6, 6)
    rows = measure_instances(labels, image, (UM, UM))
    assert [r["mean_intensity"] for r in rows] == pytest.approx(
        [image[labels == 1].mean(), image[labels == 2].mean()])
    stack = np.stack([image, 100 + image], axis=-1)  # channels last: the first channel by default
    assert [r["mean_intensity"] for r in measure_instances(labels, stack, (UM, UM))] == pytest.approx(
        [r["mean_intensity"] for r in rows])
    second = measure_instances(labels, stack, (UM, UM), channel=1)
    assert [r["mean_intensity"] for r in second] == pytest.approx([100 + r["mean_intensity"] for r in rows])
    ones = measure_instances(labels, labels > 0, (UM, UM))  # a boolean image counts as 0/1
    assert [r["mean_intensity"] for r in ones] == [1.0, 1.0]


def test_border_flag_on_every_side_and_in_z() -> None:
    labels = np.zeros((10, 10), np.int32)
    labels[0, 4] = 1  # first x
    labels[9, 4] = 2  # last x
    labels[4, 0] = 3  # first y
    labels[4, 9] = 4  # last y
    labels[4:6, 4:6] = 5  # inside
    labels[1:9, 1] = 6  # long, but not touching
    flags = {r["id"]: r["touches_border"] for r in measure_instances(labels, None, (UM, UM))}
    assert flags == {1: True, 2: True, 3: True, 4: True, 5: False, 6: False}
    stack = np.zeros((6, 6, 4), np.int32)
    stack[2:4, 2:4, 3] = 1  # last slice
    stack[2:4, 2:4, 1:3] = 2
    assert [r["touches_border"] for r in measure_instances(stack, None, (UM, UM, UM))] == [True, False]


def test_ids_keep_their_values_gaps_and_large_uint32() -> None:
    labels = np.zeros((8, 8), np.uint32)
    labels[1:3, 1:3] = 4_000_000_000
    labels[5:7, 5:7] = 7
    labels[1, 6] = 2
    rows = measure_instances(labels, None, (UM, UM))
    assert [(r["id"], r["n_voxels"]) for r in rows] == [(2, 1), (7, 4), (4_000_000_000, 4)]
    assert rows[2]["centroid_x_um"] == pytest.approx(1.5)
    assert rows[0]["eccentricity"] == 0.0  # a single pixel
    gaps = np.where(labels == 4_000_000_000, 9, labels).astype(np.uint16)  # ids 2, 7, 9: relabelled densely
    assert [r["id"] for r in measure_instances(gaps, None, (UM, UM))] == [2, 7, 9]


def test_skimage_without_spacing_support_gives_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.zeros((10, 12, 8), np.int32)
    labels[2:6, 3:9, 1:5] = 1
    labels[7:9, 0:4, 4:8] = 2
    image = np.random.default_rng(1).random(labels.shape)
    spacing = (0.5 * UM, 0.7 * UM, 2 * UM)
    assert measure._spacing_supported()  # the installed skimage (0.26) scales area and centroid itself
    expected = measure_instances(labels, image, spacing)
    monkeypatch.setattr(measure, "_spacing_supported", lambda: False)
    got = measure_instances(labels, image, spacing)
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e)


def test_csv_has_the_documented_columns_and_reads_back(tmp_path: Path) -> None:
    labels = np.zeros((20, 20), np.int32)
    labels[0:4, 0:4] = 1
    labels[8:12, 5:15] = 2
    rows = measure_instances(labels, np.ones((20, 20)), (0.5 * UM, 0.5 * UM))
    target = write_instances_csv(rows, tmp_path / "sub" / "instances.csv")
    assert target == tmp_path / "sub" / "instances.csv"
    assert os.listdir(target.parent) == ["instances.csv"]  # no temporary left
    with open(target, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS_2D
        back = list(reader)
    assert [int(r["id"]) for r in back] == [1, 2]
    assert [float(r["area_um2"]) for r in back] == [4.0, 10.0]
    assert [r["touches_border"] for r in back] == ["True", "False"]
    assert float(back[1]["centroid_y_um"]) == rows[1]["centroid_y_um"]  # full precision
    no_image = write_instances_csv(measure_instances(labels, None, (UM, UM)), tmp_path / "n.csv")
    with open(no_image, newline="", encoding="utf-8") as f:
        assert all(math.isnan(float(r["mean_intensity"])) for r in csv.DictReader(f))


def test_csv_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "instances.csv"
    target.write_text("old\n")
    rows = measure_instances(np.ones((3, 3), np.int32), None, (UM, UM))

    def fail(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises((OSError, PipelineError)):
        write_instances_csv(rows, target)
    monkeypatch.undo()
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["instances.csv"]


def test_csv_refuses_rows_that_are_not_measurements(tmp_path: Path) -> None:
    rows = measure_instances(np.ones((3, 3), np.int32), None, (UM, UM))
    with pytest.raises(ValueError, match="keys"):
        write_instances_csv([{**rows[0], "extra": 1}], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="2D rows, but ndim=3"):
        write_instances_csv(rows, tmp_path / "x.csv", ndim=3)


def test_empty_map_gives_no_rows_a_header_only_csv_and_an_empty_summary(tmp_path: Path) -> None:
    assert measure_instances(np.zeros((5, 5), np.uint16), np.ones((5, 5)), (UM, UM)) == []
    assert measure_instances(np.zeros((0, 5), np.int32), None, (UM, UM)) == []
    flat = write_instances_csv([], tmp_path / "a.csv")
    assert flat.read_text().splitlines() == [",".join(COLUMNS_2D)]
    stack = write_instances_csv([], tmp_path / "b.csv", ndim=3)
    assert stack.read_text().splitlines() == [",".join(COLUMNS_3D)]
    stats = summary([], ndim=3)
    assert stats["instances_count"] == 0 and stats["instances_touching_border"] == 0
    assert math.isnan(stats["instances_volume_um3_mean"]) and math.isnan(stats["instances_mean_intensity_mean"])


def test_summary_leaves_border_objects_out_of_the_size_statistics() -> None:
    labels = np.zeros((20, 20), np.int32)
    labels[0:2, 0:2] = 1  # touches: 4 px
    labels[5:7, 5:8] = 2  # 6 px
    labels[10:14, 10:14] = 3  # 16 px
    labels[16:18, 2:6] = 4  # 8 px
    image = np.zeros((20, 20))
    image[labels == 2] = 1.0
    image[labels == 3] = 2.0
    image[labels == 4] = 6.0
    rows = measure_instances(labels, image, (UM, UM))
    assert summary(rows) == {
        "instances_count": 4.0,
        "instances_touching_border": 1.0,
        "instances_area_um2_mean": pytest.approx(10.0),
        "instances_area_um2_median": pytest.approx(8.0),
        "instances_mean_intensity_mean": pytest.approx(3.0),
    }
    everything = summary(rows, exclude_border=False)
    assert everything["instances_area_um2_mean"] == pytest.approx(34 / 4)
    assert everything["instances_area_um2_median"] == pytest.approx(7.0)


@pytest.mark.parametrize(("labels", "image", "spacing", "message"), [
    (np.zeros((4, 4), np.int32), np.zeros((4, 5)), (UM, UM), "does not match"),
    (np.zeros((4, 4, 3), np.int32), np.zeros((4, 4)), (UM, UM, UM), "does not match"),
    (np.zeros((4, 4), np.int32), np.zeros((4, 4, 2)), (UM, UM), None),  # channels last: fine
    (np.zeros((4, 4), np.int32), None, (UM, UM, UM), "3 value"),
    (np.zeros((4, 4, 4), np.int32), None, (UM, UM), "2 value"),
    (np.zeros((4, 4), np.int32), None, UM, "1 value"),
    (np.zeros((4, 4), np.int32), None, (UM, 0.0), "> 0"),
    (np.zeros((4, 4), np.int32), None, (UM, float("nan")), "> 0"),
    (np.zeros((4, 4), np.int32), None, ("a", "b"), "spacing"),
    (np.zeros((4, 4), np.float32), None, (UM, UM), "integer label map"),
    (np.zeros((4, 4), bool), None, (UM, UM), "label its connected components"),
    (np.zeros((2, 2, 2, 2), np.int32), None, (UM,) * 4, r"2D \(x, y\) or 3D"),
    (np.full((4, 4), -1, np.int32), None, (UM, UM), "negative ids"),
    (np.zeros((4, 4), np.int32), np.zeros((4, 4), complex), (UM, UM), "real numbers"),
])
def test_bad_input_is_a_one_line_data_error(labels: np.ndarray, image: np.ndarray | None, spacing: object,
                                            message: str | None) -> None:
    if message is None:
        assert measure_instances(labels, image, spacing) == []  # type: ignore[arg-type]
        return
    with pytest.raises(DataError, match=message) as info:
        measure_instances(labels, image, spacing)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_a_missing_channel_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no channel 2"):
        measure_instances(np.ones((4, 4), np.int32), np.zeros((4, 4, 2)), (UM, UM), channel=2)
