"""Reading a scan in any supported format and writing outputs on exactly its grid.

Supported inputs: NIfTI (``.nii``, ``.nii.gz``, read with nibabel), MetaImage (``.mha``, ``.mhd`` with its
``.raw``/``.zraw``) and NRRD (``.nrrd``), read with SimpleITK, DICOM series folders (SimpleITK's
``ImageSeriesReader``), and microscopy images: TIFF (``.tif``, ``.tiff``, ``.ome.tif``, ``.ome.tiff``: 2D images,
z-stacks, OME or ImageJ channels; read with tifffile) and 8/16-bit grey PNG (``.png``, Pillow).

Every scan is presented the same way (:class:`Scan`): voxel data indexed like nibabel, spatial axes ``(x, y[, z])``
first and channels last, and a 4x4 voxel-to-world affine in RAS+ millimetres (the NIfTI convention; ITK's LPS
geometry is converted by negating the first two rows). TIFF and PNG arrays, row-major ``(Z, Y, X)``, are
transposed to ``(x, y, z)`` and get ``diag(pixel size in mm)`` with origin 0, the pipeline's storage convention
(:mod:`~pipeline.io.scan.microscopy` has the pixel-size, colour and label-type rules).

Outputs (label maps, class probabilities) are written atomically in the format the target's suffix names, with the
input's own geometry (a TIFF or PNG label map with the input's pixel size, stated the way the input stated it;
label maps are uint8, or uint16 / uint32 when the ids exceed 255), and every written file's header is read back
and compared with the input before it gets its final name: a file on disk under the final name always sits on the
input's grid.

Headers are checked before any voxel is read (:mod:`~pipeline.io.scan.limits`): data files a header names must lie
in its folder (symbolic links followed), a voxel budget (``max_voxels``) is enforced before decompression, files
shorter than their declared data are refused, and so are complex, bit and colour voxel types and geometries with
zero, negative or non-finite voxel sizes or a singular or non-finite matrix (for TIFF and PNG: truncated strips or
chunks, unknown compressions, colour images whose colours differ, time series, pixel sizes in unknown units).

Modules: :mod:`~pipeline.io.scan.names` (suffixes, output names, temporaries), :mod:`~pipeline.io.scan.geometry`
(:class:`Scan`, ITK ↔ RAS geometry), :mod:`~pipeline.io.scan.headers` (where MetaImage and NRRD headers keep their
data), :mod:`~pipeline.io.scan.limits` (the header checks), :mod:`~pipeline.io.scan.nifti_header` (the NIfTI header
check), :mod:`~pipeline.io.scan.itk` (MetaImage and NRRD with SimpleITK), :mod:`~pipeline.io.scan.dicom` (DICOM
series), :mod:`~pipeline.io.scan.microscopy` (the TIFF and PNG conventions), :mod:`~pipeline.io.scan.tiff`,
:mod:`~pipeline.io.scan.png`, :mod:`~pipeline.io.scan.read` (reading any of them) and
:mod:`~pipeline.io.scan.write` (with the read-back check).
"""

from __future__ import annotations

from pipeline.io.scan.geometry import Scan
from pipeline.io.scan.limits import DEFAULT_MAX_VOXELS
from pipeline.io.scan.names import SCAN_SUFFIXES, output_name, remove_stale_temporaries, scan_suffix
from pipeline.io.scan.read import check_nifti, is_dicom_series, mhd_data_file, nifti_reference, read_scan, scan_files
from pipeline.io.scan.write import (
    PROBABILITY_SCALE,
    label_array,
    quantise_probabilities,
    write_labels,
    write_like,
    write_probabilities,
    write_probabilities_like,
)

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "PROBABILITY_SCALE",
    "SCAN_SUFFIXES",
    "Scan",
    "check_nifti",
    "is_dicom_series",
    "label_array",
    "mhd_data_file",
    "nifti_reference",
    "output_name",
    "quantise_probabilities",
    "read_scan",
    "remove_stale_temporaries",
    "scan_files",
    "scan_suffix",
    "write_labels",
    "write_like",
    "write_probabilities",
    "write_probabilities_like",
]
