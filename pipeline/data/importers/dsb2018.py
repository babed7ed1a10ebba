"""Import the 2018 Data Science Bowl nuclei set (``stage1_train``) into the pipeline's convention.

Layout under ``src``: one folder per image, ``<id>/images/<id>.png`` (RGBA, 8 bit) and ``<id>/masks/*.png``, one
binary PNG per nucleus. Folders without masks (``stage1_test``) are listed under ``unlabeled``.

Conversion:

* image: the RGB channels are averaged (alpha dropped) into one float32 channel, stored ``(X, Y)``; stained
  bright-field images keep their polarity (dark nuclei on a light background);
* instances (uint16): mask ``k`` (in sorted file-name order) becomes id ``k``; where masks overlap (rare in
  DSB 2018) the later mask wins;
* label (uint8): ``0`` background, ``1`` nucleus (``instances > 0``).

DSB 2018 records no pixel size; the spacing defaults to 1.0 per pixel (pass ``spacing=`` in mm to set one).
Writes ``out/dsb2018.json``.
"""

from __future__ import annotations

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

NAME = "dsb2018"
LABELS = {"0": "background", "1": "nucleus"}


def _grey(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float32).mean(axis=-1)
    if arr.ndim != 2:
        raise DataError(f"{NAME}: {path} has shape {arr.shape}; expected a 2D (RGB/RGBA/grey) PNG")
    return arr.astype(np.float32)


@IMPORTERS.register("dsb2018")
def import_dsb2018(src: Path, out: Path, spacing: Any = None, seed: int = 0) -> Path:
    """Convert ``src`` (a DSB 2018 ``stage1_train`` folder) into ``out`` and write ``out/dsb2018.json``.

    Raises:
        DataError: no ``<id>/images/<id>.png`` under ``src``, no case with masks, or unreadable / mismatched PNGs.
    """
    src, out = Path(src), Path(out)
    sp = parse_spacing(spacing, 2, (1.0, 1.0), NAME)
    folders = sorted(d for d in src.iterdir() if d.is_dir() and (d / "images" / f"{d.name}.png").is_file()) \
        if src.is_dir() else []
    if not folders:
        raise DataError(f"no '<id>/images/<id>.png' found under {src}: is this the DSB 2018 stage1_train folder "
                        "(one folder per image id, each with images/ and masks/)?")
    check_source_ids(NAME, ((d.name, d) for d in folders))
    affine = spacing_affine(sp)
    cases: list[dict[str, Any]] = []
    unlabeled: list[dict[str, Any]] = []
    for d in folders:
        cid = d.name
        image = _grey(read_2d_or_stack(d / "images" / f"{cid}.png", NAME), d / "images" / f"{cid}.png")
        masks = sorted((d / "masks").glob("*.png")) if (d / "masks").is_dir() else []
        image_path = out / ("imagesTr" if masks else "imagesTs") / f"{cid}.nii.gz"
        if not masks:
            save_nifti(image_path, image.T, affine, np.float32)
            unlabeled.append({"id": cid, "image": image_path, "spacing": sp})
            continue
        if len(masks) > np.iinfo(np.uint16).max:
            raise DataError(f"{NAME}: {d} has {len(masks)} masks, more than a uint16 instance map holds")
        instances = np.zeros(image.shape, dtype=np.uint16)
        for k, m in enumerate(masks, start=1):
            mask = read_2d_or_stack(m, NAME)
            if mask.ndim == 3:
                mask = mask[..., 0]
            if mask.shape != image.shape:
                raise DataError(f"{NAME}: mask {m} has shape {mask.shape} but image {cid}.png has {image.shape}")
            instances[mask > 0] = k
        label = (instances > 0).astype(np.uint8)
        paths = {"instances": out / "instancesTr" / f"{cid}.nii.gz", "label": out / "labelsTr" / f"{cid}.nii.gz"}
        save_nifti(paths["instances"], instances.T, affine, np.uint16)
        save_nifti(paths["label"], label.T, affine, np.uint8)
        save_nifti(image_path, image.T, affine, np.float32)
        cases.append({"id": cid, "image": image_path, **paths, "spacing": sp})
    if not cases:
        raise DataError(f"no '<id>/masks/*.png' found under {src}: these images have no nucleus masks (is this "
                        "stage1_test rather than stage1_train?)")
    base = manifest_base(
        NAME,
        "2018 Data Science Bowl stage1_train nuclei (fluorescence, bright-field and histology), imported: "
        "semantic nucleus label plus one instance id per nucleus.",
        domain="cell_microscopy", spatial_dims=2, labels=LABELS, channels={"0": "intensity"},
        reference="Caicedo J. C. et al., Nucleus segmentation across imaging experiments: the 2018 Data Science "
                  "Bowl, Nature Methods 16, 1247-1253 (2019).",
        licence="CC0", source={"url": "https://www.kaggle.com/c/data-science-bowl-2018", "imported_from": str(src)},
    )
    note = ("Imported by pipeline.data.importers.dsb2018: RGB averaged to one channel, arrays (X, Y); "
            "instances (uint16) one id per mask PNG in sorted order; "
            f"spacing {'given by the user' if spacing is not None else '1.0 per pixel (DSB 2018 has no pixel size)'}."
            f" Split seed {seed}.")
    target = out / f"{NAME}.json"
    write_manifest(target, base, cases, seed=seed, unlabeled=unlabeled, note=note)
    return target
