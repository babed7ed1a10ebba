"""Environment faults: a read-only folder, a full disk, an output path that is a file or a broken symlink, spaces
and non-ASCII characters in every path. Each is one message that names the path and says what to do, a non-zero
exit, and nothing partial left behind.

Tests run as root here, and ``chmod`` does not stop root from writing. A read-only folder is therefore simulated
two ways: by :func:`simulate_read_only`, which makes the operating system calls that write under a folder fail as
the kernel would (``EACCES`` or ``EROFS``; always runs), and for real by a read-only tmpfs mount (root) or
``chmod a-w`` (anyone else), skipped with the reason where neither is possible. A full disk is a patched writer
failing with ``ENOSPC`` (or PyTorch's own errno-less error), and for real a small tmpfs where one can be mounted.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import pytest
import SimpleITK as sitk
import torch

from pipeline.cli import main
from pipeline.io import faults  # free_bytes is looked up there (also by the atomic writers)
from tests.hostile.harness import refused, refused_call, snapshot
from tests.utils import blob_dataset, mounted_tmpfs, tiny_workflow

WEIRD = "dir with spaces/données ü 画像"  # a folder name with spaces, accents and CJK characters


# -- a run, a bundle and scans in a folder named WEIRD (shared by the tests of this module) ------------------------


@pytest.fixture(scope="module")
def weird(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny ``pipeline run`` + ``pipeline export`` where every path has spaces and non-ASCII characters: the data
    root, the manifest, the workflow file, the run folder and the bundle (asserted by
    :func:`test_spaces_and_non_ascii_in_every_path`, used by the infer tests)."""
    root = tmp_path_factory.mktemp("env") / WEIRD
    manifest = blob_dataset(root / "données d'entrée", n_train=1, n_val=1, n_test=2)
    manifest = manifest.rename(manifest.with_name("jeu de données é.json"))
    wf = tiny_workflow(root / "flux de travail ü.yaml", manifest, **{"train.epochs": 1, "evaluate.overlays": False})
    run_dir, bundle = root / "exécutions 运行" / "essai 1", root / "modèles" / "modèle ü"
    assert main(["run", str(wf), "--run-dir", str(run_dir)]) == 0
    assert main(["export", str(run_dir), "--out", str(bundle), "--no-mlflow"]) == 0
    images = manifest.parent / "imagesTr"
    scans = root / "scans à segmenter"
    scans.mkdir()
    for i, cid in enumerate(("case2", "case3")):  # the test cases, under names with spaces and non-ASCII
        (scans / f"patient {i} é.nii.gz").write_bytes((images / f"{cid}.nii.gz").read_bytes())
    sitk.WriteImage(sitk.ReadImage(str(images / "case2.nii.gz")), str(scans / "scan ü 3.mhd"))  # + its .raw
    return {"root": root, "manifest": manifest, "workflow": wf, "run": run_dir, "bundle": bundle, "scans": scans}


def infer(bundle: Path, inputs: list[Path], output: Path, *extra: str) -> list[str]:
    return ["infer", str(bundle), "--input", *map(str, inputs), "--output", str(output), "--no-mlflow", "--quiet",
            *extra]


def leftovers(*folders: Path) -> list[Path]:
    """Temporaries (``.<name>.XXXX.part...``) anywhere under ``folders``: partial writes left behind."""
    return [p for f in folders if f.exists() for p in f.rglob("*") if ".part" in p.name]


# -- read-only folders -----------------------------------------------------------------------------------------


