"""Import the RETOUCH retinal OCT fluid challenge into the pipeline's convention.

Layout under ``src`` (searched recursively, e.g. ``RETOUCH-TrainingSet-Cirrus/TRAIN001/``): one folder per volume
with ``oct.mhd`` (+ ``.raw``) and, for training volumes, ``reference.mhd`` (+ ``.raw``). Volumes without a
reference (the test set) are listed under ``unlabeled``.

Conversion (one 3D case per volume, read and written with SimpleITK so spacing, origin and direction are kept;
NIfTI stores them in RAS as usual, nibabel and MONAI read the same geometry back):

* image float32 (Cirrus/Topcon uchar and Spectralis ushort alike), ``(X, Y, Z)`` = (lateral, depth, B-scan);
* label uint8: ``0`` background, ``1`` IRF (intraretinal fluid), ``2`` SRF (subretinal fluid), ``3`` PED
  (pigment epithelial detachment); any other value is an error;
* the vendor (Cirrus, Spectralis, Topcon), when a folder name says it, goes into the case's ``vendor`` key.

Case ids are the volume folder's path below ``src`` joined by ``_`` (e.g. ``RETOUCH-TrainingSet-Cirrus_TRAIN001``).
Writes ``out/retouch.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.importers import IMPORTERS, check_source_ids
from pipeline.data.storage import manifest_base, write_manifest
from pipeline.errors import DataError
from pipeline.io.atomic import atomic_path

NAME = "retouch"
LABELS = {"0": "background", "1": "IRF", "2": "SRF", "3": "PED"}
_VENDORS = ("cirrus", "spectralis", "topcon")


def _read(sitk: Any, path: Path) -> Any:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(f"{NAME}: cannot read {path} (is its .raw file next to it?): "
                        f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from None


def _write(sitk: Any, image: Any, target: Path) -> None:
    with atomic_path(target) as tmp:
        sitk.WriteImage(image, str(tmp), True)


@IMPORTERS.register("retouch")
def import_retouch(src: Path, out: Path, seed: int = 0) -> Path:
    """Convert ``src`` (a RETOUCH set, or a folder of them) into ``out`` and write ``out/retouch.json``.

    Raises:
        DataError: no ``<volume>/oct.mhd`` under ``src``, unreadable files, a reference on another grid or with
            values outside 0..3, or no volume with a reference.
    """
    import SimpleITK as sitk

    src, out = Path(src), Path(out)
    octs = sorted(p for p in src.rglob("oct.mhd") if p.is_file()) if src.is_dir() else []
    if not octs:
        raise DataError(f"no '<volume>/oct.mhd' found under {src}: is this a RETOUCH data set folder (e.g. "
                        "RETOUCH-TrainingSet-Cirrus/TRAIN001/oct.mhd with reference.mhd)?")

    def volume_id(oct_path: Path) -> str:
        return "_".join(oct_path.parent.relative_to(src).parts or (oct_path.parent.name,))

    check_source_ids(NAME, ((volume_id(p), p.parent) for p in octs))
    cases: list[dict[str, Any]] = []
    unlabeled: list[dict[str, Any]] = []
    for oct_path in octs:
        vol_dir = oct_path.parent
        parts = vol_dir.relative_to(src).parts or (vol_dir.name,)
        cid = volume_id(oct_path)
        vendor = next((v.capitalize() for part in reversed((src.resolve().name, *parts)) for v in _VENDORS
                       if v in part.lower()), None)
        image = _read(sitk, oct_path)
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise DataError(f"{NAME}: {oct_path} is not a 3D grey volume (dimension {image.GetDimension()}, "
                            f"{image.GetNumberOfComponentsPerPixel()} component(s))")
        spacing = [float(s) for s in image.GetSpacing()]
        ref_path = vol_dir / "reference.mhd"
        image_f = sitk.Cast(image, sitk.sitkFloat32)
        if not ref_path.is_file():
            target = out / "imagesTs" / f"{cid}.nii.gz"
            _write(sitk, image_f, target)
            unlabeled.append({"id": cid, "image": target, "spacing": spacing})
            continue
        ref = _read(sitk, ref_path)
        if ref.GetSize() != image.GetSize():
            raise DataError(f"{NAME}: {ref_path} has size {ref.GetSize()} but {oct_path} has {image.GetSize()}")
        if not (np.allclose(ref.GetSpacing(), image.GetSpacing(), rtol=1e-4)
                and np.allclose(ref.GetOrigin(), image.GetOrigin(), atol=1e-3)
                and np.allclose(ref.GetDirection(), image.GetDirection(), atol=1e-4)):
            raise DataError(f"{NAME}: {ref_path} and {oct_path} have different geometry (spacing, origin or "
                            "direction)")
        values = np.unique(sitk.GetArrayViewFromImage(ref))
        bad = sorted(set(values.tolist()) - {0, 1, 2, 3})
        if bad:
            raise DataError(f"{NAME}: {ref_path} holds values {bad[:10]}; RETOUCH references hold 0 background, "
                            "1 IRF, 2 SRF, 3 PED")
        label = sitk.Cast(ref, sitk.sitkUInt8)
        label.CopyInformation(image)
        paths = {"label": out / "labelsTr" / f"{cid}.nii.gz", "image": out / "imagesTr" / f"{cid}.nii.gz"}
        _write(sitk, label, paths["label"])
        _write(sitk, image_f, paths["image"])
        case: dict[str, Any] = {"id": cid, **paths, "spacing": spacing}
        if vendor:
            case["vendor"] = vendor
        cases.append(case)
    if not cases:
        raise DataError(f"{NAME}: none of the {len(octs)} volume(s) under {src} has a reference.mhd: is this the "
                        "test set? Import a training set.")
    base = manifest_base(
        NAME,
        "RETOUCH retinal OCT fluid segmentation (Cirrus, Spectralis, Topcon volumes): intraretinal fluid, "
        "subretinal fluid and pigment epithelial detachment.",
        domain="oct_retina", spatial_dims=3, labels=LABELS, channels={"0": "OCT"},
        reference="Bogunovic H. et al., RETOUCH: the retinal OCT fluid detection and segmentation benchmark and "
                  "challenge, IEEE Transactions on Medical Imaging 38(8), 1858-1874 (2019).",
        licence="see the RETOUCH challenge terms",
        source={"url": "https://retouch.grand-challenge.org/", "imported_from": str(src)},
    )
    note = ("Imported by pipeline.data.importers.retouch with SimpleITK (spacing, origin and direction kept); arrays "
            f"(X lateral, Y depth, Z B-scan); image float32, label uint8 0..3. Split by volume, seed {seed}.")
    target = out / f"{NAME}.json"
    write_manifest(target, base, cases, seed=seed, unlabeled=unlabeled, note=note, extra_keys=("vendor",))
    return target
