"""Fetch the Medical Segmentation Decathlon prostate task (Task05_Prostate) and write our manifest for it.

Back end of ``pipeline data fetch msd-prostate --root DIR``:

1. download ``Task05_Prostate.tar`` into ``DIR`` (through a temporary ``.part`` file, so an interrupted download
   never leaves a truncated archive under the final name) and check its md5; an archive already there with the
   right md5 is not downloaded again;
2. extract it safely into ``DIR`` (every member is checked before anything is written; members that would land
   outside ``DIR``, links pointing outside it and device/fifo members are refused); extraction goes to a temporary
   folder inside ``DIR`` whose top-level entries are then renamed into place;
3. write ``DIR/msd_prostate.json``: MSD's ``dataset.json`` extended with our keys (see :func:`write_msd_manifest`).

The manifest is readable by ``monai.data.load_decathlon_datalist(path, is_segmentation=True, data_list_key=KEY)``
for ``KEY`` in ``training``, ``validation`` and ``test``. MSD's own test images have no labels, so our
validation and test splits are carved deterministically out of the 32 labelled cases; MSD's test images are listed
under ``unlabeled``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.data.splits import rel_to
from pipeline.data.splits import split_counts as shared_split_counts
from pipeline.errors import DataError
from pipeline.io.atomic import atomic_path, write_json

MSD_PROSTATE_URL: str = "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task05_Prostate.tar"
MSD_PROSTATE_MD5: str = "35138f08b1efaef89d7424d2bcc928db"

ARCHIVE_NAME = "Task05_Prostate.tar"
DATASET_FOLDER = "Task05_Prostate"
MANIFEST_NAME = "msd_prostate.json"

MODALITY: dict[str, str] = {"0": "T2", "1": "ADC"}
LABELS: dict[str, str] = {"0": "background", "1": "PZ", "2": "TZ"}

# Split proportions of the 32 labelled cases: 22 training / 4 validation / 6 test.
_REFERENCE_CASES = 32
_REFERENCE_VALIDATION = 4
_REFERENCE_TEST = 6
# Cross-validation folds over the training + validation pool (test cases get fold -1).
NUM_FOLDS = 5

_CHUNK = 1 << 20
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
# download


def file_md5(path: Path) -> str:
    """The hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, target: Path, md5: str | None, progress: bool) -> None:
    """Download ``url`` to ``target`` through a temporary ``.part`` file, checking ``md5`` before the rename."""
    from tqdm import tqdm

    advice = (
        f"Download {url} by hand (browser, curl or wget) and pass it with "
        f"`{_FETCH_HINT} --archive PATH/{ARCHIVE_NAME}`."
    )
    digest = hashlib.md5()
    with atomic_path(target, suffix=".tar") as part:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with (
                    open(part, "wb") as out,
                    tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=target.name,
                        disable=not progress,
                    ) as bar,
                ):
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                if total is not None and part.stat().st_size != total:
                    raise DataError(
                        f"download of {url} was cut short ({part.stat().st_size} of {total} bytes). "
                        f"Run the command again to retry. {advice}"
                    )
        except DataError:
            raise
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise DataError(f"could not download {url}: {reason}. {advice}") from e
        if md5 is not None and digest.hexdigest() != md5.lower():
            raise DataError(
                f"the archive downloaded from {url} has md5 {digest.hexdigest()}, expected {md5.lower()}: the "
                f"download is corrupt or the file on the server changed. It was not kept; run the command again "
                f"to retry. {advice}"
            )


def _check_md5(path: Path, md5: str | None, what: str) -> None:
    if md5 is None:
        return
    actual = file_md5(path)
    if actual != md5.lower():
        raise DataError(
            f"{what} {path} has md5 {actual}, expected {md5.lower()}: the file is corrupt, incomplete or a "
            f"different version. Delete {path} and retry `{_FETCH_HINT}`."
        )


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
        _check_md5(tar_path, md5, "archive")
    else:
        tar_path = root / ARCHIVE_NAME
        if tar_path.is_file():
            _check_md5(tar_path, md5, "existing archive")
        else:
            _download(url, tar_path, md5, progress)

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
# safe extraction


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) is not None


