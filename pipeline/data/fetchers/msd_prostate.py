"""Fetch the Medical Segmentation Decathlon prostate task (Task05_Prostate) and write our manifest for it.

Back end of ``pipeline data fetch msd-prostate --root DIR``:

1. download ``Task05_Prostate.tar`` into ``DIR`` (through a temporary ``.part`` file, so an interrupted download
   never leaves a truncated archive under the final name) and check its md5; an archive already there with the
   right md5 is not downloaded again (:mod:`pipeline.data.fetchers.download`);
2. extract it safely into ``DIR`` (every member is checked before anything is written; members that would land
   outside ``DIR``, links pointing outside it and device/fifo members are refused); extraction goes to a temporary
   folder inside ``DIR`` whose top-level entries are then renamed into place (:mod:`pipeline.data.fetchers.archive`);
3. write ``DIR/msd_prostate.json``: MSD's ``dataset.json`` extended with our keys (see :func:`write_msd_manifest`).

The manifest is readable by ``monai.data.load_decathlon_datalist(path, is_segmentation=True, data_list_key=KEY)``
for ``KEY`` in ``training``, ``validation`` and ``test``. MSD's own test images have no labels, so our
validation and test splits are carved deterministically out of the 32 labelled cases with the importers' split
(:func:`pipeline.data.splits.split_cases`); MSD's test images are listed under ``unlabeled``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.data.fetchers import register_fetcher
from pipeline.data.fetchers.archive import safe_extract
from pipeline.data.fetchers.download import check_md5, download
from pipeline.data.manifest import case_id_problem
from pipeline.data.splits import NUM_FOLDS, rel_to, split_cases
from pipeline.errors import DataError
from pipeline.io.atomic import write_json

MSD_PROSTATE_URL: str = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task05_Prostate.tar"
MSD_PROSTATE_MD5: str = "35138f08b1efaef89d7424d2bcc928db"

ARCHIVE_NAME = "Task05_Prostate.tar"
DATASET_FOLDER = "Task05_Prostate"
MANIFEST_NAME = "msd_prostate.json"
WORKFLOW = "workflows/vnet_prostate.yaml"

MODALITY: dict[str, str] = {"0": "T2", "1": "ADC"}
LABELS: dict[str, str] = {"0": "background", "1": "PZ", "2": "TZ"}

_FETCH_HINT = "pipeline data fetch msd-prostate --root DIR"


def manifest_template() -> dict[str, Any]:
    """The top-level fields of our MSD prostate manifest, with empty splits (``data_manifests/msd_prostate.json``)."""
    return {
        "name": "msd_prostate",
        "description": (
            "Prostate peripheral zone (PZ) and transition zone (TZ) segmentation from multiparametric MRI "
            "(T2-weighted and ADC); Medical Segmentation Decathlon Task05_Prostate."
        ),
        "domain": "prostate_mri",
        "spatial_dims": 3,
        "tensorImageSize": "4D",
        "modality": dict(MODALITY),
        "channel_names": dict(MODALITY),
        "labels": dict(LABELS),
        "licence": "CC-BY-SA 4.0",
        "reference": (
            "Radboud University, Nijmegen Medical Centre. Antonelli M. et al., The Medical Segmentation Decathlon, "
            "Nature Communications 13, 4128 (2022); Simpson A. L. et al., arXiv:1902.09063 (2019)."
        ),
        "source": {"url": MSD_PROSTATE_URL, "md5": MSD_PROSTATE_MD5, "archive": ARCHIVE_NAME},
        "numTraining": 0,
        "training": [],
        "validation": [],
        "test": [],
        "unlabeled": [],
    }


# --------------------------------------------------------------------------------------------------------------
# fetch


@register_fetcher("msd-prostate", workflow=WORKFLOW)
def fetch_msd_prostate(
    root: Path,
    *,
    url: str = MSD_PROSTATE_URL,
    md5: str | None = MSD_PROSTATE_MD5,
    archive: Path | None = None,
    progress: bool = True,
) -> Path:
    """Download, verify and extract MSD Task05_Prostate into ``root`` and write ``root/msd_prostate.json``.

    Args:
        root: folder that receives ``Task05_Prostate.tar`` (unless ``archive`` is given), the extracted
            ``Task05_Prostate/`` folder and the manifest ``msd_prostate.json``. Created if missing.
        url: where to download the archive from (``https://``, ``http://`` or ``file://``).
        md5: expected md5 of the archive; ``None`` skips the check.
        archive: a local copy of the archive to use instead of downloading (not copied into ``root``).
        progress: show a tqdm progress bar while downloading.

    Returns:
        The path of the manifest written, ``root/msd_prostate.json``.

    Raises:
        DataError: the download failed, the archive's md5 is wrong, the archive is unsafe or malformed, or the
            extracted dataset is incomplete.

    An archive already present as ``root/Task05_Prostate.tar`` with the right md5 is not downloaded again, and an
    already extracted ``root/Task05_Prostate/`` (extraction is all-or-nothing, so it is complete) is not
    extracted again.
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)

    if archive is not None:
        tar_path = Path(archive).expanduser()
        if not tar_path.is_file():
            raise DataError(
                f"archive {tar_path} not found. Pass the path of a downloaded {ARCHIVE_NAME} with --archive, or "
                f"leave --archive out to download it from {url}."
            )
        check_md5(tar_path, md5, "archive", _FETCH_HINT)
    else:
        tar_path = root / ARCHIVE_NAME
        if tar_path.is_file():
            check_md5(tar_path, md5, "existing archive", _FETCH_HINT)
        else:
            download(url, tar_path, md5, progress=progress, retry=_FETCH_HINT)

    dataset_dir = root / DATASET_FOLDER
    if not (dataset_dir / "dataset.json").is_file():
        safe_extract(tar_path, root)
        if not dataset_dir.is_dir():
            raise DataError(
                f"archive {tar_path} has no {DATASET_FOLDER}/ folder: it is not the MSD {ARCHIVE_NAME}. "
                f"Delete it and retry `{_FETCH_HINT}`."
            )
    out = root / MANIFEST_NAME
    write_msd_manifest(dataset_dir, out)
    return out


