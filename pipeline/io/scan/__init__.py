"""Reading a scan in any supported format and writing outputs on exactly its grid.

Supported inputs: NIfTI (``.nii``, ``.nii.gz``, read with nibabel), MetaImage (``.mha``, ``.mhd`` with its
``.raw``/``.zraw``) and NRRD (``.nrrd``), read with SimpleITK, and DICOM series folders (SimpleITK's
``ImageSeriesReader``).

Every scan is presented the same way (:class:`Scan`): voxel data indexed like nibabel, spatial axes ``(x, y[, z])``
first and channels last, and a 4x4 voxel-to-world affine in RAS+ millimetres (the NIfTI convention; ITK's LPS
geometry is converted by negating the first two rows).

Outputs (label maps, class probabilities) are written atomically in the format the target's suffix names, with the
input's own geometry, and every written file's header is read back and compared with the input before it gets its
final name: a file on disk under the final name always sits on the input's grid.

Modules: :mod:`~pipeline.io.scan.names` (suffixes, output names, temporaries), :mod:`~pipeline.io.scan.geometry`
(:class:`Scan`, ITK ↔ RAS geometry), :mod:`~pipeline.io.scan.read` and :mod:`~pipeline.io.scan.write` (with the
read-back check).
"""

from __future__ import annotations

from pipeline.io.scan.geometry import Scan
from pipeline.io.scan.names import SCAN_SUFFIXES, output_name, remove_stale_temporaries, scan_suffix
from pipeline.io.scan.read import is_dicom_series, mhd_data_file, nifti_reference, read_scan
from pipeline.io.scan.write import (
    PROBABILITY_SCALE,
    quantise_probabilities,
    write_labels,
    write_like,
    write_probabilities,
    write_probabilities_like,
)

__all__ = [
    "PROBABILITY_SCALE",
    "SCAN_SUFFIXES",
    "Scan",
    "is_dicom_series",
    "mhd_data_file",
    "nifti_reference",
    "output_name",
    "quantise_probabilities",
    "read_scan",
    "remove_stale_temporaries",
    "scan_suffix",
    "write_labels",
    "write_like",
    "write_probabilities",
    "write_probabilities_like",
]
