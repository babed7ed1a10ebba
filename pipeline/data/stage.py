"""The ``prepare`` stage: read the manifest, generate synthetic cases if the manifest says so, check every case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.config.schema import Workflow
from pipeline.data.checks import check_cases
from pipeline.data.generators import GENERATORS
from pipeline.data.manifest import SPLITS, Manifest, case_id, load_manifest
from pipeline.engine.stage import STAGES, Stage, StageContext
from pipeline.errors import DataError
from pipeline.io.atomic import write_json


def manifest_for(workflow: Workflow) -> Manifest:
    """The workflow's manifest with its data root applied."""
    return load_manifest(workflow.data.manifest, workflow.data.root)


def generate_missing(manifest: Manifest, progress: bool = True) -> int:
    """Write the cases whose files are missing, when the manifest names a generator; returns how many."""
    name = manifest.source.get("generator")
    if not name:
        return 0
    if name not in GENERATORS:
        raise DataError(f"{manifest.path}: source.generator: {GENERATORS.unknown_message(name)}")
    generate = GENERATORS.get(name)
    raw = json.loads(manifest.path.read_text())
    entries = {case_id(e): e for s in SPLITS for e in raw.get(s, []) if isinstance(e, dict) and "image" in e}
    missing = [c for c in manifest.all_cases() if not (c.image.is_file() and c.label and c.label.is_file())]
    for case in tqdm(missing, desc=f"generating {manifest.name}", unit="case", disable=not progress or not missing):
        generate(manifest.root, entries[case.id], manifest.source)
    return len(missing)


def _stat(path: str) -> list[int]:
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


@STAGES.register("prepare")
class PrepareStage(Stage):
    """Outputs the checked case list per split, the labels and the channel names."""

    name = "prepare"

    def config(self, workflow: Workflow) -> Any:
        manifest = Path(workflow.data.manifest)
        return {"data": workflow.data.model_dump(mode="json"),
                "manifest": manifest.read_text() if manifest.is_file() else None}

    def is_current(self, workflow: Workflow, outputs: dict[str, Any]) -> bool:
        """The data files are unchanged since they were checked."""
        try:
            return all(_stat(p) == s for p, s in outputs["data_files"].items())
        except (OSError, KeyError):
            return False

    def run(self, ctx: StageContext) -> dict[str, Any]:
        manifest = manifest_for(ctx.workflow)
        generated = generate_missing(manifest, ctx.workflow.train.progress)
        if generated:
            ctx.log.info("[prepare] generated %d synthetic case(s) in %s", generated, manifest.root)
        infos = check_cases(manifest.all_cases(), manifest)
        cases = {s: [vars(i) for i in infos if i.split == s] for s in SPLITS}
        outputs = {
            "files": ["prepare/cases.json"],
            "manifest": str(manifest.path),
            "labels": {str(k): v for k, v in manifest.labels.items()},
            "channels": manifest.channels,
            "spatial_dims": manifest.spatial_dims,
            "domain": manifest.domain,
            "counts": {s: len(v) for s, v in cases.items()},
            "data_files": {p: _stat(p) for i in infos for p in (i.image, i.label)},
        }
        write_json(ctx.stage_dir / "cases.json", cases)
        return outputs


def load_cases(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The checked cases per split, as written by the prepare stage."""
    return json.loads((run_dir / "prepare" / "cases.json").read_text())