def _resolve(parts: Iterable[str], links: dict[str, str]) -> list[str] | None:
    """Resolve a member path lexically, relative to the destination, following the archive's own symlinks.

    Returns the components of the resolved path, or ``None`` when it escapes the destination (through ``..``,
    an absolute link target or a symlink loop).
    """
    queue = list(parts)
    stack: list[str] = []
    hops = 0
    while queue:
        part = queue.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
            continue
        stack.append(part)
        target = links.get("/".join(stack))
        if target is not None:
            hops += 1
            if hops > 40 or _is_absolute(target):
                return None
            stack.pop()
            queue = target.split("/") + queue
    return stack


def _member_problem(member: tarfile.TarInfo, links: dict[str, str]) -> str | None:
    """Why ``member`` must not be extracted, or ``None`` when it is safe."""
    name = member.name
    if not name or "\x00" in name:
        return f"member {name!r} has an invalid name"
    if _is_absolute(name):
        return f"member {name!r} has an absolute path"
    if member.ischr() or member.isblk() or member.isfifo():
        return f"member {name!r} is a device or fifo"
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return f"member {name!r} has an unsupported type ({member.type!r})"
    parts = PurePosixPath(name).parts
    if member.issym():
        parent = _resolve(parts[:-1], links)
        if parent is None:
            return f"member {name!r} would be written outside the destination"
        if _is_absolute(member.linkname) or _resolve([*parent, *member.linkname.split("/")], links) is None:
            return f"symlink {name!r} points outside the destination ({member.linkname!r})"
        return None
    if _resolve(parts, links) is None:
        return f"member {name!r} would be written outside the destination"
    if member.islnk():
        if _is_absolute(member.linkname) or _resolve(member.linkname.split("/"), links) is None:
            return f"hard link {name!r} points outside the destination ({member.linkname!r})"
    return None


def _open_tar(tar_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(tar_path, "r:*")
    except FileNotFoundError as e:
        raise DataError(f"archive {tar_path} not found.") from e
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(
            f"archive {tar_path} is not a readable tar file ({e}): it is corrupt or incomplete. Delete it and "
            f"download it again."
        ) from e


def safe_extract(tar_path: Path, dest: Path) -> None:
    """Extract ``tar_path`` into ``dest``, refusing unsafe archives.

    Every member is checked before anything is written. An archive with a member whose path resolves outside
    ``dest`` (absolute paths, ``..``, paths through the archive's own symlinks), a symlink or hard link pointing
    outside ``dest``, or a device, fifo or other special member is refused with a :class:`DataError` and nothing
    is extracted.

    Extraction goes into a temporary folder inside ``dest``; only when it has completed are its top-level
    entries renamed into ``dest`` (replacing entries of the same name), so an interrupted extraction never leaves
    a half-extracted folder under its final name.

    Raises:
        DataError: the archive is unreadable or unsafe.
    """
    tar_path = Path(tar_path)
    dest = Path(dest)
    with _open_tar(tar_path) as tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(
                f"archive {tar_path} is corrupt or incomplete ({e}). Delete it and download it again."
            ) from e
        links: dict[str, str] = {}
        for m in members:
            if m.issym() and not _is_absolute(m.name):
                key = _resolve(PurePosixPath(m.name).parts, {})
                if key:
                    links["/".join(key)] = m.linkname
        problems = [p for p in (_member_problem(m, links) for m in members) if p is not None]
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise DataError(
                f"refusing to extract {tar_path} into {dest}: {shown}. The archive is corrupt or malicious; "
                f"nothing was extracted. Delete it and download it again from a trusted source."
            )

        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
        try:
            try:
                if hasattr(tarfile, "data_filter"):  # defence in depth (Python >= 3.11.4)
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - older Pythons; members were checked above
                    tar.extractall(tmp, members=members)
            except (tarfile.TarError, EOFError) as e:
                raise DataError(
                    f"could not extract {tar_path} ({e}): the archive is corrupt, incomplete or unsafe. Delete "
                    f"it and download it again."
                ) from e
            except OSError as e:
                raise DataError(f"could not extract {tar_path} into {dest}: {e}. Check free disk space.") from e
            for entry in sorted(tmp.iterdir()):
                _move_into_place(entry, dest / entry.name, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(src: Path, target: Path, dest: Path) -> None:
    """Rename ``src`` onto ``target``; an existing ``target`` is moved aside first and deleted afterwards."""
    if not (target.exists() or target.is_symlink()):
        os.replace(src, target)
        return
    old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=dest))
    try:
        os.replace(target, old / target.name)
        os.replace(src, target)
    finally:
        shutil.rmtree(old, ignore_errors=True)


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


