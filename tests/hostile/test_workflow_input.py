"""Workflow files (issue 13, items 2 and 3): YAML that expands without bound, values without a physical meaning,
names that escape ``runs/``, broken manifests and odd ``--set`` assignments are refused by ``pipeline validate``
(and so by ``pipeline run``, which loads the workflow the same way) in one message that names the dotted key, the
rule and the value, in well under a second, without allocating what the input asks for.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.hostile.harness import refused
from tests.utils import tiny_workflow, write_manifest

FAST = 0.5  # seconds: the YAML limits refuse while parsing


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    """Import what a command imports lazily (the CLI's parser, the tracking helpers, the model registry, PyTorch's
    meta device) once, as a user's command pays it once: the refusals' clock then measures the refusal."""
    import contextlib
    import io

    from pipeline.cli import main
    from pipeline.models.shapes import build_on_meta

    build_on_meta("fcn8s", {}, 1, 2, spatial_dims=2)  # PyTorch's meta decompositions import torch._dynamo once
    with contextlib.redirect_stderr(io.StringIO()):
        main(["validate", "/nonexistent/workflow.yaml"])


def _manifest(tmp_path: Path, **extra: Any) -> Path:
    """A manifest (no images: ``validate`` reads only the JSON) with labels 0 background, 1 outer, 2 inner."""
    return write_manifest(tmp_path / "data" / "dataset.json", {"training": ["a"], "validation": ["b"], "test": ["c"]},
                          **extra)


def _workflow(tmp_path: Path, **overrides: Any) -> Path:
    return tiny_workflow(tmp_path / "wf.yaml", _manifest(tmp_path), **overrides)


def _validate(path: Path, *sets: str) -> list[str]:
    return ["validate", str(path), *[a for s in sets for a in ("--set", s)]]


BOMB_LISTS = "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
BOMB_LISTS = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + BOMB_LISTS
BOMB_DICTS = "a: &a {k1: lol, k2: lol, k3: lol, k4: lol, k5: lol, k6: lol, k7: lol, k8: lol, k9: lol}\n" + "".join(
    f"{b}: &{b} {{{', '.join(f'k{i}: *{a}' for i in range(1, 10))}}}\n" for a, b in zip("abcdefgh", "bcdefghi",
                                                                                     strict=True))
BOMB_MERGE = "a: &a {k: lol}\n" + "".join(
    f"{b}: &{b} {{<<: *{a}, {', '.join(f'k{i}: *{a}' for i in range(1, 10))}}}\n"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize("where", ["workflow-lists", "workflow-dicts", "workflow-merge-keys", "preset", "--set"])
def test_yaml_alias_bomb(tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    """1.4 KB of nested YAML aliases ("billion laughs", in a workflow, a preset or --set) → refused while parsing."""
    rule = "more than 10000 values once its aliases"
    if where.startswith("workflow"):
        bomb = {"workflow-lists": BOMB_LISTS, "workflow-dicts": BOMB_DICTS, "workflow-merge-keys": BOMB_MERGE}[where]
        assert len(bomb) < 1500
        path = tmp_path / "bomb.yaml"
        path.write_text(bomb)
        result = refused(_validate(path), capsys, names=[str(path), rule, "line "], seconds=FAST)
    elif where == "preset":
        (tmp_path / "bomb.yaml").write_text(BOMB_LISTS)
        path = _workflow(tmp_path, preprocess={"preset": "bomb.yaml"})
        result = refused(_validate(path), capsys, names=["preprocess.preset", rule], seconds=FAST)
    else:
        path = _workflow(tmp_path)
        value = "[" + ", ".join(f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" if i else "&a0 [lol, lol, lol, lol]"
                                for i in range(9)) + "]"
        result = refused(_validate(path, f"model.channels={value}"), capsys, names=["model.channels", rule],
                         seconds=FAST)
    assert len(result.message) < 2000, "the refusal printed the expanded value"


def test_yaml_recursive_alias(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An alias inside the node it names (`a: &a [*a]`, infinitely deep) → refused with its line, not a hang."""
    path = _workflow(tmp_path)
    path.write_text(path.read_text() + "extra: &loop [1, *loop]\n")
    refused(_validate(path), capsys, names=[str(path), "*loop is inside the node it names", "line 45"], seconds=FAST)
    refused(_validate(_workflow(tmp_path), "model.x=&a [*a]"), capsys, names=["model.x", "inside the node it names"],
            seconds=FAST)


