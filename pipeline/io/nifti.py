"""Writing predictions on a scan's own grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.errors import PipelineError
from pipeline.io.atomic import atomic_path


def write_like(reference: str | Path, data: np.ndarray, target: str | Path) -> None:
    """Write ``data`` (spatial shape of ``reference``) with the reference's affine, qform, sform and their codes.

    Raises:
        PipelineError: the shape differs from the reference's spatial shape, or the written file's geometry does
            not match the reference (never a silently wrong file).
    """
    ref = nib.load(str(reference))
    spatial = tuple(ref.shape[:3])
    if tuple(data.shape[:3]) != spatial:
        raise PipelineError(f"prediction for {reference} has shape {tuple(data.shape)}, expected {spatial}")
    header = ref.header.copy()
    header.set_data_dtype(data.dtype)
    img = nib.Nifti1Image(data, ref.affine, header=header)
    img.header.set_slope_inter(1.0, 0.0)
    img.set_qform(ref.get_qform(), code=int(ref.header["qform_code"]))
    img.set_sform(ref.get_sform(), code=int(ref.header["sform_code"]))
    with atomic_path(target) as tmp:
        nib.save(img, str(tmp))
        written = nib.load(str(tmp))
        if written.shape != data.shape or not np.allclose(written.affine, ref.affine, atol=1e-5):
            raise PipelineError(f"geometry drift writing {target}: affine or shape differs from {reference}")