# --------------------------------------------------------------------------------------------------------------
# manifest


def _norm(mapping: Any) -> dict[str, str] | None:
    if not isinstance(mapping, dict):
        return None
    return {str(k).strip(): str(v).strip().lower() for k, v in mapping.items()}


def _rel_in_dataset(dataset_dir: Path, entry: Any, what: str, ds_json: Path) -> Path:
    if not isinstance(entry, str) or not entry.strip():
        raise DataError(f"{ds_json}: {what} {entry!r} is not a file path. The file is malformed; {_redo(dataset_dir)}")
    rel = PurePosixPath(entry.strip().replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise DataError(f"{ds_json}: {what} {entry!r} is not inside {dataset_dir}; {_redo(dataset_dir)}")
    return dataset_dir.joinpath(*[p for p in rel.parts if p != "."])


def _redo(dataset_dir: Path) -> str:
    return f"delete {dataset_dir} and run `pipeline data fetch msd-prostate --root {dataset_dir.parent}` again."


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def write_msd_manifest(dataset_dir: Path, out: Path, seed: int = 0) -> dict:
    """Build our manifest from an extracted ``Task05_Prostate`` folder and write it atomically to ``out``.

    Reads ``dataset_dir/dataset.json`` (MSD format). Every labelled case becomes a dict with ``image`` and
    ``label`` (paths relative to ``out``'s folder), ``id`` (file name without ``.nii.gz``), ``fold`` (int) and
    ``spacing`` (the 3 spatial zooms of the image's NIfTI header). The cases are split like the importers'
    (:func:`pipeline.data.splits.split_cases`): sorted by id, shuffled with ``random.Random(seed)`` and cut about
    70/10/20 into ``training`` / ``validation`` / ``test`` (23/3/6 for 32 cases); training cases get folds
    ``0..NUM_FOLDS-1`` round-robin in shuffled order (for cross-validation), validation and test cases fold ``-1``.
    MSD's unlabelled test images are listed under ``unlabeled`` as ``{"id", "image"}`` dicts. macOS ``._*``
    entries are ignored.

    Returns:
        The manifest written.

    Raises:
        DataError: ``dataset.json`` is missing or malformed, a file it lists is missing or unreadable, or the
            folder is not the MSD prostate task.
    """
    import nibabel as nib

    dataset_dir = Path(dataset_dir)
    out = Path(out)
    ds_json = dataset_dir / "dataset.json"
    if not ds_json.is_file():
        raise DataError(
            f"{ds_json} not found: {dataset_dir} is not an extracted MSD {DATASET_FOLDER} folder, or the "
            f"extraction is incomplete. Point to the folder that holds dataset.json, or {_redo(dataset_dir)}"
        )
    try:
        meta = json.loads(ds_json.read_text(encoding="utf-8"))
    except RecursionError:
        raise DataError(f"{ds_json} is not valid JSON (nested too deeply); {_redo(dataset_dir)}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: JSONDecodeError, over-long integers
        raise DataError(f"{ds_json} is not valid JSON ({e}); {_redo(dataset_dir)}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
        raise DataError(f"{ds_json} has no 'training' list: it is not an MSD dataset.json; {_redo(dataset_dir)}")

    for key, expected in (("modality", MODALITY), ("labels", LABELS)):
        if key in meta and _norm(meta[key]) != _norm(expected):
            raise DataError(
                f"{ds_json}: '{key}' is {meta[key]!r}, expected {expected!r}: this is not the MSD prostate task "
                f"(Task05_Prostate). Point to the right folder."
            )

    # --- labelled cases
    cases: list[dict[str, Any]] = []
    missing: list[str] = []
    for i, item in enumerate(meta["training"]):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise DataError(
                f"{ds_json}: training entry {i} ({item!r}) needs 'image' and 'label'; {_redo(dataset_dir)}"
            )
        image = _rel_in_dataset(dataset_dir, item["image"], "image", ds_json)
        label = _rel_in_dataset(dataset_dir, item["label"], "label", ds_json)
        if image.name.startswith("._"):
            continue
        for p in (image, label):
            if not p.is_file():
                missing.append(str(p))
        cases.append({"id": _case_id(image), "image_path": image, "label_path": label})

    unlabeled_paths: list[Path] = []
    test_list = meta.get("test", [])
    if not isinstance(test_list, list):
        raise DataError(f"{ds_json}: 'test' is not a list; {_redo(dataset_dir)}")
    for item in test_list:
        entry = item.get("image") if isinstance(item, dict) else item
        image = _rel_in_dataset(dataset_dir, entry, "test image", ds_json)
        if image.name.startswith("._"):
            continue
        if not image.is_file():
            missing.append(str(image))
        unlabeled_paths.append(image)

    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} file(s) listed in {ds_json} are missing: {shown}. The extraction is incomplete; "
            f"{_redo(dataset_dir)}"
        )
    if not cases:
        raise DataError(f"{ds_json} lists no labelled training cases; {_redo(dataset_dir)}")
    ids = [c["id"] for c in cases] + [_case_id(p) for p in unlabeled_paths]
    for cid, p in zip(ids, [c["image_path"] for c in cases] + unlabeled_paths, strict=True):
        problem = case_id_problem(cid)
        if problem is not None:
            raise DataError(f"{ds_json} lists {p}, which would give the case id {cid!r}: {problem}; "
                            f"{_redo(dataset_dir)}")
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"{ds_json} lists case id(s) more than once: {', '.join(dupes)}; {_redo(dataset_dir)}")

    # --- header checks and spacing (headers only: no voxel data is read)
    n_channels = len(MODALITY)
    for case in cases:
        img = _load_header(nib, case["image_path"], dataset_dir)
        lab = _load_header(nib, case["label_path"], dataset_dir)
        if len(img.shape) != 4 or img.shape[3] != n_channels:
            raise DataError(
                f"{case['image_path']} has shape {tuple(img.shape)}, expected a 4D image (X, Y, Z, {n_channels}) "
                f"holding {', '.join(MODALITY.values())}; {_redo(dataset_dir)}"
            )
        lab_shape = tuple(lab.shape[:3]) if len(lab.shape) == 4 and lab.shape[3] == 1 else tuple(lab.shape)
        if lab_shape != tuple(img.shape[:3]):
            raise DataError(
                f"{case['label_path']} has shape {tuple(lab.shape)} but its image {case['image_path']} has "
                f"spatial shape {tuple(img.shape[:3])}; {_redo(dataset_dir)}"
            )
        case["spacing"] = [round(float(z), 6) for z in img.header.get_zooms()[:3]]  # drop float32 noise

    # --- deterministic splits, as for every importer
    splits = split_cases(cases, seed=seed)

    folder = out.parent
    manifest = copy.deepcopy(manifest_template())
    manifest["numTraining"] = len(cases)
    manifest["note"] = (
        f"Written by `pipeline data fetch msd-prostate` from {ARCHIVE_NAME}. MSD's test images have no labels, so "
        f"validation and test are carved from the {len(cases)} labelled cases (sorted by id, shuffled with seed "
        f"{seed}, cut about 70/10/20 as for every imported data set); 'fold' is 0..{NUM_FOLDS - 1} over training "
        f"for cross-validation, -1 for validation and test. MSD's unlabelled test images are under 'unlabeled'. "
        f"Paths are relative to this file's folder."
    )
    for key, members in splits.items():
        manifest[key] = [
            {
                "image": rel_to(c["image_path"], folder),
                "label": rel_to(c["label_path"], folder),
                "id": c["id"],
                "fold": c["fold"],
                "spacing": c["spacing"],
            }
            for c in members
        ]
    manifest["unlabeled"] = [
        {"id": _case_id(p), "image": rel_to(p, folder)} for p in sorted(unlabeled_paths, key=_case_id)
    ]
    write_json(out, manifest)
    return manifest


def _load_header(nib: Any, path: Path, dataset_dir: Path) -> Any:
    try:
        return nib.load(str(path))
    except Exception as e:  # nibabel raises many types for corrupt files
        raise DataError(f"{path} is not a readable NIfTI image ({e}); {_redo(dataset_dir)}") from e


__all__ = [
    "MSD_PROSTATE_MD5",
    "MSD_PROSTATE_URL",
    "fetch_msd_prostate",
    "manifest_template",
    "write_msd_manifest",
]