@pytest.mark.parametrize("text", ["x: " + "[" * 20_000 + "]" * 20_000, "x:\n" + "".join(
    " " * (2 * i) + f"k{i}:\n" for i in range(1, 200)) + " " * 400 + "v: 1\n", "x:\n" + "".join(
    " " * i + "-\n" for i in range(1, 300)) + " " * 300 + "- 1\n"], ids=["flow", "block-mappings", "block-lists"])
def test_yaml_deeply_nested(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    """YAML nested thousands of levels deep (flow or block) → "nest more than 32 levels", no RecursionError."""
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    refused(_validate(path), capsys, names=[str(path), "nest more than 32 levels"], seconds=FAST)


@pytest.mark.parametrize("what", ["comments", "device", "fifo", "preset-device"])
def test_yaml_file_too_large(tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str) -> None:
    """A 2 MB workflow, /dev/zero or a fifo as the workflow, /dev/zero as a preset → refused by size or kind before
    reading (no hang, no endless read)."""
    if what == "comments":
        path = _workflow(tmp_path)
        path.write_text(path.read_text() + ("# " + "x" * 1000 + "\n") * 2000)
        refused(_validate(path), capsys, names=[str(path), "larger than 1024 KiB"], seconds=FAST)
    elif what == "device":
        refused(_validate(Path("/dev/zero")), capsys, names=["/dev/zero", "not a regular file"], seconds=FAST)
    elif what == "fifo":
        fifo = tmp_path / "wf.yaml"
        os.mkfifo(fifo)
        refused(_validate(fifo), capsys, names=[str(fifo), "not a regular file"], seconds=FAST)
    else:
        path = _workflow(tmp_path, preprocess={"preset": "/dev/zero"})
        refused(_validate(path), capsys, names=["preprocess.preset", "/dev/zero", "not a regular file"])


@pytest.mark.parametrize(("text", "names"), [
    ("description: 2001-02-30\n", ["line 1, column 14", "timestamp value '2001-02-30'", "day is out of range"]),
    ("seed: !!int seven\n", ["line 1, column 7", "int value 'seven' cannot be read"]),
    ("tracking: {enabled: !!bool maybe}\n", ["line 1, column 21", "bool value 'maybe' cannot be read"]),
    ("seed: !!timestamp x\n", ["line 1, column 7", "timestamp value 'x' cannot be read"]),
], ids=["impossible-date", "int-tag", "bool-tag", "timestamp-tag"])
def test_yaml_value_its_tag_cannot_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                        names: list[str]) -> None:
    """`2001-02-30`, `!!int seven`, `!!bool maybe` (a ValueError or KeyError inside PyYAML) → "malformed YAML at
    line L, column C: the <tag> value ... cannot be read"."""
    path = _workflow(tmp_path)
    path.write_text(text + path.read_text().replace("seed: 0\n", "").replace("description:", "#"))
    refused(_validate(path), capsys, names=[str(path), "malformed YAML", *names])


