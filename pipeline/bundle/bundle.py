"""Export a finished run as a model bundle and load one back from its folder.

Logging a bundle to MLflow and fetching one from there live in :mod:`pipeline.bundle.mlflow_store` (re-exported
here).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from pipeline.bundle.mlflow_store import free_model_name, log_bundle_to_mlflow, resolve_model
from pipeline.config.schema import InferConfig, PostprocessConfig, PreprocessConfig
from pipeline.errors import PipelineError
from pipeline.instances.heads import Head
from pipeline.io.atomic import (
    check_folder,
    disk_full,
    make_folder,
    make_temporary_folder,
    ran_out_of_space,
    write_faults,
)
from pipeline.training.checkpoint import load_checkpoint, refused_pickle

log = logging.getLogger("pipeline")

BUNDLE_FORMAT = "medseg-pipeline-bundle"
# 2: `infer.precision` and `infer.compile`, and an instance head's `head` key; a version-1 reader would refuse the
# first as unknown keys (and misread a three-class head as three classes), so it is told to upgrade instead.
# Version-1 bundles load as before (precision auto, no compile, the classes only).
BUNDLE_FORMAT_VERSION = 2
MANIFEST = "bundle.json"
WEIGHTS = "weights.pt"
VERSIONED_PACKAGES = ("medseg-pipeline", "torch", "monai", "numpy", "nibabel", "simpleitk", "mlflow")

__all__ = ["BUNDLE_FORMAT", "BUNDLE_FORMAT_VERSION", "MANIFEST", "WEIGHTS", "Bundle", "export_bundle", "free_model_name",
           "load_bundle", "log_bundle_to_mlflow", "package_versions", "resolve_model", "write_bundle"]


def package_versions() -> dict[str, str]:
    """Versions of the packages a bundle depends on (and Python's)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} not found") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path} is not valid JSON ({exc})") from None


def export_bundle(run_dir: Path, out_dir: Path, name: str | None = None, overwrite: bool = False) -> Path:
    """Write the bundle of a finished run (its best checkpoint and the settings it was trained and run with).

    Args:
        run_dir: a run folder of ``pipeline run`` whose train stage has finished.
        out_dir: the bundle folder to create; written to a temporary folder first and renamed, so an interrupted
            export leaves nothing behind.
        name: the model's name (default: the workflow's name).
        overwrite: replace an existing ``out_dir``.

    Raises:
        PipelineError: ``run_dir`` is not a finished run, or ``out_dir`` exists and ``overwrite`` is false.
    """
    from pipeline.data.stage import PrepareRecord
    from pipeline.postprocess.stage import PostprocessRecord
    from pipeline.stages import load_run
    from pipeline.training.stage import TrainRecord

    run_dir, out_dir = Path(run_dir).resolve(), _bundle_folder(out_dir)
    if out_dir == run_dir or run_dir.is_relative_to(out_dir):
        raise PipelineError(f"--out {out_dir} would replace the run folder {run_dir}; choose a folder outside it")
    run = load_run(run_dir)
    train = run.need(TrainRecord, "export")
    prepare = run.need(PrepareRecord, "export")
    _check_replaceable(out_dir, overwrite)
    wf = run.workflow
    ckpt = load_checkpoint(run.path(train.best_checkpoint))
    postprocess = wf.postprocess.model_dump(mode="json")
    post = run.get(PostprocessRecord)
    if postprocess.get("crf") and post is not None and post.crf:  # keep the CRF settings tuning chose
        postprocess["crf"] = {**post.crf, "tune": None}
    from pipeline.inference.stage import inference_head

    head = inference_head(ckpt, wf, prepare.num_classes)
    return write_bundle(
        out_dir, name=name or wf.name, model=ckpt["model"], state_dict=ckpt["model_state"], labels=ckpt["labels"],
        channels=ckpt["channels"], spatial_dims=prepare.spatial_dims, head=head.to_json(),
        preprocess=wf.preprocess, infer=wf.infer, postprocess=PostprocessConfig.model_validate(postprocess),
        source={"run_dir": str(run_dir), "workflow": wf.name, "epoch": ckpt.get("epoch"),
                "best_val_dice": train.best_val_dice, "best_epoch": train.best_epoch,
                "train_precision": train.precision,
                "experiment": wf.tracking.experiment or wf.name, "tracking_uri": wf.tracking.tracking_uri},
        extra_files={"workflow.yaml": run.path("workflow.yaml")}, overwrite=overwrite,
    )


def write_bundle(out_dir: Path, *, name: str, model: dict[str, Any], state_dict: dict[str, torch.Tensor],
                 labels: dict[Any, str], channels: list[str], spatial_dims: int, preprocess: PreprocessConfig,
                 infer: InferConfig, postprocess: PostprocessConfig, source: dict[str, Any],
                 extra_files: dict[str, Path] | None = None, overwrite: bool = False,
                 head: dict[str, Any] | None = None) -> Path:
    """Write a bundle folder atomically (a temporary folder renamed into place).

    Args:
        model: ``{"name", "kwargs", "in_channels", "out_channels"}``: a registered model and its arguments.
        state_dict: the weights (tensors only).
        source: where the model came from (``workflow`` names the MLflow experiment it is logged to).
        extra_files: copied into the bundle under their keys (e.g. the run's ``workflow.yaml``).
        head: what the output channels mean and how instances are decoded
            (:meth:`pipeline.instances.heads.Head.to_json`); None: the classes only.
    """
    out_dir = _bundle_folder(out_dir)
    _check_replaceable(out_dir, overwrite)
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "name": name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {**model, "spatial_dims": spatial_dims},
        "labels": {str(k): v for k, v in labels.items()},
        "channels": list(channels),
        "spatial_dims": spatial_dims,
        "preprocess": preprocess.model_dump(mode="json"),
        "infer": infer.model_dump(mode="json"),
        "postprocess": postprocess.model_dump(mode="json"),
        **({"head": head} if head else {}),
        "versions": package_versions(),
        "source": source,
        "weights": {"file": WEIGHTS},
    }
    make_folder(out_dir.parent, "--out folder")
    # A folder with the modes of any other (0o777 less the umask; mkdtemp's 0o700 would lock colleagues out).
    tmp = make_temporary_folder(out_dir.parent, f".{out_dir.name}.", ".part", "--out folder")
    try:
        try:
            torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp / WEIGHTS)
            manifest["weights"]["sha256"] = _sha256(tmp / WEIGHTS)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            for rel, src in (extra_files or {}).items():
                shutil.copyfile(src, tmp / rel)
        except Exception as exc:  # torch.save reports a full disk as a RuntimeError without an errno
            if ran_out_of_space(exc, tmp):
                raise disk_full(out_dir, written=_size(tmp)) from exc
            raise
        old = None
        with write_faults(out_dir, "--out folder", folder=True):
            if out_dir.exists():  # move the old bundle aside first: there is always a complete bundle at out_dir
                old = make_temporary_folder(out_dir.parent, f".{out_dir.name}.", ".old", "--out folder")
                os.replace(out_dir, old / "bundle")
            os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _bundle_folder(out_dir: Path) -> Path:
    """``--out`` as an absolute path, refused first when it cannot be a folder (a file, a dangling symlink, a
    symlink loop); a symlink to a folder is followed."""
    return check_folder(Path(out_dir), "--out folder").resolve()


