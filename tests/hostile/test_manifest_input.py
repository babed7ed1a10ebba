"""Malformed manifests (issue 13, items 3 and 4): each is one :class:`DataError` naming the manifest, the key or
case and the rule, never a bare ``RecursionError``/``ValueError``/``KeyError``, within the corpus's time and memory
budget; random mutations of a valid manifest never crash the loader.

:func:`pipeline.data.manifest.load_manifest` is the edge: ``pipeline run`` reaches it in the ``prepare`` stage,
``pipeline infer`` when an input is a manifest, so these tests call it directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data.manifest import MAX_DEPTH, Manifest, case_id_problem, load_manifest
from pipeline.errors import DataError
from tests.hostile.harness import check_message, refused_call
from tests.utils import REPO, write_manifest


def _manifest(tmp_path: Path, edit: Callable[[dict[str, Any]], Any] | None = None) -> Path:
    """A valid manifest (training case ``a``, test case ``b``) changed by ``edit(doc)``."""
    path = write_manifest(tmp_path / "m.json", {"training": ["a"], "test": ["b"]})
    if edit is not None:
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))
    return path


def _refused(path: Path, *names: str) -> str:
    return refused_call(lambda: load_manifest(path), DataError, names=[str(path), *names]).message


@pytest.mark.parametrize(("text", "kind"), [("[]", "array"), ('"x"', "string"), ("5", "number"), ("null", "null"),
                                            ("true", "boolean")])
def test_manifest_not_an_object(tmp_path: Path, text: str, kind: str) -> None:
    """A manifest that is a JSON list, string, number or null → "a manifest is a JSON object ...; got a JSON array"."""
    path = tmp_path / "m.json"
    path.write_text(text)
    _refused(path, "a manifest is a JSON object with 'labels'", f"got a JSON {kind}")


@pytest.mark.parametrize("form", ["deep_list", "deep_source"])
def test_manifest_deeply_nested(tmp_path: Path, form: str) -> None:
    """JSON nested 100 000 levels deep (``RecursionError`` before) or 40 levels inside ``source`` → refused by
    nesting depth."""
    path = tmp_path / "m.json"
    if form == "deep_list":
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        good = json.loads(_manifest(tmp_path).read_text())
        path.write_text(json.dumps(good)[:-1] + ', "source": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}")
    _refused(path, f"nests JSON deeper than {MAX_DEPTH} levels")


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_manifest_not_utf8(tmp_path: Path, encoding: str) -> None:
    """A manifest saved as Latin-1 or UTF-16 → "is not UTF-8 text (byte 0x.. at offset N); save it as UTF-8"."""
    path = tmp_path / "m.json"
    doc = json.loads(_manifest(tmp_path).read_text()) | {"name": "Prostata (Mönchengladbach)"}
    path.write_bytes(json.dumps(doc, ensure_ascii=False).encode(encoding))
    _refused(path, "is not UTF-8 text", "save it as UTF-8 JSON")


def test_manifest_too_large(tmp_path: Path) -> None:
    """A 40 MiB file given as the manifest → refused from its size before it is read."""
    path = tmp_path / "m.json"
    with path.open("wb") as f:
        f.truncate(40 * 2**20)  # sparse: no disk used
    _refused(path, "is 40 MiB", "at most 32 MiB")


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_manifest_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    """A folder or a fifo (a read that would block or never end) given as the manifest → refused without reading."""
    path = tmp_path / "m.json"
    if kind == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    _refused(path, "is a folder" if kind == "folder" else "is not a regular file")


@pytest.mark.parametrize(("value", "why"), [("NaN", "NaN is not a JSON number"),
                                            ("-Infinity", "-Infinity is not a JSON number"),
                                            ("1" * 5000, "a number with thousands of digits")])
def test_manifest_non_standard_numbers(tmp_path: Path, value: str, why: str) -> None:
    """``NaN``, ``Infinity`` or a 5000-digit integer in a manifest → "not a valid JSON manifest (NaN is not a JSON
    number)"."""
    path = tmp_path / "m.json"
    text = _manifest(tmp_path).read_text()
    path.write_text(text.replace('"name": "tiny"', f'"name": "tiny", "spatial_dims": {value}'))
    _refused(path, "not a valid JSON manifest", why)


