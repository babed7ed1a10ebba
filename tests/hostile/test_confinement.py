"""Confinement (issue 13, item 1): nothing a manifest, an archive or a data set's file names say can make the
pipeline write outside the run folder or the data root, or read a case outside the data root.

Case ids name the files a run writes (``preprocess/<id>_image.nii``), so they are safe file names; every path a
manifest names is resolved with symlinks followed and must lie under the data root; synthetic-data generators check
their targets again before writing; archives are checked member by member before anything is extracted; importers
check the ids they build from source names before writing. Each refusal happens while the manifest is read (the
``prepare`` stage, before any training), names the case and the key, and leaves the folders around untouched.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.data.generators import GENERATORS
from pipeline.data.manifest import load_manifest
from pipeline.errors import DataError
from tests.data.fetchers.helpers import add_bytes, add_link, md5_of
from tests.hostile.harness import refused, refused_call
from tests.utils import blob_dataset, tiny_workflow, write_manifest

ROOT_RULE = "must stay under its data root"


@pytest.fixture(scope="module", autouse=True)
def _warm_run() -> None:
    """Import what ``pipeline run`` imports lazily (the stage modules, the tracking helpers) once, as a user's
    command pays it once: the refusals' clock then measures the refusal."""
    import pipeline.evaluation.stage
    import pipeline.tracking.tracker  # noqa: F401
    from pipeline.stages import stage_classes

    stage_classes()


def _dataset(tmp_path: Path, edit: Callable[[dict[str, Any], Path], None]) -> tuple[Path, Path, Path]:
    """A tiny labelled data set under ``tmp/data`` whose manifest ``edit(doc, tmp)`` changes, a workflow on it, and
    an ``outside`` folder (with one file) that must stay untouched: ``(workflow, manifest, outside)``."""
    manifest = blob_dataset(tmp_path / "data", n_train=1, n_val=0, n_test=1)
    doc = json.loads(manifest.read_text())
    edit(doc, tmp_path)
    manifest.write_text(json.dumps(doc))
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "keep.txt").write_text("not the pipeline's")
    return tiny_workflow(tmp_path / "wf.yaml", manifest), manifest, outside


def _run(workflow: Path, tmp_path: Path) -> list[str]:
    return ["run", str(workflow), "--run-dir", str(tmp_path / "runs" / "run")]


@pytest.mark.parametrize("cid", ["../../../outside/ESCAPED", "../../outside/ESCAPED", "sub/ESCAPED", "..",
                                 ".hidden", "a\\b", "case 01", "x" * 129])
def test_unsafe_case_id(tmp_path: Path, capsys: pytest.CaptureFixture[str], cid: str) -> None:
    """A case ``id`` such as ``../../outside/ESCAPED`` → refused at prepare by split, index, id and rule; nothing
    written outside the run folder."""

    def edit(doc: dict[str, Any], tmp: Path) -> None:
        doc["training"][0]["id"] = cid

    wf, manifest, outside = _dataset(tmp_path, edit)
    refused(_run(wf, tmp_path), capsys, names=[str(manifest), "training[0]", repr(cid)[1:60], "not a safe file name"
                                                if len(cid) <= 128 else "characters long"],
            untouched=[outside, tmp_path / "data"])
    assert not list(tmp_path.rglob("ESCAPED*"))


@pytest.mark.parametrize("image", ["imagesTr/case 0.nii.gz", "imagesTr/.nii.gz", "imagesTr/.case0.nii.gz"])
def test_unsafe_case_id_derived_from_image_name(tmp_path: Path, image: str) -> None:
    """A case without ``id`` whose image name gives an unsafe id (a space, empty, a leading dot) → refused, asking
    for an explicit ``id``."""
    manifest = write_manifest(tmp_path / "m.json", {"training": ["a"], "test": ["b"]})
    doc = json.loads(manifest.read_text())
    del doc["test"][0]["id"]
    doc["test"][0]["image"] = image
    manifest.write_text(json.dumps(doc))
    refused_call(lambda: load_manifest(manifest), DataError,
                 names=[str(manifest), "test[0]", repr(image), "give the case an 'id'"])