def simulate_read_only(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int) -> None:
    """Make every operating system call that would create, change or remove something under ``folder`` (or the
    folder itself) fail with ``code`` (``EACCES``: no permission; ``EROFS``: a read-only filesystem), as the
    kernel does for a folder the user may not write in."""
    folder = Path(os.path.abspath(folder))

    def inside(path: Any) -> bool:
        if isinstance(path, int):  # a file descriptor
            return False
        p = Path(os.path.abspath(os.fsdecode(path)))
        return p == folder or folder in p.parents

    def refuse(path: Any) -> OSError:
        return OSError(code, os.strerror(code), os.fsdecode(path))

    real_open, real_os_open = builtins.open, os.open
    writing_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+") and inside(file):
            raise refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & writing_flags and inside(path) and kwargs.get("dir_fd") is None:
            raise refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guarded(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if inside(path) and kwargs.get("dir_fd") is None:
                raise refuse(path)
            return real(path, *args, **kwargs)
        return call

    def guarded2(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            for p in (src, dst):
                if inside(p):
                    raise refuse(p)
            return real(src, dst, *args, **kwargs)
        return call

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    for name in ("mkdir", "rmdir", "unlink", "remove", "chmod", "truncate"):
        monkeypatch.setattr(os, name, guarded(getattr(os, name)))
    for name in ("replace", "rename", "symlink", "link"):
        monkeypatch.setattr(os, name, guarded2(getattr(os, name)))


@pytest.fixture
def real_read_only(tmp_path: Path) -> Iterator[Path]:
    """An empty folder that is really read-only: a read-only tmpfs mount (root), else ``chmod a-w`` (which does
    not stop root). Skipped where neither works."""
    folder = tmp_path / f"read-only {uuid.uuid4().hex[:6]}"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with mounted_tmpfs(folder, "size=64k,ro", "a read-only tmpfs (running as root)"):
        yield folder


READ_ONLY = ["no permission (EACCES, simulated)", "read-only filesystem (EROFS, simulated)", "real"]


@pytest.fixture(params=READ_ONLY)
def read_only(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A read-only empty folder and the words the refusal uses for it."""
    if request.param == "real":
        folder = request.getfixturevalue("real_read_only")
        return folder, "read-only filesystem" if os.geteuid() == 0 else "permission denied"
    folder = tmp_path / "read-only"
    folder.mkdir()
    code = errno.EACCES if "EACCES" in request.param else errno.EROFS
    simulate_read_only(monkeypatch, folder, code)
    return folder, "permission denied" if code == errno.EACCES else "read-only filesystem"


@pytest.mark.parametrize("command", ["infer --output", "export --out"])
def test_read_only_output_folder(weird: dict[str, Path], read_only: tuple[Path, str], command: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`pipeline infer --output` / `export --out` in a read-only folder → "cannot write ...: ... read-only ..."; nothing written."""
    folder, words = read_only
    if command.startswith("infer"):
        argv = infer(weird["bundle"], [weird["scans"] / "patient 0 é.nii.gz"], folder)
    else:
        argv = ["export", str(weird["run"]), "--out", str(folder / "bundle"), "--no-mlflow"]
    refused(argv, capsys, names=[str(folder), words, f"choose another {command.split()[1]} folder"],
            untouched=[folder, weird["scans"], weird["run"]])


@pytest.mark.parametrize("where", ["run folder", "runs/ parent"])
def test_read_only_run_folder(weird: dict[str, Path], read_only: tuple[Path, str], where: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """`pipeline run --run-dir` a read-only folder (or inside one) → one message naming it; no stage runs."""
    folder, words = read_only
    run_dir = folder if where == "run folder" else folder / "tiny" / "r1"
    refused(["run", str(weird["workflow"]), "--run-dir", str(run_dir)], capsys,
            names=[str(run_dir), str(folder), words, "--run-dir"], untouched=[folder, weird["manifest"].parent])


# -- a full disk -----------------------------------------------------------------------------------------------


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("at", ["the second case's labels (and then everything)", "the report, once"])
def test_full_disk_during_infer(weird: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str], at: str) -> None:
    """The disk fills during `pipeline infer` → the batch stops with one message; cases done before stay, resumable."""
    scans = [weird["scans"] / "patient 0 é.nii.gz", weird["scans"] / "patient 1 é.nii.gz",
             weird["scans"] / "scan ü 3.mhd"]
    out = tmp_path / "out"
    labels_fill = at.startswith("the second")
    state = {"labels": 0, "full": False, "report_failed": False}
    first_report = threading.Event()  # the writer thread fills the disk only once case 1's report is written
    real_save, real_write_bytes = nib.save, Path.write_bytes

    def filling_save(img: Any, filename: Any, *args: Any, **kwargs: Any) -> None:
        state["labels"] += 1
        if labels_fill and state["labels"] == 2:
            first_report.wait(10)
            state["full"] = True
        if state["full"]:
            real_write_bytes(Path(filename), b"partial")  # a filling disk: part written, then ENOSPC
            raise no_space()
        real_save(img, filename, *args, **kwargs)

    def filling_write_bytes(self: Path, data: bytes) -> int:
        if state["full"]:
            raise no_space()
        if self.name.startswith(".report.") and not labels_fill and not state["report_failed"]:
            state["report_failed"] = True
            raise no_space()
        written = real_write_bytes(self, data)
        if self.name.startswith(".report.") and self.name.endswith(".csv"):  # report.json, then report.csv
            first_report.set()
        return written

    monkeypatch.setattr(nib, "save", filling_save)
    monkeypatch.setattr(Path, "write_bytes", filling_write_bytes)
    argv = infer(weird["bundle"], scans, out)
    if labels_fill:
        names = ["the batch stopped at patient 1 é", "no space left", str(out / "patient 1 é.nii.gz"),
                 "1 case(s) done before stay", "the report could not be updated", "run the same command again"]
    else:  # case 2 was being written when the report failed: it finishes, so 1 or 2 cases are done
        names = ["the batch stopped at report.json", "no space left", str(out / "report.json"),
                 "case(s) done before stay", f"{out / 'report.csv'} lists them"]
    message = refused(argv, capsys, names=names, seconds=20).message  # a case ran: not a refusal at the door
    done = int(re.search(r"(\d+) case\(s\) done before", message).group(1))
    assert (out / "patient 0 é.nii.gz").is_file() and (out / ".pipeline-infer" / "patient 0 é.nii.gz.json").is_file()
    assert leftovers(out) == []
    report = json.loads((out / "report.json").read_text())
    if labels_fill:  # the last report that fitted: the first case
        assert not (out / "patient 1 é.nii.gz").exists() and done == 1
        assert [c["status"] for c in report["cases"]] == ["written"]
    else:  # written again once there was room: it says why the batch stopped
        assert "no space left" in report["stopped"] and report["counts"]["written"] == done in (1, 2)
    monkeypatch.undo()  # space freed: the same command resumes, skipping the cases done before
    capsys.readouterr()
    assert main(argv) == 0
    assert f"{3 - done} written, {done} skipped" in capsys.readouterr().out


def pytorch_full_disk(real: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.save`` as it fails on a full disk: part of the file written, then an error without an errno."""
    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    return save


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 128 KiB tmpfs: room for a tiny run's data stages, not for its checkpoints (needs root)."""
    mnt = tmp_path / f"petit disque {uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    with mounted_tmpfs(mnt, "size=128k"):
        yield mnt


@pytest.mark.parametrize("how", ["torch.save fails as PyTorch does (simulated)", "a real 128 KiB tmpfs"])
def test_full_disk_during_training(weird: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest,
                                   how: str) -> None:
    """The disk fills at a checkpoint → "no space left ... while writing RUN/train/best.pt" (not "enforce fail ...")."""
    if how.startswith("torch.save"):
        run_dir = tmp_path / "run"
        monkeypatch.setattr(torch, "save", pytorch_full_disk(torch.save))
        monkeypatch.setattr(faults, "free_bytes", lambda folder: 0)  # what a full disk has left
    else:
        run_dir = request.getfixturevalue("small_tmpfs") / "run"
    refused(["run", str(weird["workflow"]), "--run-dir", str(run_dir)], capsys, seconds=30,
            names=["no space left", str(run_dir / "train"), ".pt", "run the same command again to resume"])
    assert leftovers(run_dir) == [] and not (run_dir / "train" / "_stage.json").exists()
    assert (run_dir / "preprocess" / "_stage.json").is_file()  # what fitted stays: the rerun resumes from there


def test_full_disk_in_each_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each writer on a full disk (ENOSPC, or PyTorch's and ITK's errno-less errors) → DiskFullError naming its file."""
    import numpy as np

    from pipeline.cohort.report import Row, write_report
    from pipeline.io.atomic import DiskFullError, write_json
    from pipeline.io.scan import read_scan, write_labels
    from pipeline.tracking.fallback import write_pending
    from pipeline.training.checkpoint import save_checkpoint
    from tests.utils import write_nifti

    scan = read_scan(write_nifti(tmp_path / "src" / "s.nii.gz", np.zeros((4, 3, 2), np.float32), np.eye(4)))
    real_write_bytes = Path.write_bytes
    monkeypatch.setattr(faults, "free_bytes", lambda folder: 0)

    def full(self: Path, data: bytes) -> int:
        real_write_bytes(self, data[:1])
        raise no_space()

    out = tmp_path / "out"
    writers: dict[str, tuple[Callable[[], Any], Path]] = {
        "checkpoint (torch.save)": (lambda: save_checkpoint(out / "train" / "last.pt", {"w": torch.zeros(9)}),
                                    out / "train" / "last.pt"),
        "history / stage record": (lambda: write_json(out / "train" / "history.json", [{"epoch": 1}]),
                                   out / "train" / "history.json"),
        "MLflow fallback": (lambda: write_pending(out, {"format": 1, "runs": []}),
                            out / "mlflow-fallback" / "pending.json"),
        "infer report": (lambda: write_report(out, [Row("a", "a.nii.gz", "written")], {}), out / "report.json"),
        "labels .mhd (ITK)": (lambda: write_labels(scan, np.ones((4, 3, 2), np.uint8), out / "l.mhd"),
                              out / "l.mhd"),
    }
    (out / "train").mkdir(parents=True)
    (out / "mlflow-fallback").mkdir()
    monkeypatch.setattr(torch, "save", pytorch_full_disk(torch.save))
    monkeypatch.setattr(Path, "write_bytes", full)

    def itk_full(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("itk::ERROR: MetaImageIO: could not write file")  # ITK's error carries no errno

    monkeypatch.setattr(sitk, "WriteImage", itk_full)
    for name, (write, target) in writers.items():
        refusal = refused_call(write, DiskFullError, names=[str(target), "no space left", "0 B free"])
        assert refusal.message, name
    assert leftovers(out) == [] and sorted(p.name for p in out.rglob("*")) == ["mlflow-fallback", "train"]


# -- an output path that is a file, or a symlink ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["infer --output", "run --run-dir", "export --out", "export --out --overwrite"])
@pytest.mark.parametrize("shape", ["FILE", "FILE/sub"])
def test_output_path_is_a_file(weird: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               command: str, shape: str) -> None:
    """An output path that is a file (or under one) → "cannot write FILE...: FILE is a file, not a folder"; FILE kept."""
    file = tmp_path / "notes.txt"
    file.write_text("my notes")
    target = file if shape == "FILE" else file / "sub"
    argv = {"infer --output": infer(weird["bundle"], [weird["scans"] / "patient 0 é.nii.gz"], target),
            "run --run-dir": ["run", str(weird["workflow"]), "--run-dir", str(target)],
            "export --out": ["export", str(weird["run"]), "--out", str(target), "--no-mlflow"],
            "export --out --overwrite": ["export", str(weird["run"]), "--out", str(target), "--overwrite",
                                         "--no-mlflow"]}[command]
    flag = command.split()[1]
    refused(argv, capsys, names=[str(target), "a file, not a folder", flag], untouched=[tmp_path])
    assert file.read_text() == "my notes"


@pytest.mark.parametrize("command", ["infer --output", "run --run-dir", "export --out"])
@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_output_path_is_a_broken_symlink(weird: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         command: str, link: str) -> None:
    """An output path that is a dangling symlink or a symlink loop → one message naming the link; nothing created."""
    target = tmp_path / "out"
    if link == "dangling":
        os.symlink(tmp_path / "elsewhere" / "gone", target)
        words = ["a symbolic link to", "which does not exist"]
    else:
        os.symlink(tmp_path / "other", target)
        os.symlink(target, tmp_path / "other")
        words = ["form a loop"]
    argv = {"infer --output": infer(weird["bundle"], [weird["scans"] / "patient 0 é.nii.gz"], target),
            "run --run-dir": ["run", str(weird["workflow"]), "--run-dir", str(target)],
            "export --out": ["export", str(weird["run"]), "--out", str(target), "--no-mlflow"]}[command]
    refused(argv, capsys, names=[str(target), *words], untouched=[tmp_path])
    assert not (tmp_path / "elsewhere").exists()


def test_output_symlink_to_a_folder_is_followed(weird: dict[str, Path], tmp_path: Path) -> None:
    """`--output LINK` where LINK points to a folder elsewhere (a scratch disk) → the outputs land in that folder."""
    scratch = tmp_path / "scratch disk" / "sorties"
    scratch.mkdir(parents=True)
    link = tmp_path / "home" / "out"
    link.parent.mkdir()
    os.symlink(scratch, link)
    assert main(infer(weird["bundle"], [weird["scans"] / "patient 0 é.nii.gz"], link)) == 0
    assert link.is_symlink() and (scratch / "patient 0 é.nii.gz").is_file() and (scratch / "report.csv").is_file()


def test_export_overwrite_of_a_folder_that_is_not_a_bundle(weird: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`pipeline export --out DATA --overwrite` where DATA is not a bundle → refused, DATA untouched (was deleted)."""
    data = tmp_path / "my data"
    data.mkdir()
    (data / "scan.nii.gz").write_bytes(b"precious")
    refused(["export", str(weird["run"]), "--out", str(data), "--overwrite", "--no-mlflow"], capsys,
            names=[str(data), "not a model bundle", "choose another --out"], untouched=[tmp_path])
    assert (data / "scan.nii.gz").read_bytes() == b"precious"


def test_output_file_name_taken_by_a_folder(weird: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`pipeline infer` where an output's file name is an existing folder → that case fails: "it is a folder, not a file"."""
    out = tmp_path / "out"
    (out / "patient 0 é.nii.gz").mkdir(parents=True)
    (out / "patient 0 é.nii.gz" / "keep.txt").write_text("mine")
    refused(infer(weird["bundle"], [weird["scans"] / "patient 0 é.nii.gz"], out), capsys, code=1,
            names=[str(out / "patient 0 é.nii.gz"), "it is a folder, not a file", "failed: "])
    assert (out / "patient 0 é.nii.gz" / "keep.txt").read_text() == "mine" and leftovers(out) == []


@pytest.mark.parametrize("command", ["infer --output", "run --run-dir"])
def test_output_name_too_long(weird: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              command: str) -> None:
    """An output folder name longer than the filesystem allows (255 bytes) → "a name in it is too long"; nothing made."""
    target = tmp_path / ("résultat " * 40)
    argv = (infer(weird["bundle"], [weird["scans"] / "patient 0 é.nii.gz"], target) if command.startswith("infer")
            else ["run", str(weird["workflow"]), "--run-dir", str(target)])
    refused(argv, capsys, names=[str(target), "too long for its filesystem", command.split()[1]],
            untouched=[tmp_path])


# -- what reaches the command line unconverted ----------------------------------------------------------------


def test_environment_oserror_outside_the_writers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """EACCES from code outside the atomic writers (`data fetch --root` in a shared folder) → "error: PATH: permission denied; ..."."""
    folder = tmp_path / "shared"
    folder.mkdir()
    simulate_read_only(monkeypatch, folder, errno.EACCES)
    argv = ["data", "fetch", "msd-prostate", "--root", str(folder / "msd"), "--archive",
            str(tmp_path / "Task05_Prostate.tar"), "--quiet"]
    refused(argv, capsys, names=[str(folder / "msd"), "ermission denied"], untouched=[folder])


# -- spaces and non-ASCII characters in every path -------------------------------------------------------------


def test_spaces_and_non_ascii_in_every_path(weird: dict[str, Path], tmp_path: Path) -> None:
    """`run` + `export` + `infer` with spaces, accents, CJK (and `[2]`) in every path → works end to end, names kept."""
    run_dir, bundle = weird["run"], weird["bundle"]
    assert (run_dir / "summary.json").is_file() and (bundle / "bundle.json").is_file()  # the fixture's run + export
    assert json.loads((bundle / "bundle.json").read_text())["source"]["run_dir"] == str(run_dir)
    out = weird["root"] / f"résultats {uuid.uuid4().hex[:4]} 結果"
    brackets = tmp_path / "entrées [2]" / "scan [2] ü.nii.gz"  # glob characters in a name given as it is
    brackets.parent.mkdir()
    brackets.write_bytes((weird["scans"] / "patient 0 é.nii.gz").read_bytes())
    scans = [weird["scans"] / "patient 1 é.nii.gz", weird["scans"] / "scan ü 3.mhd", brackets]
    assert main(infer(bundle, scans, out, "--save-probabilities")) == 0
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert written == ["patient 1 é.nii.gz", "patient 1 é_probs.nii.gz", "report.csv", "report.json",
                       "scan [2] ü.nii.gz", "scan [2] ü_probs.nii.gz", "scan ü 3.mhd", "scan ü 3.raw",
                       "scan ü 3_probs.nii.gz"]
    assert sitk.ReadImage(str(out / "scan ü 3.mhd")).GetSize() == sitk.ReadImage(
        str(weird["scans"] / "scan ü 3.mhd")).GetSize()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["counts"] == {"written": 3, "skipped": 0, "failed": 0}
    assert {c["case"] for c in report["cases"]} == {"patient 1 é", "scan ü 3", "scan [2] ü"}
    assert snapshot(out)  # and the folder is walkable by name