@pytest.mark.parametrize(("key", "value", "why"), [
    ("channel_names", {"a": "T2"}, "'a'"),
    ("channel_names", {"-1": "T2"}, "'-1'"),
    ("modality", {"1.5": "T2"}, "'1.5'"),
    ("modality", {"00": "T2"}, "'00'"),
    ("channel_names", {"0": "T2", "2": "ADC"}, "without gaps"),
    ("channel_names", {"0": 7}, "names must be non-empty strings"),
    ("modality", ["T2"], "got array"),
    ("channel_names", {}, "is empty"),
])
def test_channel_keys_not_indices(tmp_path: Path, key: str, value: Any, why: str) -> None:
    """``channel_names``/``modality`` with keys that are not 0..C-1 (``"a"``, ``"-1"``, ``"1.5"``, gaps) or names that
    are not strings → one message naming the key and the rule (a bare ``ValueError`` before)."""
    path = _manifest(tmp_path, lambda d: (d.pop("modality"), d.update({key: value})))
    _refused(path, f"'{key}'", why)


@pytest.mark.parametrize("value", ["two", "3", 4, 1, True, 2.0, [3]])
def test_spatial_dims_not_2_or_3(tmp_path: Path, value: Any) -> None:
    """``spatial_dims: "two"`` (or 4, true, 2.0) → "'spatial_dims' must be the number 2 or 3, got 'two'"."""
    path = _manifest(tmp_path, lambda d: d.update(spatial_dims=value))
    _refused(path, "'spatial_dims' must be the number 2 or 3", f"got {value!r}")


@pytest.mark.parametrize(("value", "why"), [
    (["background", "PZ"], "must be an object"),
    ({"0": "background", "1": 1}, "names must be non-empty strings"),
    ({"0": "background", "1": None}, "names must be non-empty strings"),
    ({"0": "background", "01": "PZ"}, "'01'"),
    ({" 0": "background"}, "' 0'"),
    ({"0": "background", "99999999999": "x"}, "without gaps"),
    ({str(i): f"c{i}" for i in range(300)}, "has 300 entries; at most 256"),
])
def test_labels_malformed(tmp_path: Path, value: Any, why: str) -> None:
    """``labels`` as a list, with non-string names, odd keys (``"01"``), a gap or 300 classes (label maps are
    8-bit) → refused by key and rule."""
    path = _manifest(tmp_path, lambda d: d.update(labels=value))
    _refused(path, "'labels'", why)


@pytest.mark.parametrize("fold", ["1", 1.5, True, -2, [0]])
def test_fold_not_an_integer(tmp_path: Path, fold: Any) -> None:
    """A case's ``fold`` of ``"1"``, 1.5, true or -2 → refused by split, index, case and rule."""
    path = _manifest(tmp_path, lambda d: d["training"][0].update(fold=fold))
    _refused(path, "training[0] (case 'a')", "'fold' must be an integer", f"got {fold!r}")


@pytest.mark.parametrize(("key", "value"), [("image", 5), ("image", None), ("image", ["a.nii.gz"]), ("label", {}),
                                            ("image", ""), ("label", "  "), ("instances", 3),
                                            ("image", "a\x00b.nii.gz"), ("label", "x" * 5000)])
def test_case_path_not_a_path_string(tmp_path: Path, key: str, value: Any) -> None:
    """A case's ``image``/``label``/extra that is a number, null, a list, empty, holds a NUL byte or is 5000
    characters long → refused by case and key."""
    path = _manifest(tmp_path, lambda d: d["test"][0].update({key: value}))
    _refused(path, "test[0]", f"'{key}'")


@pytest.mark.parametrize("entry", ["imagesTs/b.nii.gz", 5, None, ["imagesTr/b.nii.gz", "labelsTr/b.nii.gz"]])
def test_case_entry_not_an_object(tmp_path: Path, entry: Any) -> None:
    """A case that is a bare path string (MSD's unlabelled test list), a number or a list → "each case is an object
    with 'image' and 'label' paths"."""
    path = _manifest(tmp_path, lambda d: d["test"].append(entry))
    _refused(path, "test[1]", "each case is an object with 'image' and 'label' paths")


@pytest.mark.parametrize("value", [{"a": {}}, "imagesTr", 3])
def test_split_not_a_list(tmp_path: Path, value: Any) -> None:
    """``training`` as an object, a string or a number → "'training' must be a list of cases"."""
    path = _manifest(tmp_path, lambda d: d.update(training=value))
    _refused(path, "'training' must be a list of cases")


@pytest.mark.parametrize(("key", "value", "why"), [
    ("name", 5, "'name' must be a string"),
    ("domain", ["oct"], "'domain' must be a string"),
    ("source", "https://example.org/x.tar", "'source' must be an object"),
    ("source", {"generator": ["synthetic_prostate"]}, "'source.generator' must be a generator's name"),
    ("data_root", 5, "'data_root' must be a folder path"),
    ("data_root", "", "'data_root' must be a folder path"),
])
def test_top_level_key_of_wrong_type(tmp_path: Path, key: str, value: Any, why: str) -> None:
    """``name``, ``domain``, ``source``, ``source.generator`` or ``data_root`` of the wrong type → refused by key."""
    path = _manifest(tmp_path, lambda d: d.update({key: value}))
    _refused(path, why)


