"""The one postprocessing object of the postprocess stage and `pipeline infer`: which classes keep their largest
component, CRF on or off, and the same labels as the code paths it replaces; the CRF parameters derived from
CRFConfig."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.schema import CRFConfig, PostprocessConfig
from pipeline.io.nifti import spacing_from_affine
from pipeline.postprocess.apply_crf import renormalise, run_crf, zscore_channels
from pipeline.postprocess.crf import CRFParams
from pipeline.postprocess.crf.params import RUN_FIELDS
from pipeline.postprocess.largest_component import keep_largest_component
from pipeline.postprocess.postprocessor import Postprocessor
from tests.utils import AFFINES

CRF = CRFConfig(backend="torch", device="cpu", iterations=3)


def _case(seed: int = 0, shape: tuple[int, ...] = (12, 10, 6), k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Random probabilities ``(K, *shape)`` whose argmax has several components per class, and an image."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (k, *shape)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    return probs.astype(np.float32), rng.normal(0, 1, shape).astype(np.float32)


def _old_classes(klc: bool | list[int], num_classes: int) -> list[int]:
    """The class list of the postprocess stage before the Postprocessor."""
    if klc is True:
        return list(range(1, num_classes))
    return list(klc) if klc else []


@pytest.mark.parametrize(("klc", "expected"), [(True, [1, 2, 3]), ([2], [2]), ([3, 1], [3, 1]), (False, []), ([], [])])
def test_largest_component_classes(klc: bool | list[int], expected: list[int]) -> None:
    post = Postprocessor(PostprocessConfig(keep_largest_component=klc), num_classes=4)
    assert post.largest_component_classes == expected == _old_classes(klc, 4)
    assert not post.needs_probabilities and post.crf is None
    assert post.is_identity == (not expected)


def test_crf_on_and_off() -> None:
    on = Postprocessor(PostprocessConfig(crf=CRF), 3)
    assert on.needs_probabilities and on.crf == CRF and not on.is_identity
    off = Postprocessor(PostprocessConfig(), 3)
    assert not off.needs_probabilities and off.crf is None and off.is_identity


@pytest.mark.parametrize("klc", [True, [2], False])
def test_labels_without_crf_is_argmax_and_clean_up(klc: bool | list[int]) -> None:
    probs, _ = _case()
    post = Postprocessor(PostprocessConfig(keep_largest_component=klc, crf=CRF), 3)
    old = keep_largest_component(probs.argmax(0).astype(np.uint8), _old_classes(klc, 3))
    out = post.labels_without_crf(probs)
    assert out.dtype == np.uint8 and np.array_equal(out, old)


@pytest.mark.parametrize("klc", [True, [1], False])
def test_without_crf_cleans_the_labels(klc: bool | list[int]) -> None:
    probs, _ = _case(1)
    labels = probs.argmax(0).astype(np.uint8)
    post = Postprocessor(PostprocessConfig(keep_largest_component=klc), 3)
    out = post(labels)
    assert out.dtype == np.uint8 and np.array_equal(out, keep_largest_component(labels.copy(), _old_classes(klc, 3)))
    if klc:
        assert not np.array_equal(out, labels), "the case must have components to remove"
    with pytest.raises(ValueError, match="labels"):
        post(probs=probs)


@pytest.mark.parametrize("overrides", [None, {"smooth_weight": 1.0, "bilateral_sigma_mm": 5.0}])
@pytest.mark.parametrize("klc", [True, False])
def test_with_crf_equals_the_old_code_path(klc: bool, overrides: dict[str, float] | None) -> None:
    """The stage's path: run_crf with the (tuned) settings, then the clean-up."""
    probs, image = _case(2)
    spacing = [0.8, 1.0, 2.5]
    zimage = zscore_channels(image, 3)
    post = Postprocessor(PostprocessConfig(keep_largest_component=klc, crf=CRF), 3)
    old = keep_largest_component(run_crf(probs, zimage, spacing, CRF, **(overrides or {})).astype(np.uint8),
                                 _old_classes(klc, 3))
    out = post(probs=probs, image=zimage, spacing=spacing, overrides=overrides)
    assert out.dtype == np.uint8 and np.array_equal(out, old)
    assert not np.array_equal(out, post.labels_without_crf(probs)), "the CRF must change the labels here"
    with pytest.raises(ValueError, match="probs"):
        post(probs.argmax(0))


def test_crf_inputs_from_a_network_output() -> None:
    """`pipeline infer`'s preparation of float16 network probabilities, as the cohort runner did it before."""
    probs, image = _case(3)
    half = probs.astype(np.float16)
    affine = AFFINES["oblique"]
    p, z, spacing = Postprocessor.crf_inputs(half, image, affine)
    assert np.array_equal(p, renormalise(np.clip(half.astype(np.float32), 0, 1) + 1e-8))
    assert np.array_equal(z, zscore_channels(image, 3)) and spacing == spacing_from_affine(affine, 3)
    post = Postprocessor(PostprocessConfig(keep_largest_component=True, crf=CRF), 3)
    old = keep_largest_component(run_crf(p, z, spacing, CRF), [1, 2])
    assert np.array_equal(post(probs=p, image=z, spacing=spacing), old)


def test_crf_params_are_derived_from_crf_config() -> None:
    """CRFConfig is the one definition: CRFParams has its fields but where the CRF runs, with its defaults and
    constraints."""
    kernel = [name for name in CRFConfig.model_fields if name not in RUN_FIELDS]
    assert list(CRFParams.model_fields) == kernel
    defaults = CRFConfig()
    assert all(getattr(CRFParams(), name) == getattr(defaults, name) for name in kernel)
    cfg = CRFConfig(iterations=2, smooth_weight=1.5, bbox_margin_mm=3.0)
    params = CRFParams.from_config(cfg, bilateral_weight=4.0)
    assert (params.iterations, params.smooth_weight, params.bbox_margin_mm, params.bilateral_weight) == (2, 1.5, 3.0,
                                                                                                         4.0)
    for bad in ({"smooth_weight": float("inf")}, {"backend": "torch"}, {"iterations": 0}):
        with pytest.raises(ValueError, match=f"CRFParams.{next(iter(bad))}"):
            CRFParams(**bad)


def test_every_postprocess_key_is_a_registered_step() -> None:
    from pipeline.postprocess.steps import POSTPROCESSORS

    assert set(POSTPROCESSORS.names()) == set(PostprocessConfig.model_fields)
    orders = [POSTPROCESSORS.get(n).order for n in POSTPROCESSORS.names()]
    assert len(set(orders)) == len(orders), "two steps with the same order would run in an arbitrary order"
    post = Postprocessor(PostprocessConfig(keep_largest_component=True, crf=CRF), 3)
    assert [type(s).__name__ for s in post.steps] == ["DenseCRF", "LargestComponent"]  # CRF first, then clean-up
    assert Postprocessor(PostprocessConfig(), 3).is_identity