@pytest.mark.parametrize("case", ["long-string", "long-key", "long-model-name", "many-problems"])
def test_huge_values_are_not_echoed(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    """A 100 kB string where a number belongs, a 100 kB key or model name, 5000 wrong list items → a short message."""
    big = "x" * 100_000
    overrides: dict[str, Any] = {
        "long-string": {"train.epochs": big},
        "long-key": {f"train.{big}": 1},
        "long-model-name": {"model": {"name": big}},
        "many-problems": {"preprocess.augment.flip_axes": ["a"] * 5000},
    }[case]
    names = {"long-string": ["train.epochs", "valid integer", "xxx..."],
             "long-key": ["train.", "unknown key"],
             "long-model-name": ["model.name", "unknown model"],
             "many-problems": ["preprocess.augment.flip_axes.0", "valid integer", "more problem(s) not listed"]}[case]
    result = refused(_validate(_workflow(tmp_path, **overrides)), capsys, names=names)
    assert len(result.message) < 4000, f"{len(result.message)} characters printed"


@pytest.mark.parametrize(("model", "count"), [
    ({"name": "unet", "channels": [100_000, 200_000], "strides": [2]}, "parameters"),
    ({"name": "vnet", "base_channels": 100_000, "levels": 2, "kernel_size": 3, "convs_per_level": [1, 1]},
     "parameters"),
    ({"name": "deeplabv3plus", "width": 100_000}, "parameters"),
])
def test_model_too_large_to_allocate(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: dict[str, Any],
                                     count: str) -> None:
    """model.channels / base_channels / width 100000 (a 19 GB model or far more) → refused by parameter count,
    built on the meta device: nothing is allocated."""
    dims = 2 if model["name"] != "vnet" else 3
    size = [16] * dims
    path = tiny_workflow(tmp_path / "wf.yaml", _manifest(tmp_path, spatial_dims=dims), model=model,
                         **{"preprocess.patch.size": size, "infer.roi_size": size, "preprocess.spacing": None})
    rss = psutil.Process().memory_info().rss
    refused(_validate(path), capsys, names=["model:", f"'{model['name']}'", "more than 2,000,000,000", count],
            max_bytes=256 << 20)
    assert psutil.Process().memory_info().rss - rss < 256 << 20, "PyTorch allocated the model's weights"


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "../../outside", "x" * 200, "name with space"],
                         ids=["dotdot", "dot", "hidden", "slash", "escape", "200-chars", "space"])
def test_workflow_name_escapes_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`name: ".."` (or `.`, a leading dot, a separator) → refused by `pipeline run`; nothing written next to runs/."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = _workflow(tmp_path, name=name)
    refused(["run", str(path)], capsys, names=["name:", "plain folder name", "not starting with '.'"],
            untouched=[tmp_path])
    assert not (work / "runs").exists()


@pytest.mark.parametrize("spacing", [[-1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [float("nan"), 1.0, 1.0],
                                     [float("inf"), 1.0, 1.0]])
def test_spacing_not_positive_or_not_finite(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            spacing: list[float]) -> None:
    """`preprocess.spacing: [-1, 0, 1]` (or NaN, inf) → "preprocess.spacing.0: greater than 0" / "finite number"."""
    bad = next(i for i, s in enumerate(spacing) if not (math.isfinite(s) and s > 0))
    rule = "greater than 0" if math.isfinite(spacing[bad]) else "finite number"
    refused(_validate(_workflow(tmp_path, **{"preprocess.spacing": spacing})), capsys,
            names=[f"preprocess.spacing.{bad}", rule])


@pytest.mark.parametrize(("key", "size", "names"), [
    ("infer.roi_size", [0, 0, 0], ["infer.roi_size.0", "greater than or equal to 1", "got 0"]),
    ("infer.roi_size", [-16, 16, 8], ["infer.roi_size.0", "greater than or equal to 1", "got -16"]),
    ("preprocess.patch.size", [0, 0, 0], ["preprocess.patch.size.0", "greater than or equal to 1"]),
    ("train.validation.roi_size", [16, 0, 8], ["train.validation.roi_size.1", "greater than or equal to 1"]),
    ("infer.roi_size", [10**9, 16, 8], ["infer.roi_size.0", "less than or equal to 16384", "1000000000"]),
    ("infer.roi_size", [16384, 16384, 16384], ["infer.roi_size", "more than data.max_voxels", "[16384, 16384"]),
])
def test_window_size_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, size: list[int],
                                  names: list[str]) -> None:
    """`infer.roi_size: [0, 0]`, negative, `patch.size: [0, 0]`, 10**9, 16384**3 voxels → the key, the rule, the
    value."""
    refused(_validate(_workflow(tmp_path, **{key: size})), capsys, names=names)