def test_thousands_of_bad_cases_one_short_message(tmp_path: Path) -> None:
    """1 000 malformed cases → one message listing the first 20 problems and how many more (not a 1 000-line
    error)."""
    path = _manifest(tmp_path, lambda d: d["training"].extend({"image": f"imagesTr/{i}.nii.gz", "label": i}
                                                              for i in range(1_000)))
    message = _refused(path, "1000 problem(s)", "training[1] (case '0')", "... and 980 more")
    assert len(message.splitlines()) <= 25 and len(message) < 10_000


# --- property: random mutations of valid manifests never crash the loader -----------------------------------------

ODD_STRINGS = ["", " ", "..", "../..", "../../etc/passwd", "/etc/passwd", "/", ".", "a/../../b", "~", "\x00",
               "a\nb", "é", "\u202e", "x" * 300, "imagesTr/a.nii.gz", "NaN", "0", "-1", "01", "3", "two"]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.sampled_from([2, 3, -1, 0, 256]),
                      st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(ODD_STRINGS),
                      st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
    st.sampled_from(["0", "1", "id", "image", "label", "a", "-1"]) | st.text(max_size=5), kids, max_size=3),
    max_leaves=8)


def _base_documents() -> list[dict[str, Any]]:
    shipped = json.loads((REPO / "data_manifests" / "prostate_demo.json").read_text())
    shipped["data_root"] = "."
    tiny = {"name": "tiny", "labels": {"0": "background", "1": "a", "2": "b"}, "modality": {"0": "T2"},
            "spatial_dims": 3, "domain": "mri",
            "training": [{"id": "a", "image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz", "fold": 0}],
            "test": [{"id": "b", "image": "imagesTr/b.nii.gz", "label": "labelsTr/b.nii.gz",
                      "instances": "instancesTr/b.nii.gz"}]}
    return [shipped, tiny]


BASES = _base_documents()


def _locations(node: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a JSON value (the value itself included)."""
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _locations(v, (*here, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            out += _locations(v, (*here, i))
    return out


def _at(doc: Any, where: tuple[Any, ...]) -> Any:
    for k in where:
        doc = doc[k]
    return doc


@st.composite
def mutated_manifests(draw: st.DrawFn) -> str:
    doc = json.loads(json.dumps(draw(st.sampled_from(BASES))))
    for _ in range(draw(st.integers(1, 4))):
        spots = _locations(doc)
        where = draw(st.sampled_from(spots))
        op = draw(st.sampled_from(["drop", "set", "nest", "odd_path", "add_key"]))
        if not where:
            if op == "set":
                doc = draw(json_value)
            continue
        parent, key = _at(doc, where[:-1]), where[-1]
        if not isinstance(parent, (dict, list)):
            continue
        if op == "drop":
            del parent[key]
        elif op == "set":
            parent[key] = draw(json_value)
        elif op == "nest":
            for _ in range(draw(st.integers(1, 40))):
                parent[key] = [parent[key]] if draw(st.booleans()) else {"x": parent[key]}
        elif op == "odd_path":
            parent[key] = draw(st.sampled_from(ODD_STRINGS)) + draw(st.sampled_from(["", "/a.nii.gz", ".nii.gz"]))
        elif op == "add_key" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["id", "fold", "data_root", "channel_names", "instances", "boundaries"]))] = (
                draw(json_value))
    text = json.dumps(doc)
    if draw(st.integers(0, 9)) == 0:  # byte-level damage too: a truncated file
        text = text[: draw(st.integers(0, len(text)))]
    return text


@settings(deadline=None, max_examples=150, derandomize=True,  # the same examples on every CI run
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=mutated_manifests())
def test_manifest_mutations_never_crash(tmp_path: Path, text: str) -> None:
    """Random mutations of valid manifests (keys dropped, types changed, nesting, ``..``, absolute paths, huge
    numbers, truncation) → a Manifest whose every case is confined and safely named, or one DataError naming the
    manifest; never another exception."""
    path = tmp_path / "m.json"
    path.write_text(text, encoding="utf-8")
    try:
        manifest = load_manifest(path)
    except DataError as exc:
        message = str(exc)
        assert str(path) in message
        check_message(message, [])
        return
    assert isinstance(manifest, Manifest)
    root = manifest.root
    for case in manifest.all_cases():
        assert case_id_problem(case.id) is None
        for p in [case.image, case.label, *case.extras.values()]:
            assert p is not None and p.resolve().is_relative_to(root)