def split_counts(n: int) -> tuple[int, int, int]:
    """(training, validation, test) sizes for ``n`` labelled cases: 22/4/6 for 32, scaled proportionally.

    With at least 3 cases, validation and test get at least one case each and training keeps at least one;
    with fewer, all cases are training.
    """
    return shared_split_counts(n, _REFERENCE_VALIDATION / _REFERENCE_CASES, _REFERENCE_TEST / _REFERENCE_CASES)


def write_msd_manifest(dataset_dir: Path, out: Path, seed: int = 0) -> dict:
    """Build our manifest from an extracted ``Task05_Prostate`` folder and write it atomically to ``out``.

    Reads ``dataset_dir/dataset.json`` (MSD format). Every labelled case becomes a dict with ``image`` and
    ``label`` (paths relative to ``out``'s folder), ``id`` (file name without ``.nii.gz``), ``fold`` (int) and
    ``spacing`` (the 3 spatial zooms of the image's NIfTI header). Cases are sorted by id, shuffled with
    ``random.Random(seed)`` and cut into ``training`` / ``validation`` / ``test`` (22/4/6 for 32 cases, see
    :func:`split_counts`); training and validation cases get folds ``0..NUM_FOLDS-1`` round-robin in shuffled
    order (for cross-validation over that pool), test cases get fold ``-1``. MSD's unlabelled test images are
    listed under ``unlabeled`` as ``{"id", "image"}`` dicts. macOS ``._*`` entries are ignored.

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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{ds_json} is not valid JSON ({e}); {_redo(dataset_dir)}") from e
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

    # --- deterministic splits
    cases.sort(key=lambda c: c["id"])
    order = list(cases)
    random.Random(seed).shuffle(order)
    n_train, n_val, _ = split_counts(len(order))
    splits = {
        "training": order[:n_train],
        "validation": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    pool = splits["training"] + splits["validation"]
    folds = {c["id"]: i % NUM_FOLDS for i, c in enumerate(pool)}

    folder = out.parent
    manifest = copy.deepcopy(manifest_template())
    manifest["numTraining"] = len(cases)
    manifest["note"] = (
        f"Written by `pipeline data fetch msd-prostate` from {ARCHIVE_NAME}. MSD's test images have no labels, so "
        f"validation and test are carved from the {len(cases)} labelled cases (sorted by id, shuffled with seed "
        f"{seed}); 'fold' is 0..{NUM_FOLDS - 1} over training + validation for cross-validation, -1 for test. "
        f"MSD's unlabelled test images are under 'unlabeled'. Paths are relative to this file's folder."
    )
    for key, members in splits.items():
        manifest[key] = [
            {
                "image": rel_to(c["image_path"], folder),
                "label": rel_to(c["label_path"], folder),
                "id": c["id"],
                "fold": folds.get(c["id"], -1),
                "spacing": c["spacing"],
            }
            for c in sorted(members, key=lambda c: c["id"])
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
    "file_md5",
    "manifest_template",
    "safe_extract",
    "split_counts",
    "write_msd_manifest",
]
