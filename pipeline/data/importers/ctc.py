"""Import a Cell Tracking Challenge training data set (segmentation ground truth) into the pipeline's convention.

Layout under ``src`` (one data set, e.g. ``Fluo-N2DH-GOWT1/``): sequences ``<seq>/tNNN.tif`` (``NNN`` 3 or 4
digits) and their ground truth ``<seq>_GT/SEG/man_segNNN.tif``. The SEG ground truth is sparse in time: only
annotated frames are imported. 3D data sets may annotate single slices as ``man_segNNN_SSS.tif`` (slice ``SSS``
of frame ``NNN``); those become 2D cases (slice ``SSS`` of ``tNNN.tif``).

Conversion:

* a 2D frame -> 2D case ``(X, Y)``; a fully annotated 3D frame -> 3D case ``(X, Y, Z)``; a single annotated slice
  -> 2D case. One manifest holds one dimensionality: when the data set has fully annotated 3D frames only those
  are imported (single-slice annotations are skipped), otherwise the 2D cases are;
* image float32; instances uint16 as in the ground truth (CTC ids kept); label uint8 ``0`` background, ``1`` cell.

Pixel sizes are published per data set on the challenge site but are not reliably stored in the TIFFs, so the
spacing defaults to 1.0 per pixel; pass ``spacing=`` (mm, 2 or 3 values) to set it. Case ids are
``<seq>_tNNN`` or ``<seq>_tNNN_zSSS``. Writes ``out/ctc.json``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.importers import IMPORTERS, check_source_ids
from pipeline.data.storage import (
    manifest_base,
    parse_spacing,
    read_2d_or_stack,
    save_nifti,
    spacing_affine,
    write_manifest,
)
from pipeline.errors import DataError

NAME = "ctc"
LABELS = {"0": "background", "1": "cell"}
_GT = re.compile(r"^man_seg(\d+)(?:_(\d+))?\.tiff?$", re.IGNORECASE)
_RAW = re.compile(r"^t(\d+)\.tiff?$", re.IGNORECASE)


@IMPORTERS.register("ctc")
def import_ctc(src: Path, out: Path, spacing: Any = None, seed: int = 0) -> Path:
    """Convert ``src`` (a CTC training data set folder) into ``out`` and write ``out/ctc.json``.

    Raises:
        DataError: no ``<seq>_GT/SEG/man_segNNN.tif`` under ``src``, a missing sequence folder or frame, or
            shapes that do not match.
    """
    src, out = Path(src), Path(out)
    seg_dirs = sorted(p for p in src.glob("*_GT/SEG") if p.is_dir()) if src.is_dir() else []
    annotations = [(d, f) for d in seg_dirs for f in sorted(d.iterdir()) if _GT.match(f.name)]
    if not annotations:
        raise DataError(f"no '<seq>_GT/SEG/man_segNNN.tif' found under {src}: is this a Cell Tracking Challenge "
                        "training data set folder (with e.g. 01/t000.tif and 01_GT/SEG/man_seg000.tif)?")
    check_source_ids(NAME, ((f"{d.parent.name[: -len('_GT')]}_t000", d.parent) for d in seg_dirs))
    frames: dict[str, dict[int, Path]] = {}
    loaded: dict[Path, np.ndarray] = {}

    def frame(seq: str, t: int) -> np.ndarray:
        if seq not in frames:
            raw_dir = src / seq
            if not raw_dir.is_dir():
                raise DataError(f"{NAME}: ground truth {seq}_GT/ found but no image folder '{seq}/' under {src}")
            frames[seq] = {int(m.group(1)): p for p in raw_dir.iterdir() if (m := _RAW.match(p.name))}
        path = frames[seq].get(t)
        if path is None:
            raise DataError(f"{NAME}: ground truth for frame {t} of sequence '{seq}' but no '{seq}/t{t:03d}.tif' "
                            f"under {src}")
        if path not in loaded:
            loaded.clear()  # keep one frame in memory
            loaded[path] = read_2d_or_stack(path, NAME)
        return loaded[path]

    # pass 1: the dimensionality of each annotation from the TIFF headers only
    def gt_ndim(path: Path) -> int:
        import tifffile

        try:
            with tifffile.TiffFile(str(path)) as tif:
                shape = tuple(s for s in tif.series[0].shape if s != 1) or (1,)
        except Exception as exc:  # tifffile raises many types for corrupt files
            raise DataError(f"{NAME}: cannot read {path} ({type(exc).__name__}: {exc})") from None
        return 3 if len(shape) >= 3 else 2

    kinds: list[tuple[Path, Path, int]] = []
    for d, f in annotations:
        single_slice = _GT.match(f.name).group(2) is not None  # type: ignore[union-attr]
        kinds.append((d, f, 2 if single_slice else gt_ndim(f)))
    ndim = 3 if any(k == 3 for *_, k in kinds) else 2
    skipped = sum(1 for *_, k in kinds if k != ndim)
    sp = parse_spacing(spacing, ndim, (1.0,) * ndim, NAME)
    affine = spacing_affine(sp)
    order = tuple(reversed(range(ndim)))  # (row, col) / (z, row, col) -> (X, Y[, Z])

    # pass 2: read, check and write the cases of that dimensionality
    cases: list[dict[str, Any]] = []
    for seg_dir, gt_path, kind in kinds:
        if kind != ndim:
            continue
        seq = seg_dir.parent.name[: -len("_GT")]
        m = _GT.match(gt_path.name)
        assert m is not None
        t = int(m.group(1))
        z = None if m.group(2) is None else int(m.group(2))
        gt = read_2d_or_stack(gt_path, NAME)
        raw = frame(seq, t)
        if raw.ndim == 3 and raw.shape[-1] in (3, 4) and gt.ndim == 2 and raw.shape[:2] == gt.shape:
            raw = raw[..., :3].mean(axis=-1)  # RGB frame of a 2D set
        if z is not None:
            if raw.ndim != 3:
                raise DataError(f"{NAME}: {gt_path} annotates slice {z} but frame {seq}/t{t:03d} is not a 3D stack "
                                f"(shape {raw.shape})")
            if not 0 <= z < raw.shape[0]:
                raise DataError(f"{NAME}: {gt_path} annotates slice {z} but frame {seq}/t{t:03d} has "
                                f"{raw.shape[0]} slices")
            image = raw[z]
            cid = f"{seq}_t{t:03d}_z{z:03d}"
        else:
            image = raw
            cid = f"{seq}_t{t:03d}"
        gt = np.squeeze(gt) if gt.ndim > ndim else gt
        if gt.shape != image.shape or image.ndim != ndim:
            raise DataError(f"{NAME}: ground truth {gt_path} has shape {gt.shape} but its image has {image.shape}")
        if gt.min() < 0 or gt.max() > np.iinfo(np.uint16).max:
            raise DataError(f"{NAME}: {gt_path} holds ids outside 0..65535")
        instances = gt.astype(np.uint16)
        paths = {"instances": out / "instancesTr" / f"{cid}.nii.gz",
                 "label": out / "labelsTr" / f"{cid}.nii.gz",
                 "image": out / "imagesTr" / f"{cid}.nii.gz"}
        save_nifti(paths["instances"], instances.transpose(order), affine, np.uint16)
        save_nifti(paths["label"], (instances > 0).astype(np.uint8).transpose(order), affine, np.uint8)
        save_nifti(paths["image"], np.asarray(image, dtype=np.float32).transpose(order), affine, np.float32)
        cases.append({"id": cid, "seq": seq, **paths, "spacing": sp})
    base = manifest_base(
        NAME,
        f"Cell Tracking Challenge data set '{src.name}', segmentation ground truth (SEG) frames, imported: "
        "semantic cell label plus instance ids.",
        domain="cell_microscopy", spatial_dims=ndim, labels=LABELS, channels={"0": "intensity"},
        reference="Ulman V. et al., An objective comparison of cell-tracking algorithms, Nature Methods 14, "
                  "1141-1152 (2017); Maska M. et al., The Cell Tracking Challenge: 10 years of objective "
                  "benchmarking, Nature Methods 20, 1010-1020 (2023).",
        licence="see celltrackingchallenge.net (data set terms)",
        source={"url": "https://celltrackingchallenge.net/datasets/", "imported_from": str(src)},
    )
    note = (f"Imported by pipeline.data.importers.ctc: only annotated frames{'/slices' if ndim == 2 else ''}; "
            f"arrays (X, Y{', Z' if ndim == 3 else ''}); "
            f"spacing {'given by the user' if spacing is not None else '1.0 per pixel (not stored in the TIFFs)'}"
            f"{f'; {skipped} single-slice annotation(s) skipped (3D frames imported)' if skipped else ''}. "
            f"Split by sequence when there are >= 3 sequences, else by frame; seed {seed}.")
    target = out / f"{NAME}.json"
    write_manifest(target, base, cases, seed=seed, group_key="seq", note=note)
    return target
