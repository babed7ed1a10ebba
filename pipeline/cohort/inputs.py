"""What ``pipeline infer`` segments: the scans named on the command line, one job per scan with its output paths,
the digest of a scan's bytes (part of a case's key) and the outputs earlier runs recorded in the output folder."""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError
from pipeline.io.scan import is_dicom_series, output_name, scan_files, scan_suffix

if TYPE_CHECKING:
    from pipeline.cohort import InferOptions

STATE_DIR = ".pipeline-infer"  # per-case "done" records (key of input + model + options)


@dataclass
class Job:
    """One input and where its outputs go."""

    index: int
    case: str
    input: Path
    output: Path
    probs_output: Path | None


def _manifest_images(path: Path) -> list[Path]:
    from pipeline.data.manifest import load_manifest

    manifest = load_manifest(path)
    cases = manifest.cases.get("test") or manifest.all_cases()
    return [c.image for c in cases]


def _folder_inputs(folder: Path) -> list[Path]:
    if is_dicom_series(folder):
        return [folder]
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and scan_suffix(p) or p.is_dir() and is_dicom_series(p):
            found.append(p)
    return found


def collect_inputs(specs: Sequence[str]) -> list[Path]:
    """Scans named by files, folders (their scans, TIFF and PNG images included, and DICOM series folders), glob
    patterns or manifests (their test cases, else every case).

    Raises:
        PipelineError: a name that matches nothing, or a file in an unsupported format.
    """
    out: list[Path] = []
    for spec in specs:
        pattern = any(c in spec for c in "*?[") and not Path(spec).exists()  # "scan [1].nii.gz" is a file name
        matches = [Path(p) for p in sorted(glob.glob(spec))] if pattern else [Path(spec)]
        if not matches:
            raise PipelineError(f"--input {spec}: the pattern matches no file")
        for p in matches:
            if p.is_dir():
                found = _folder_inputs(p)
                if not found:
                    raise PipelineError(f"--input {p}: no scans in this folder (.nii, .nii.gz, .mha, .mhd, .nrrd, "
                                        ".tif, .tiff, .ome.tif, .png or DICOM series folders)")
                out += found
            elif p.suffix.lower() == ".json":
                out += _manifest_images(p)
            elif not p.exists():
                raise PipelineError(f"--input {p}: no such file or folder")
            elif scan_suffix(p):
                out.append(p)
            elif p.suffix.lower() != ".raw" and not pattern:
                raise PipelineError(f"--input {p}: not a supported scan (.nii, .nii.gz, .mha, .mhd, .nrrd, .tif, "
                                    ".tiff, .ome.tif, .png, a DICOM series folder or a manifest .json)")
    seen: dict[Path, None] = {}
    for p in out:
        seen.setdefault(p.resolve(), None)
    return list(seen)


def plan_jobs(inputs: Sequence[Path], options: InferOptions) -> list[Job]:
    """One job per input; two inputs that would write the same output file are an error."""
    jobs: list[Job] = []
    by_output: dict[Path, Path] = {}
    for i, path in enumerate(inputs):
        name = output_name(path, options.suffix)
        target = options.output / name
        if target in by_output:
            raise PipelineError(f"{path} and {by_output[target]} would both be written to {target}; run them into "
                                "different --output folders or give a --suffix")
        by_output[target] = path
        if target.resolve() == path.resolve():
            raise PipelineError(f"{path} would be overwritten by its own segmentation; choose another --output "
                                "folder or give a --suffix")
        probs = None
        if options.probabilities:
            stem = name[: -len(scan_suffix(Path(name)) or "")]
            probs = options.output / f"{stem}_probs.nii.gz"
            if probs in by_output:
                raise PipelineError(f"{path} and {by_output[probs]} would both write probabilities to {probs}; run "
                                    "them into different --output folders")
            by_output[probs] = path
        case = path.name[: -len(scan_suffix(path) or "")] if path.is_file() else path.name
        jobs.append(Job(i, case, path, target, probs))
    return jobs


def input_digest(path: Path) -> str:
    """sha256 of a scan's bytes: every file of a DICOM folder, a MetaImage or NRRD header with the data files it
    names (:func:`~pipeline.io.scan.scan_files`: a file outside the scan's folder is refused, not read)."""
    try:
        files = scan_files(path)
    except OSError:  # an unreadable header: reading the scan says what is wrong
        files = [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def earlier_outputs(folder: Path) -> set[Path]:
    """Outputs recorded by earlier runs into ``folder`` (so a folder that is both input and output is not
    segmented twice)."""
    found = set()
    for record in (folder / STATE_DIR).glob("*.json"):
        if ".part" in record.name:  # a temporary left by a killed run, not a record
            continue
        try:
            found.add(Path(json.loads(record.read_text())["output"]).resolve())
        except (OSError, ValueError, KeyError):
            continue
    return found