@pytest.mark.parametrize(("classes", "names"), [
    ([99], ["postprocess.keep_largest_component", "class 99", "not a foreground label", "1 (outer), 2 (inner)"]),
    ([1, 3], ["postprocess.keep_largest_component", "class 3", "dataset.json"]),
    ([0], ["postprocess.keep_largest_component", "0 is the", "background"]),
    ([-1], ["postprocess.keep_largest_component", "numbered from 1", "[-1]"]),
    ("all", ["postprocess.keep_largest_component", "true, false or a list"]),
])
def test_keep_largest_component_unknown_class(tmp_path: Path, capsys: pytest.CaptureFixture[str], classes: Any,
                                              names: list[str]) -> None:
    """`keep_largest_component: [99]` (no such label), `[0]` (the background) → names the class and the labels."""
    refused(_validate(_workflow(tmp_path, **{"postprocess.keep_largest_component": classes})), capsys, names=names)


@pytest.mark.parametrize(("key", "value", "rule"), [
    ("train.epochs", 10**26, "less than or equal to 1000000"),
    ("train.epochs", 0, "greater than or equal to 1"),
    ("train.iterations_per_epoch", 10**12, "less than or equal to 10000000"),
    ("train.batch_size", 0, "greater than or equal to 1"),
    ("train.batch_size", 10**9, "less than or equal to 4096"),
    ("train.val_every", -5, "greater than or equal to 1"),
    ("infer.sw_batch_size", 10**7, "less than or equal to 4096"),
    ("evaluate.figures", 10**9, "less than or equal to 1000"),
])
def test_counts_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: int,
                             rule: str) -> None:
    """`train.epochs: 100000000000000000000000000` (1e26), 0, batch size 0 or 10**9 → the key, the bound, the value."""
    path = _workflow(tmp_path)
    refused(_validate(path, f"{key}={value}"), capsys, names=[key, rule, str(value)])


@pytest.mark.parametrize(("key", "value"), [
    ("train.optimizer.lr", ".nan"), ("train.optimizer.weight_decay", ".inf"), ("infer.overlap", ".nan"),
    ("infer.sigma_scale", ".inf"), ("preprocess.patch.pos", ".nan"), ("preprocess.augment.intensity_shift", ".inf"),
    ("preprocess.intensity.lower", "-.inf"), ("tracking.system_metrics", ".inf"), ("train.lr_schedule.power", ".nan"),
    ("preprocess.augment.rotate_deg", "[0, 0, .nan]"),
])
def test_nan_or_infinite_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str) -> None:
    """`.nan` / `.inf` for any number of the workflow (lr, overlap, sigma, ...) → "<key>: Input should be a finite
    number"."""
    item = ".2" if key.endswith("rotate_deg") else ""
    refused(_validate(_workflow(tmp_path), f"{key}={value}"), capsys, names=[f"{key}{item}", "finite number"])


@pytest.mark.parametrize(("key", "value", "rule"), [
    ("infer.overlap", "1.0", "less than 1"), ("infer.overlap", "-0.25", "greater than or equal to 0"),
    ("train.validation.overlap", "1.5", "less than 1"),
])
def test_overlap_outside_unit_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str,
                                       rule: str) -> None:
    """`infer.overlap: 1.0` (windows that never advance) or negative → "must be in [0, 1)" by key and value."""
    refused(_validate(_workflow(tmp_path), f"{key}={value}"), capsys, names=[key, rule, value])


