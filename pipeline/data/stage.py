"""The ``prepare`` stage: read the manifest, generate synthetic cases if the manifest says so, check every case."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import field_validator
from tqdm import tqdm

from pipeline.config.schema import Workflow
from pipeline.data.checks import CheckedCase, check_cases
from pipeline.data.generators import GENERATORS
from pipeline.data.manifest import SPLITS, Manifest, case_id_problem, load_manifest
from pipeline.engine.hooks import Report
from pipeline.engine.records import digest
from pipeline.engine.stage import STAGES, Stage, StageContext, StageRecord
from pipeline.errors import DataError


def manifest_for(workflow: Workflow) -> Manifest:
    """The workflow's manifest with its data root applied."""
    return load_manifest(workflow.data.manifest, workflow.data.root)


def generate_missing(manifest: Manifest, progress: bool = True) -> int:
    """Write the cases whose files are missing, when the manifest names a generator; returns how many.

    The generator gets each case's manifest entry with its id and its paths as :func:`load_manifest` checked them
    (absolute, resolved, under the data root), so it writes exactly where the checks allowed; the generators check
    the confinement again (:func:`pipeline.data.manifest.confined_path`).
    """
    name = manifest.source.get("generator")
    if not name:
        return 0
    if not isinstance(name, str) or name not in GENERATORS:
        raise DataError(f"{manifest.path}: source.generator: {GENERATORS.unknown_message(str(name))}")
    generate = GENERATORS.get(name)
    missing = [c for c in manifest.all_cases() if not (c.image.is_file() and c.label and c.label.is_file())]
    for case in tqdm(missing, desc=f"generating {manifest.name}", unit="case", disable=not progress or not missing):
        entry = {**case.entry, "id": case.id, "image": str(case.image), "label": str(case.label),
                 **{k: str(v) for k, v in case.extras.items()}}
        generate(manifest.root, entry, manifest.source)
    return len(missing)


def _stat(path: str) -> list[int]:
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


class PrepareRecord(StageRecord):
    """The checked cases per split and what the manifest says about them.

    Attributes:
        manifest: the manifest's path.
        cases: split (``training``, ``validation``, ``test``) → checked cases.
        labels: label value → class name (``{0: "background", 1: ...}``).
        channels: the image channels' names.
        spatial_dims: 2 or 3.
        domain: the manifest's ``domain`` (e.g. ``cells``, ``oct``; empty when not given).
        data_files: size and mtime of every image and label, to notice files changed since they were checked.
        name: the manifest's dataset name.
        manifest_sha256: the digest of the manifest file as read.
    """

    manifest: str
    cases: dict[str, tuple[CheckedCase, ...]]
    labels: dict[int, str]
    channels: tuple[str, ...]
    spatial_dims: int
    domain: str
    data_files: dict[str, tuple[int, int]]
    name: str = ""
    manifest_sha256: str = ""

    @field_validator("cases")
    @classmethod
    def _safe_ids(cls, cases: dict[str, tuple[CheckedCase, ...]]) -> dict[str, tuple[CheckedCase, ...]]:
        """Case ids name the files later stages write: a record (e.g. edited on disk) with an unsafe id is invalid
        (the engine then prepares again, from the manifest, which refuses the id by name)."""
        for split, members in cases.items():
            for c in members:
                problem = case_id_problem(c.id)
                if problem is not None:
                    raise ValueError(f"{split}: {problem}")
        return cases

    @property
    def num_classes(self) -> int:
        """Background included: the largest label value + 1."""
        return max(self.labels) + 1

    def split(self, name: str) -> tuple[CheckedCase, ...]:
        """The cases of one split (empty when the manifest has none)."""
        return self.cases.get(name, ())

    def identity_of(self, splits: tuple[str, ...]) -> str:
        """A digest of what a consumer of only ``splits`` reads: those cases (with their files' size and mtime),
        the labels, the channels and the dimensionality."""
        # `filled` follows from the files and preprocess.nan_policy (the preprocess stage's key): left out, so
        # records made before it was kept keep their identity.
        cases = {s: [c.model_dump(mode="json", exclude={"filled"}) for c in self.split(s)] for s in splits}
        files = {c.image: self.data_files.get(c.image) for s in splits for c in self.split(s)}
        files |= {c.label: self.data_files.get(c.label) for s in splits for c in self.split(s)}
        return digest({"cases": cases, "files": files, "labels": self.labels, "channels": self.channels,
                       "spatial_dims": self.spatial_dims})


