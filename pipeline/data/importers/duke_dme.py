"""Import the Duke DME OCT data set (Chiu et al. 2015, ``2015_BOE_Chiu``) into the pipeline's convention.

Layout under ``src`` (or ``src/2015_BOE_Chiu``): ``Subject_01.mat`` .. ``Subject_10.mat`` (MATLAB v5, read with
:func:`scipy.io.loadmat`) with ``images`` (496, 768, 61) uint8, ``manualLayers1`` (8, 768, 61) row positions of
the 8 boundaries (NaN or 0 where not annotated) and ``manualFluid1`` (496, 768, 61) instance-labelled fluid
(``grader=2`` reads ``manualLayers2`` / ``manualFluid2``).

Conversion, one 2D case per annotated B-scan (``subjectNN_bSS``, ``SS`` the 0-based B-scan index):

* a B-scan is kept when at least one column has all 8 boundaries finite and > 0; it is cropped laterally to the
  longest contiguous run of such columns (so every kept column is fully annotated);
* arrays are ``(X, Y)`` = (lateral column, depth row); spacing 11.33 um lateral x 3.87 um axial
  (``0.01133, 0.00387`` mm);
* boundaries: MATLAB's 1-based rows minus 1 (0-based), made monotonic down the 8 boundaries (a crossing is
  clipped to the boundary above), saved as float32 ``(8, X)`` ``.npy`` (``boundaries`` key);
* label map (uint8), per column: a pixel at row ``r`` gets the number of boundaries ``b`` with ``r >= b``, i.e.

  ====  =========================================================
  0     vitreous (above ILM)
  1     NFL (ILM - NFL/GCL)
  2     GCL + IPL (NFL/GCL - IPL/INL)
  3     INL (IPL/INL - INL/OPL)
  4     OPL (INL/OPL - OPL/ONL)
  5     ONL + inner segment myoid (OPL/ONL - ISM/ISE)
  6     inner segment ellipsoid + outer segment (ISM/ISE - OS/RPE)
  7     RPE (OS/RPE - BM)
  8     choroid / below BM
  9     fluid (``manualFluid > 0``; overrides the layer)
  ====  =========================================================

  (the row of a boundary belongs to the layer below it), the same convention as
  :mod:`pipeline.data.synthetic_oct`.

Cases are split by subject (no subject in two splits) when there are at least 3 subjects. Writes
``out/duke_dme.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.importers import IMPORTERS, check_source_ids
from pipeline.data.storage import (
    manifest_base,
    parse_spacing,
    save_nifti,
    save_npy,
    spacing_affine,
    write_manifest,
)
from pipeline.data.synthetic_oct import BOUNDARY_NAMES, FLUID, fill_layers
from pipeline.data.synthetic_oct import LABELS as OCT_LABELS
from pipeline.errors import DataError

NAME = "duke_dme"
SPACING = (0.01133, 0.00387)  # mm: lateral, axial
BOUNDARIES = BOUNDARY_NAMES
LABELS = dict(OCT_LABELS)


def _longest_run(valid: np.ndarray) -> tuple[int, int]:
    best, start, best_range = 0, None, (0, 0)
    for i, v in enumerate(list(valid) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best:
                best, best_range = i - start, (start, i)
            start = None
    return best_range


def _load(path: Path, grader: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    import scipy.io

    keys = ("images", f"manualLayers{grader}", f"manualFluid{grader}")
    try:
        mat = scipy.io.loadmat(str(path), variable_names=list(keys))
    except NotImplementedError:
        raise DataError(f"{NAME}: {path} is a MATLAB v7.3 (HDF5) file; re-save it as v5 in MATLAB/Octave "
                        "(save -v7) or install h5py and convert it") from None
    except Exception as exc:  # scipy raises many types for corrupt files
        raise DataError(f"{NAME}: cannot read {path} ({type(exc).__name__}: {exc})") from None
    for key in keys[:2]:
        if key not in mat:
            raise DataError(f"{NAME}: {path} has no '{key}' variable; expected 'images' and "
                            f"'manualLayers{grader}' as in the Duke DME Subject_NN.mat files")
    images = np.asarray(mat["images"])
    layers = np.asarray(mat[keys[1]], dtype=np.float64)
    fluid = np.asarray(mat[keys[2]]) if keys[2] in mat else None
    if images.ndim == 2:
        images, layers = images[:, :, None], layers[:, :, None] if layers.ndim == 2 else layers
        fluid = fluid[:, :, None] if fluid is not None and fluid.ndim == 2 else fluid
    if images.ndim != 3 or layers.ndim != 3 or layers.shape[0] != 8 or layers.shape[1:] != images.shape[1:]:
        raise DataError(f"{NAME}: {path}: 'images' {images.shape} and '{keys[1]}' {layers.shape} do not match the "
                        "Duke layout (rows, cols, B-scans) and (8, cols, B-scans)")
    if fluid is not None and fluid.shape != images.shape:
        raise DataError(f"{NAME}: {path}: '{keys[2]}' has shape {fluid.shape}, expected {images.shape}")
    return images, layers, fluid


@IMPORTERS.register("duke-dme")
def import_duke_dme(src: Path, out: Path, grader: int = 1, spacing: Any = None, seed: int = 0) -> Path:
    """Convert ``src`` (the ``2015_BOE_Chiu`` folder) into ``out`` and write ``out/duke_dme.json``.

    Raises:
        DataError: no ``Subject_NN.mat`` under ``src``, unreadable or malformed files, or no annotated B-scan.
    """
    src, out = Path(src), Path(out)
    if grader not in (1, 2):
        raise DataError(f"{NAME}: grader must be 1 or 2, got {grader!r}")
    mats = sorted(src.glob("Subject_*.mat")) if src.is_dir() else []
    if not mats and (src / "2015_BOE_Chiu").is_dir():
        mats = sorted((src / "2015_BOE_Chiu").glob("Subject_*.mat"))
    if not mats:
        raise DataError(f"no 'Subject_NN.mat' found under {src}: is this the Duke DME folder 2015_BOE_Chiu "
                        "(Subject_01.mat .. Subject_10.mat)?")
    sp = parse_spacing(spacing, 2, SPACING, NAME)
    affine = spacing_affine(sp)

    def subject_of(path: Path) -> str:
        digits = "".join(ch for ch in path.stem if "0" <= ch <= "9")
        return f"subject{int(digits):02d}" if digits else path.stem.lower()

    check_source_ids(NAME, ((f"{subject_of(p)}_b00", p) for p in mats))
    cases: list[dict[str, Any]] = []
    for path in mats:
        subject = subject_of(path)
        images, layers, fluid = _load(path, grader)
        depth = images.shape[0]
        for s in range(images.shape[2]):
            lay = layers[:, :, s]
            with np.errstate(invalid="ignore"):
                valid = np.all(np.isfinite(lay) & (lay > 0), axis=0)
            if not valid.any():
                continue
            c0, c1 = _longest_run(valid)
            rows = np.maximum.accumulate(lay[:, c0:c1] - 1.0, axis=0).astype(np.float32)  # 0-based, monotonic
            label = fill_layers(rows, depth)
            if fluid is not None:
                fl = np.nan_to_num(np.asarray(fluid[:, c0:c1, s], dtype=np.float64), nan=0.0)
                label[fl.T > 0] = FLUID
            image = np.asarray(images[:, c0:c1, s], dtype=np.float32).T
            cid = f"{subject}_b{s:02d}"
            paths = {"boundaries": out / "boundariesTr" / f"{cid}.npy", "label": out / "labelsTr" / f"{cid}.nii.gz",
                     "image": out / "imagesTr" / f"{cid}.nii.gz"}
            save_npy(paths["boundaries"], rows)
            save_nifti(paths["label"], label, affine, np.uint8)
            save_nifti(paths["image"], image, affine, np.float32)
            cases.append({"id": cid, "subject": subject, **paths, "spacing": sp,
                          "columns": [int(c0), int(c1)]})
    if not cases:
        raise DataError(f"{NAME}: no annotated B-scan (all 8 boundaries finite and > 0 in some column) in "
                        f"{len(mats)} file(s) under {src}")
    base = manifest_base(
        NAME,
        "Duke DME SD-OCT (Spectralis) B-scans with 8 manually traced retinal boundaries and fluid, imported: "
        "7 layers between the boundaries, vitreous, choroid and fluid.",
        domain="oct_retina", spatial_dims=2, labels=LABELS, channels={"0": "OCT"},
        reference="Chiu S. J. et al., Kernel regression based segmentation of optical coherence tomography images "
                  "with diabetic macular edema, Biomedical Optics Express 6(4), 1172-1194 (2015).",
        licence="see the Duke data set page (research use)",
        source={"url": "https://people.duke.edu/~sf59/Chiu_BOE_2014_dataset.htm", "imported_from": str(src),
                "grader": grader},
    )
    base["boundary_names"] = list(BOUNDARIES)
    note = (f"Imported by pipeline.data.importers.duke_dme (grader {grader}): annotated B-scans only, cropped to "
            "the longest run of fully annotated columns ('columns' = [first, last+1] of the original 768); arrays "
            "(X lateral, Y depth); 'boundaries' = (8, X) float32 0-based rows in Duke order; label = number of "
            f"boundaries at or above the pixel, fluid = 9. Split by subject, seed {seed}.")
    target = out / f"{NAME}.json"
    write_manifest(target, base, cases, seed=seed, group_key="subject", note=note,
                   extra_keys=("subject", "columns"))
    return target
