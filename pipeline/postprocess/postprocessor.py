"""The postprocessing of one prediction, shared by the postprocess stage and ``pipeline infer``: the registered
steps (:mod:`pipeline.postprocess.steps`) that the ``postprocess`` settings turn on, in order: an optional dense
CRF on the class probabilities, then an optional clean-up keeping each chosen class's largest component."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.config.schema import CRFConfig, PostprocessConfig
from pipeline.io.nifti import spacing_from_affine
from pipeline.postprocess.apply_crf import renormalise, zscore_channels
from pipeline.postprocess.steps import POSTPROCESSORS, CRFInputs, LargestComponent, Step


class Postprocessor:
    """A workflow's (or a bundle's) ``postprocess`` settings applied to predictions.

    Example:
        >>> post = Postprocessor(workflow.postprocess, num_classes=3)
        >>> if post.needs_probabilities:  # CRF on
        ...     labels = post(probs=probs, image=image, spacing=spacing)
        ... else:
        ...     labels = post(labels)

    Args:
        cfg: the ``postprocess`` settings; ``cfg.crf`` (``None``: off) decides whether there is a CRF.
        num_classes: the model's class count, background included.

    Attributes:
        largest_component_classes: the classes that keep only their largest connected component, in order:
            every foreground class ``1 .. num_classes - 1`` for ``keep_largest_component: true``, the listed classes
            for a list, none for ``false``.
        crf: the CRF settings, or ``None`` when there is no CRF.
    """

    def __init__(self, cfg: PostprocessConfig, num_classes: int) -> None:
        steps = []
        for key in type(cfg).model_fields:  # every postprocess key is a registered step
            if key not in POSTPROCESSORS:
                raise ValueError(f"postprocess.{key} has no step: register one in pipeline/postprocess/steps.py")
            step = POSTPROCESSORS.get(key).from_config(getattr(cfg, key), num_classes)
            if step is not None:
                steps.append(step)
        self.steps: list[Step] = sorted(steps, key=lambda s: s.order)
        largest = [s for s in self.steps if isinstance(s, LargestComponent)]
        self.largest_component_classes: list[int] = largest[0].classes if largest else []
        self.crf: CRFConfig | None = cfg.crf

    @property
    def needs_probabilities(self) -> bool:
        """Whether the final labels come from the class probabilities (the CRF is on)."""
        return any(s.needs_probabilities for s in self.steps)

    @property
    def is_identity(self) -> bool:
        """Whether nothing is configured: the final labels are the network's own."""
        return not self.steps

    def _apply(self, labels: np.ndarray | None, inputs: CRFInputs | None, overrides: Mapping[str, float],
               with_probabilities: bool = True) -> np.ndarray:
        for step in self.steps:
            if step.needs_probabilities and not with_probabilities:
                continue
            labels = step(labels, inputs, overrides)
        if labels is None:
            raise ValueError("Postprocessor: without a CRF the final labels come from `labels`; pass them")
        return np.asarray(labels).astype(np.uint8, copy=False)

    def keep_largest(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` as uint8 with the steps that need no probabilities (the largest-component clean-up)."""
        return self._apply(labels, None, {}, with_probabilities=False)

    def labels_without_crf(self, probs: np.ndarray) -> np.ndarray:
        """The labels without the CRF: the argmax of ``probs`` ``(K, *spatial)`` with the same clean-up (what the
        postprocess stage stores in ``no_crf/`` to compare with); uint8 ``(*spatial)``."""
        return self.keep_largest(probs.argmax(0).astype(np.uint8))

    def __call__(self, labels: np.ndarray | None = None, *, probs: np.ndarray | None = None,
                 image: np.ndarray | None = None, spacing: Sequence[float] | None = None,
                 overrides: Mapping[str, float] | None = None) -> np.ndarray:
        """The final labels, uint8 ``(*spatial)``: every step that is on, in order.

        With a CRF: the CRF on ``probs``, ``image`` and ``spacing`` with the settings, ``overrides`` (values chosen
        by ``crf.tune``) replacing some, then the clean-up; ``labels`` are not used. Without: the clean-up of
        ``labels``.

        Args:
            labels: the network's labels ``(*spatial)`` (needed without a CRF).
            probs: ``(K, *spatial)`` float32 class probabilities summing to 1 (needed with a CRF), as
                :func:`~pipeline.postprocess.apply_crf.load_crf_inputs` or :meth:`crf_inputs` give them.
            image: the z-scored image ``(C, *spatial)`` on the same grid (with a CRF).
            spacing: voxel spacing in mm, one value per spatial axis (with a CRF).
            overrides: CRF settings replacing the configured ones (with a CRF).

        Raises:
            ValueError: the inputs the configuration needs are missing.
        """
        if self.needs_probabilities:
            if probs is None or image is None or spacing is None:
                raise ValueError("Postprocessor: the CRF needs `probs`, `image` and `spacing`; pass all three "
                                 "(`needs_probabilities` says when)")
            return self._apply(None, CRFInputs(probs, image, spacing), overrides or {})
        return self._apply(labels, None, overrides or {})

    @staticmethod
    def crf_inputs(probs: np.ndarray, image: np.ndarray,
                   affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """The CRF's inputs from a network's output in memory (``pipeline infer``; the stage reads them with
        :func:`~pipeline.postprocess.apply_crf.load_crf_inputs`).

        Args:
            probs: ``(K, *spatial)`` probabilities (any float type, e.g. float16; clipped to [0, 1], renormalised).
            image: the image the network saw, ``(*spatial)`` or ``(*spatial, C)``.
            affine: its 4x4 voxel-to-world matrix.

        Returns:
            ``probs``, ``image`` and ``spacing`` as :meth:`__call__` takes them.
        """
        nd = probs.ndim - 1
        p = renormalise(np.clip(probs.astype(np.float32), 0, 1) + 1e-8)
        return p, zscore_channels(np.asarray(image), nd), spacing_from_affine(affine, nd)
