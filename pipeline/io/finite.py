"""NaN and infinite voxels: counted, and filled when the workflow (``preprocess.nan_policy: fill``) or ``pipeline
infer --nan-policy fill`` asks for it.

Registration and resampling tools write NaN outside the field of view (nibabel's own test image
``resampled_anat_moved.nii`` has 153 such voxels). By default a scan with any NaN or ±inf voxel is refused: a NaN
spreads through interpolation, normalisation and every convolution, so one voxel would spoil the whole prediction.
With ``fill`` each such voxel takes the smallest finite value of its channel (per channel: the channels of a
multi-channel scan have their own units), i.e. the background of the scan, and the count is recorded; a channel
without a single finite voxel has nothing to fill with and is refused.

The same filling runs wherever the model sees an image: the checks of the prepare stage count (and refuse), the
deterministic preprocessing (:class:`FillNonFinited`, so the preprocess stage, the infer stage, validation and
``pipeline infer`` alike) fills, and ``pipeline infer`` fills the scan before preprocessing so that the CRF sees
the same image.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import DataError


def _channels_first(array: np.ndarray, channel_axis: int | None) -> np.ndarray:
    return array[None] if channel_axis is None else np.moveaxis(array, channel_axis, 0)


def count_non_finite(array: np.ndarray, channel_axis: int | None = None) -> tuple[int, list[int]]:
    """How many voxels of ``array`` are NaN or ±inf, and which channels (indices along ``channel_axis``; ``None``:
    one channel) have no finite voxel at all. Integer arrays have none."""
    if not np.issubdtype(np.asarray(array).dtype, np.floating):
        return 0, []
    bad = ~np.isfinite(_channels_first(np.asarray(array), channel_axis))
    per_channel = bad.reshape(len(bad), -1).sum(1)
    empty = [c for c, n in enumerate(per_channel) if n and n == bad[c].size]
    return int(per_channel.sum()), empty


def no_finite_message(name: str, empty: list[int], channels: int) -> str:
    """The refusal of a scan that cannot be filled: ``name`` names it (``"case 'x': image PATH"`` or ``PATH:``)."""
    where = f" in channel(s) {', '.join(map(str, empty))} (counting from 0)" if channels > 1 else ""
    return (f"{name} has no finite voxel{where}: every voxel is NaN or infinite, so there is no minimum to fill "
            "them with (nan_policy fill); check that the file holds the scan, or leave the case out")


def fill_tensor_(data: torch.Tensor) -> tuple[int, list[int]]:
    """Fill the NaN and ±inf voxels of a channel-first tensor in place with each channel's smallest finite
    value; returns how many were filled and the channels left unfilled because they have no finite voxel."""
    filled, empty = 0, []
    if not data.is_floating_point():
        return 0, []
    for c in range(data.shape[0]):
        channel = data[c]
        bad = ~torch.isfinite(channel)
        n = int(torch.count_nonzero(bad))
        if n == 0:
            continue
        if n == channel.numel():
            empty.append(c)
            continue
        channel[bad] = channel[~bad].min()
        filled += n
    return filled, empty


def fill_non_finite(array: np.ndarray, channel_axis: int | None = None, name: str = "the image"
                    ) -> tuple[np.ndarray, int]:
    """``array`` with its NaN and ±inf voxels replaced by the smallest finite value of their channel (a copy; the
    array itself when nothing needs filling), and how many voxels were filled.

    Args:
        channel_axis: the axis of the channels (``None``: a single-channel array).
        name: names the scan in the error (``"case 'x': image PATH"`` or ``"PATH:"``).

    Raises:
        DataError: a channel without one finite voxel.
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating) or bool(np.isfinite(array).all()):
        return array, 0
    out = np.array(array, dtype=array.dtype.newbyteorder("="))  # a writable copy in native byte order
    view = _channels_first(out, channel_axis)
    filled, empty = fill_tensor_(torch.from_numpy(view))  # shares the memory of `out`
    if empty:
        raise DataError(no_finite_message(name, empty, view.shape[0]))
    return out, filled