def _check_replaceable(out_dir: Path, overwrite: bool) -> None:
    """``out_dir`` is free, or (with ``overwrite``) a bundle or an empty folder: ``--overwrite`` never replaces a
    folder of something else (``--out ~/data --overwrite`` would have deleted the data).

    Raises:
        PipelineError: it exists and ``overwrite`` is false, or it is a folder that is not a bundle.
    """
    if not out_dir.exists():
        return
    empty = not any(out_dir.iterdir())
    if not empty and not (out_dir / MANIFEST).is_file():
        raise PipelineError(f"--out {out_dir} is a folder that is not a model bundle (no {MANIFEST}, not empty); "
                            "--overwrite replaces only an earlier bundle: choose another --out")
    if not overwrite:
        raise PipelineError(f"{out_dir} exists; choose another --out or pass --overwrite")


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


@dataclass
class Bundle:
    """A loaded bundle: the network (on the CPU, in eval mode) and its settings."""

    path: Path
    meta: dict[str, Any]
    model: nn.Module
    preprocess: PreprocessConfig
    infer: InferConfig
    postprocess: PostprocessConfig
    digest: str

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): v for k, v in self.meta["labels"].items()}

    @property
    def channels(self) -> list[str]:
        return list(self.meta["channels"])

    @property
    def spatial_dims(self) -> int:
        return int(self.meta["spatial_dims"])

    @property
    def num_classes(self) -> int:
        """The classes of the label maps (background included); an instance head may output more channels."""
        return max(self.labels) + 1 if self.meta.get("labels") else int(self.meta["model"]["out_channels"])

    @property
    def head(self) -> Head:
        """What the network's output channels mean and how instances are decoded (a bundle from before instances:
        the classes only)."""
        return Head.from_json(self.meta.get("head"), self.num_classes)