@pytest.mark.parametrize("key", ["image", "label", "instances", "absolute"])
def test_case_path_outside_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str) -> None:
    """An image, label or extra file path climbing out of the data root (``../outside/...``, or absolute elsewhere)
    → refused by case, key, path and the rule; the file outside is never read."""
    target = tmp_path / "outside" / "keep.nii.gz"
    value = str(target) if key == "absolute" else "../outside/keep.nii.gz"

    def edit(doc: dict[str, Any], tmp: Path) -> None:
        doc["test"][0]["image" if key == "absolute" else key] = value

    wf, manifest, outside = _dataset(tmp_path, edit)
    refused(_run(wf, tmp_path), capsys,
            names=[str(manifest), "test[0] (case 'case1')", f"'{'image' if key == 'absolute' else key}'", value,
                   ROOT_RULE, str((tmp_path / "data").resolve()), "set data.root"],
            untouched=[outside, tmp_path / "data"])


@pytest.mark.parametrize("link", ["file", "folder"])
def test_symlink_pointing_out_of_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str) -> None:
    """A case file (or its folder) inside the data root that is a symlink to a file outside it → refused as "a
    symlink pointing out of the data root"."""
    wf, manifest, outside = _dataset(tmp_path, lambda doc, tmp: None)
    data = tmp_path / "data"
    if link == "file":
        (outside / "case1.nii.gz").write_bytes((data / "imagesTr" / "case1.nii.gz").read_bytes())
        (data / "imagesTr" / "case1.nii.gz").unlink()
        (data / "imagesTr" / "case1.nii.gz").symlink_to(outside / "case1.nii.gz")
    else:
        (data / "labelsTr").rename(outside / "labelsTr")
        (data / "labelsTr").symlink_to(outside / "labelsTr", target_is_directory=True)
    refused(_run(wf, tmp_path), capsys,
            names=[str(manifest), "(case 'case0')" if link == "folder" else "(case 'case1')",
                   "'label'" if link == "folder" else "'image'", "symlink pointing out of the data root",
                   ROOT_RULE],
            untouched=[outside, data])


def test_synthetic_case_path_escaping_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A synthetic manifest (``source.generator``) whose case path climbs out of its root → refused before
    anything is generated: no file written outside, nor inside."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    manifest = write_manifest(tmp_path / "m.json", {"training": ["a"], "test": ["b"]}, data_root="data",
                              source={"generator": "synthetic_prostate", "seed": 0, "shape": [16, 16, 8]})
    doc = json.loads(manifest.read_text())
    doc["test"][0]["label"] = "../outside/b_label.nii.gz"
    manifest.write_text(json.dumps(doc))
    wf = tiny_workflow(tmp_path / "wf.yaml", manifest)
    refused(_run(wf, tmp_path), capsys,
            names=[str(manifest), "test[0] (case 'b')", "'label'", "../outside/b_label.nii.gz", ROOT_RULE],
            untouched=[outside, data])
    assert not list(tmp_path.rglob("*.nii.gz"))


@pytest.mark.parametrize("generator", sorted(GENERATORS.names()))
def test_generator_asked_to_write_outside_its_root(tmp_path: Path, generator: str) -> None:
    """A synthetic-data generator called with a case path outside its root (``../x``, an absolute path) → refused
    before it writes any of the case's files."""
    root = tmp_path / "root"
    root.mkdir()
    entry = {"id": "a", "image": "imagesTr/a.nii.gz", "label": str(tmp_path / "a_label.nii.gz"),
             "instances": "instancesTr/a.nii.gz", "boundaries": "../a_boundaries.npy"}
    source = {"generator": generator, "seed": 0, "shape": [16, 16, 8] if generator.endswith(("prostate", "3d"))
              else [32, 24]}
    write = GENERATORS.get(generator)
    refused_call(lambda: write(root, entry, source), DataError,
                 names=["'a'", "outside the data root", ROOT_RULE], untouched=[tmp_path])