TRAINING_SPLITS = ("training", "validation")


def training_identity(name: str, record: StageRecord, execution: str) -> str:
    """:meth:`Stage.upstream_identity` for stages that read only the training and validation cases of prepare."""
    return record.identity_of(TRAINING_SPLITS) if isinstance(record, PrepareRecord) else execution


@STAGES.register("prepare")
class PrepareStage(Stage):
    """Records the checked case list per split, the labels and the channel names."""

    name = "prepare"
    record = PrepareRecord

    def config(self, workflow: Workflow) -> Any:
        manifest = Path(workflow.data.manifest)
        cfg = {"data": workflow.data.model_dump(mode="json"),
               "manifest": manifest.read_text() if manifest.is_file() else None}
        if workflow.preprocess.nan_policy != "refuse":  # what the checks accept; refuse keeps earlier runs' key
            cfg["nan_policy"] = workflow.preprocess.nan_policy
        return cfg

    def is_current(self, workflow: Workflow, record: StageRecord) -> bool:
        """The data files are unchanged since they were checked."""
        assert isinstance(record, PrepareRecord)
        try:
            return all(tuple(_stat(p)) == tuple(s) for p, s in record.data_files.items())
        except OSError:
            return False

    def run(self, ctx: StageContext) -> PrepareRecord:
        manifest = manifest_for(ctx.workflow)
        generated = generate_missing(manifest, ctx.workflow.train.progress)
        if generated:
            ctx.log.info("[prepare] generated %d synthetic case(s) in %s", generated, manifest.root)
        infos = check_cases(manifest.all_cases(), manifest, ctx.workflow.preprocess.nan_policy,
                            max_voxels=ctx.workflow.data.max_voxels)
        for info in infos:
            if info.filled:
                ctx.log.info("[prepare] case '%s': %d NaN or infinite voxel(s) of %s will be filled with the "
                             "scan's minimum (preprocess.nan_policy: fill)", info.id, info.filled, info.image)
        return PrepareRecord(
            manifest=str(manifest.path),
            cases={s: tuple(i for i in infos if i.split == s) for s in SPLITS},
            labels=dict(manifest.labels),
            channels=tuple(manifest.channels),
            spatial_dims=manifest.spatial_dims,
            domain=manifest.domain,
            data_files={p: tuple(_stat(p)) for i in infos for p in (i.image, i.label)},
            name=manifest.name,
            manifest_sha256=hashlib.sha256(manifest.path.read_bytes()).hexdigest(),
        )

    def report(self, ctx: StageContext, record: StageRecord) -> Report:
        """The data as a dataset (name, manifest digest, split sizes, labels) and the digest as a tag."""
        assert isinstance(record, PrepareRecord)
        sha = record.manifest_sha256
        if not sha and Path(record.manifest).is_file():  # a record made before the digest was kept
            sha = hashlib.sha256(Path(record.manifest).read_bytes()).hexdigest()
        name = record.name or Path(record.manifest).stem
        dataset = {"name": name, "digest": sha[:16], "source": record.manifest,
                   "splits": {s: len(record.split(s)) for s in SPLITS if record.split(s)},
                   "labels": {str(k): v for k, v in record.labels.items()}, "channels": list(record.channels),
                   "spatial_dims": record.spatial_dims, "domain": record.domain}
        metrics: dict[str, float] = {}
        if ctx.workflow.preprocess.nan_policy == "fill":  # voxels filled: in all, and per case that had any
            cases = [c for s in SPLITS for c in record.split(s)]
            metrics = {"filled_voxels": float(sum(c.filled for c in cases)),
                       **{f"filled_voxels.{c.id}": float(c.filled) for c in cases if c.filled}}
        return Report(tags={"dataset": name, "manifest_sha256": sha}, dataset=dataset, metrics=metrics)