@pytest.mark.parametrize(("intensity", "names"), [
    ({"mode": "percentile", "lower": 99.0, "upper": 1.0}, ["preprocess.intensity", "lower < upper", "lower=99.0"]),
    ({"mode": "percentile", "lower": 5.0, "upper": 5.0}, ["preprocess.intensity", "lower < upper", "upper=5.0"]),
    ({"mode": "percentile", "lower": -1.0, "upper": 99.0}, ["preprocess.intensity.lower", "greater than or equal"]),
    ({"mode": "percentile", "lower": 1.0, "upper": 250.0}, ["preprocess.intensity.upper", "less than or equal to 100"]),
])
def test_intensity_percentiles_out_of_order(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            intensity: dict[str, Any], names: list[str]) -> None:
    """Percentiles lower 99 / upper 1, equal, below 0 or above 100 → "0 <= lower < upper <= 100" with the values."""
    refused(_validate(_workflow(tmp_path, **{"preprocess.intensity": intensity})), capsys, names=names)


@pytest.mark.parametrize(("augment", "names"), [
    ({"rotate_deg": [0, 0, 720]}, ["preprocess.augment.rotate_deg.2", "less than or equal to 180", "720"]),
    ({"rotate_deg": [-10, 0, 0]}, ["preprocess.augment.rotate_deg.0", "greater than or equal to 0"]),
    ({"intensity_scale": 5.0}, ["preprocess.augment.intensity_scale", "less than 1", "5.0"]),
    ({"scale_limits": [0.0, 2.0]}, ["preprocess.augment.scale_limits.0", "greater than 0"]),
    ({"flip_prob": 2.0}, ["preprocess.augment.flip_prob", "less than or equal to 1"]),
    ({"scale_range": 1.0}, ["preprocess.augment.scale_range", "less than 1"]),
])
def test_augmentation_ranges(tmp_path: Path, capsys: pytest.CaptureFixture[str], augment: dict[str, Any],
                             names: list[str]) -> None:
    """Rotation of 720° or -10°, an intensity factor of 5, a zoom down to 0, probability 2 → key, range, value."""
    refused(_validate(_workflow(tmp_path, **{"preprocess.augment": augment})), capsys, names=names)


@pytest.mark.parametrize(("patch", "names"), [
    ({"size": [16, 16, 8], "pos": 0, "neg": 0}, ["preprocess.patch", "at least one must be above 0", "pos=0"]),
    ({"size": [16, 16, 8], "num_samples": 0}, ["preprocess.patch.num_samples", "greater than or equal to 1"]),
    ({"size": [16, 16, 8], "num_samples": 10**6}, ["preprocess.patch.num_samples", "less than or equal to 1024"]),
    ({"size": [16, 16, 8], "neg": -1}, ["preprocess.patch.neg", "greater than or equal to 0", "-1"]),
])
def test_patch_sampling_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str], patch: dict[str, Any],
                                 names: list[str]) -> None:
    """`patch: {pos: 0, neg: 0}` (no patch can be drawn), 0 or a million samples → the key and the rule."""
    refused(_validate(_workflow(tmp_path, **{"preprocess.patch": patch})), capsys, names=names)


@pytest.mark.parametrize("seed", [-1, 2**31, 10**30])
def test_seed_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int) -> None:
    """`seed: -1` or beyond 2**31 - 1 (NumPy and MONAI take 0 .. 2**32 - 1, training adds epoch and rank) → refused."""
    rule = "greater than or equal to 0" if seed < 0 else "less than or equal to 2147483647"
    refused(_validate(_workflow(tmp_path, seed=seed)), capsys, names=["seed", rule, str(seed)])