def _evil_tar(tmp_path: Path, add: Callable[[tarfile.TarFile, Path], Any]) -> Path:
    tar_path = tmp_path / "downloads" / "Task05_Prostate.tar"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w") as tar:
        add_bytes(tar, "Task05_Prostate/dataset.json", b"{}")
        add(tar, tmp_path)
    return tar_path


def _fetch(tar_path: Path, root: Path) -> list[str]:
    return ["data", "fetch", "msd-prostate", "--root", str(root), "--archive", str(tar_path), "--md5",
            md5_of(tar_path), "--quiet"]


@pytest.mark.parametrize(("member", "make"), [
    ("../evil.txt", lambda tar, tmp: add_bytes(tar, "../evil.txt", b"pwned")),
    ("Task05_Prostate/../../evil.txt", lambda tar, tmp: add_bytes(tar, "Task05_Prostate/../../evil.txt", b"pwned")),
    ("/evil_abs.txt", lambda tar, tmp: add_bytes(tar, str(tmp / "parent" / "evil_abs.txt"), b"pwned")),
])
def test_tar_member_path_traversal(tmp_path: Path, capsys: pytest.CaptureFixture[str], member: str,
                                   make: Callable[[tarfile.TarFile, Path], Any]) -> None:
    """``pipeline data fetch --archive`` with a member named ``../evil.txt`` (or absolute) → refused, naming the
    archive and the member; nothing extracted anywhere."""
    tar_path = _evil_tar(tmp_path, make)
    root = tmp_path / "parent" / "root"
    root.mkdir(parents=True)
    names = [str(tar_path), "nothing was extracted"]
    names.append("absolute path" if member.startswith("/") else f"member {member!r} would be written outside")
    refused(_fetch(tar_path, root), capsys, names=names, untouched=[tmp_path / "parent"])
    assert not list(tmp_path.rglob("evil*"))


@pytest.mark.parametrize(("what", "make"), [
    ("symlink", lambda tar, tmp: add_link(tar, "Task05_Prostate/link", "../../outside")),
    ("symlink", lambda tar, tmp: add_link(tar, "Task05_Prostate/link", str(tmp / "outside"))),
    ("would be written outside", lambda tar, tmp: (add_link(tar, "Task05_Prostate/up", ".."),
                                                   add_link(tar, "Task05_Prostate/up2", "up/.."),
                                                   add_bytes(tar, "Task05_Prostate/up2/evil.txt", b"pwned"))),
    ("hard link", lambda tar, tmp: add_link(tar, "Task05_Prostate/hl", "../outside/keep.txt", tarfile.LNKTYPE)),
])
def test_tar_link_pointing_out(tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str,
                               make: Callable[[tarfile.TarFile, Path], Any]) -> None:
    """An archive with a symlink or hard link pointing out of the destination, or a path written through such a
    link → refused by member; nothing extracted, the target untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the archive's")
    tar_path = _evil_tar(tmp_path, make)
    root = tmp_path / "parent" / "root"
    root.mkdir(parents=True)
    refused(_fetch(tar_path, root), capsys, names=[str(tar_path), what, "nothing was extracted"],
            untouched=[tmp_path / "parent", outside])


def test_import_source_name_giving_unsafe_case_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``pipeline data import dsb2018`` on a folder named ``scan 01`` (its case id) → refused by folder, id and
    rule before any file is written."""
    from PIL import Image

    src, out = tmp_path / "stage1_train", tmp_path / "out"
    for cid in ("ok01", "scan 01"):
        (src / cid / "images").mkdir(parents=True)
        (src / cid / "masks").mkdir()
        Image.fromarray(np.full((8, 8), 50, dtype=np.uint8)).save(src / cid / "images" / f"{cid}.png")
        mask = np.zeros((8, 8), dtype=np.uint8)
        mask[2:5, 2:5] = 255
        Image.fromarray(mask).save(src / cid / "masks" / "m0.png")
    refused(["data", "import", "dsb2018", str(src), "--out", str(out)], capsys,
            names=[str(src / "scan 01"), "'scan 01'", "not a safe file name", "Rename it"], untouched=[src])
    assert not out.exists()