def load_bundle(path: Path) -> Bundle:
    """Load a bundle folder: check its format and weights digest, build the network and load the weights.

    Raises:
        PipelineError: not a bundle, a newer format, a changed weights file, or weights that do not fit the model.
    """
    from pipeline.models import build_model

    path = Path(path)
    if not (path / MANIFEST).is_file():
        hint = (" (that is a run folder: export it first with `pipeline export RUN_DIR --out MODEL_DIR`)"
                if (path / "train" / "best.pt").is_file() else "")
        raise PipelineError(f"{path} is not a model bundle: no {MANIFEST}{hint}")
    meta = _read_json(path / MANIFEST)
    if meta.get("format") != BUNDLE_FORMAT:
        raise PipelineError(f"{path / MANIFEST} is not a {BUNDLE_FORMAT} manifest")
    if int(meta.get("format_version", 0)) > BUNDLE_FORMAT_VERSION:
        raise PipelineError(f"{path} is bundle format {meta['format_version']}, newer than this pipeline reads "
                            f"({BUNDLE_FORMAT_VERSION}); upgrade medseg-pipeline")
    weights = path / meta["weights"]["file"]
    if not weights.is_file():
        raise PipelineError(f"{path}: weights file {weights.name} is missing")
    digest = _sha256(weights)
    if digest != meta["weights"].get("sha256"):
        raise PipelineError(f"{weights}: sha256 differs from the one in {MANIFEST}; the bundle was changed or "
                            "damaged, export it again")
    try:
        preprocess = PreprocessConfig.model_validate(meta["preprocess"])
        infer = InferConfig.model_validate(meta["infer"])
        postprocess = PostprocessConfig.model_validate(meta["postprocess"])
    except (KeyError, ValidationError) as exc:
        raise PipelineError(f"{path / MANIFEST}: invalid settings ({exc})") from None
    m = meta["model"]
    try:
        model = build_model(m["name"], m["kwargs"], m["in_channels"], m["out_channels"], int(meta["spatial_dims"]))
    except Exception as exc:  # unknown model name or arguments: a bundle from another version of the pipeline
        raise PipelineError(f"{path / MANIFEST}: cannot build model '{m.get('name')}' ({exc}); the bundle may come "
                            f"from another medseg-pipeline version ({meta.get('versions', {}).get('medseg-pipeline')})"
                            ) from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except pickle.UnpicklingError as exc:  # objects that are not tensors: code may come with them
        raise PipelineError(f"{refused_pickle(weights, exc)}; a bundle's weights are plain tensors: export the "
                            "bundle again with `pipeline export`, or get it from a source you trust") from None
    except Exception as exc:
        raise PipelineError(f"{weights}: cannot load the weights into {m['name']} ({exc})") from None
    model.eval()
    current = package_versions()
    for pkg in ("torch", "monai"):
        if meta.get("versions", {}).get(pkg) not in (None, current.get(pkg)):
            log.warning("bundle %s was made with %s %s; running with %s", path, pkg, meta["versions"][pkg],
                        current.get(pkg))
    bundle_digest = hashlib.sha256((path / MANIFEST).read_bytes() + digest.encode()).hexdigest()
    return Bundle(path, meta, model, preprocess, infer, postprocess, bundle_digest)