@pytest.mark.parametrize(("key", "axes", "names"), [
    ("infer.tta_flip_axes", [2], ["infer.tta_flip_axes", "axis 2 does not exist in 2D data", "0, 1"]),
    ("train.validation.tta_flip_axes", [0, 2], ["train.validation.tta_flip_axes", "axis 2"]),
    ("preprocess.augment.flip_axes", [2], ["preprocess.augment.flip_axes", "axis 2 does not exist in 2D"]),
    ("preprocess.augment.flip_axes", [5], ["preprocess.augment.flip_axes.0", "less than or equal to 2"]),
    ("infer.tta_flip_axes", [0, 0], ["infer.tta_flip_axes", "listed once", "[0, 0]"]),
])
def test_flip_axes_outside_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, axes: list[int],
                                    names: list[str]) -> None:
    """Mirroring axis 2 of 2D data (or axis 5, or one axis twice) → the key, the data's axes and the value."""
    manifest = _manifest(tmp_path, spatial_dims=2)
    path = tiny_workflow(tmp_path / "wf.yaml", manifest, model={"name": "unet", "channels": [4, 8], "strides": [2]},
                         **{"preprocess.patch.size": [16, 16], "infer.roi_size": [16, 16],
                            "preprocess.spacing": None, key: axes})
    refused(_validate(path), capsys, names=names)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(("content", "names"), [
    ("[1, 2, 3]", ["data.manifest", "dataset.json", "a manifest is a JSON object", "JSON array"]),
    ("spatial_dims:two", ["data.manifest", "dataset.json", "'spatial_dims' must be the number 2 or 3", "'two'"]),
    ("spatial_dims:4", ["data.manifest", "'spatial_dims' must be the number 2 or 3", "4"]),
    ("nested", ["data.manifest", "dataset.json", "nests JSON deeper than 32 levels"]),
    ("{not json", ["data.manifest", "dataset.json", "not a valid JSON manifest", "line 1"]),
    ("labels:list", ["data.manifest", "'labels' must map the label values"]),
    ("labels:gap", ["data.manifest", "'labels' must map the label values 0, 1, ..., N-1"]),
])
def test_broken_manifest_is_a_manifest_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                                               names: list[str]) -> None:
    """A manifest that is a list, has `spatial_dims: "two"`, nests 100000 levels, is not JSON or has bad labels →
    "data.manifest: <file>: <rule>" (not blamed on the workflow's patch size, no RecursionError)."""
    path = _workflow(tmp_path)
    manifest = tmp_path / "data" / "dataset.json"
    doc = json.loads(manifest.read_text())
    if content == "nested":
        manifest.write_text('{"labels": {"0": "bg", "1": "x"}, "extra": ' + _nested(100_000) + "}")
    elif content.startswith("spatial_dims:"):
        raw = content.split(":", 1)[1]
        doc["spatial_dims"] = int(raw) if raw.isdigit() else raw
        manifest.write_text(json.dumps(doc))
    elif content.startswith("labels:"):
        doc["labels"] = ["background", "x"] if content.endswith("list") else {"0": "background", "2": "x"}
        manifest.write_text(json.dumps(doc))
    else:
        manifest.write_text(content)
    result = refused(_validate(path), capsys, names=names)
    assert "patch.size" not in result.message


@pytest.mark.parametrize(("assignment", "names"), [
    ("train.ep ochs=3", ["--set", "'ep ochs'", "letters, digits and '_'"]),
    ("train..epochs=3", ["--set", "expected KEY.PATH=VALUE"]),
    ("train.ep\nochs=3", ["--set", "letters, digits and '_'"]),
    ("tráin.epochs=3", ["--set", "'tráin'"]),
    ("train.epochs=" + "9" * 5000, ["train.epochs", "--set value", "5000 digits"]),
    ("train.epochs=" + "9" * 50, ["train.epochs", "less than or equal to 1000000"]),
    ("model.channels=[" + ", ".join(["8"] * 20_000) + "]", ["model.channels", "more than 10000 values"]),
    ("=3", ["--set", "expected KEY.PATH=VALUE"]),
    ("train.epochs.x=3", ["train.epochs", "not a section"]),
], ids=["space", "empty-part", "newline", "non-ascii", "5000-digits", "50-digits", "20000-items", "no-key",
        "into-a-number"])
def test_set_assignment_odd_key_or_value(tmp_path: Path, capsys: pytest.CaptureFixture[str], assignment: str,
                                         names: list[str]) -> None:
    """`--set` with spaces, newlines, non-ASCII or empty parts in the key, a 5000-digit or 20000-item value → one
    short message naming the key and the rule."""
    result = refused(_validate(_workflow(tmp_path), assignment), capsys, names=names)
    assert len(result.message) < 2000


@pytest.mark.parametrize(("crf", "names"), [
    ({"smooth_sigma_mm": 0.0}, ["postprocess.crf.smooth_sigma_mm", "greater than 0"]),
    ({"bilateral_sigma_intensity": -0.5}, ["postprocess.crf.bilateral_sigma_intensity", "greater than 0"]),
    ({"bilateral_weight": float("inf")}, ["postprocess.crf.bilateral_weight", "finite number"]),
    ({"smooth_weight": -1.0}, ["postprocess.crf.smooth_weight", "greater than or equal to 0"]),
    ({"iterations": 10**9}, ["postprocess.crf.iterations", "less than or equal to 1000"]),
    ({"tune": {"bilateral_sigma_mm": [5.0, float("nan")]}}, ["postprocess.crf.tune.bilateral_sigma_mm.1",
                                                            "finite number"]),
    ({"tune": {"smooth_weight": [1.0] * 100}}, ["postprocess.crf.tune.smooth_weight", "at most 16 items"]),
])
def test_crf_parameters_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str], crf: dict[str, Any],
                                     names: list[str]) -> None:
    """CRF sigmas of 0 or below, infinite or negative weights, 10**9 iterations, NaN in a tuning grid → key, rule."""
    refused(_validate(_workflow(tmp_path, **{"postprocess.crf": crf})), capsys, names=names)


@pytest.mark.parametrize(("model", "names"), [
    ({"name": "vnet", 1: 2}, ["model.1", "not an argument name"]),
    ({"name": "vnet", "base_channels": -4, "levels": 2, "kernel_size": 3, "convs_per_level": [1, 1]},
     ["model:", "'vnet'", "-4"]),
    ({"name": "unet", "channels": [4, 8], "strides": [2], "dropout": float("nan")}, ["model.dropout", "finite"]),
    ({"name": "vnet", "levels": 2, "kernel_size": 10**30}, ["model:"]),
])
def test_model_arguments_odd(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: dict[Any, Any],
                             names: list[str]) -> None:
    """A model argument named 1, negative channels, a NaN dropout, a kernel of 10**30 → "model...: <rule>", no
    PyTorch error."""
    dims = 2 if model["name"] == "unet" else 3
    size = [16] * dims if dims == 2 else [16, 16, 8]
    path = tiny_workflow(tmp_path / "wf.yaml", _manifest(tmp_path, spatial_dims=dims), model=model,
                         **{"preprocess.patch.size": size, "infer.roi_size": size,
                            "preprocess.spacing": None})
    refused(_validate(path), capsys, names=names)


@pytest.mark.parametrize(("key", "value", "names"), [
    ("data.root", "data\x00root", ["data.root", "not a usable path"]),
    ("data.root", "x" * 5000, ["data.root", "longer than 4096"]),
    ("data.manifest", "~no-such-user-h2/dataset.json", ["data.manifest", "file not found", "~no-such-user-h2"]),
    ("data.manifest", "/dev/null/x" + "y" * 5000, ["data.manifest", "file not found"]),
    ("data.manifest", ".", ["data.manifest", "not a regular file"]),
], ids=["nul", "5000-characters", "unknown-user", "too-long-manifest", "folder-as-manifest"])
def test_unusable_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str,
                        names: list[str]) -> None:
    """A path with a NUL byte, 5000 characters, an unknown ~user or a folder for the manifest → key and rule."""
    path = _workflow(tmp_path)
    doc = yaml.safe_load(path.read_text())
    section, field = key.split(".")
    doc[section][field] = value
    path.write_text(yaml.safe_dump(doc))
    refused(_validate(path), capsys, names=names)
