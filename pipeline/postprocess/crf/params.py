"""Parameters of the fully connected CRF, derived from :class:`pipeline.config.schema.CRFConfig`.

``CRFConfig`` is the one definition of the CRF's settings (names, types, defaults, constraints, descriptions).
Its fields are of two kinds: where the CRF runs and how it is tuned (:data:`RUN_FIELDS`: ``backend`` and
``device``, which :func:`~pipeline.postprocess.crf.dense_crf` takes as arguments of their own, and ``tune``), and
the parameters of the model itself, which :class:`CRFParams` holds. :func:`flag_options` gives ``pipeline crf``
one flag per field but :data:`NOT_FLAGS`, so a new field gets its parameter and its flag without other edits.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError, create_model

from pipeline.config.schema import CRFConfig, Strict

RUN_FIELDS = ("backend", "device", "tune")  # CRFConfig fields that are not parameters of the CRF model
NOT_FLAGS = ("tune",)  # CRFConfig fields without a `pipeline crf` flag (a grid of values, not one)


def _kernel_fields() -> type[Strict]:
    """A frozen, strict model with CRFConfig's fields but :data:`RUN_FIELDS` (each with its default, constraints
    and description)."""
    fields: dict[str, Any] = {name: (field.annotation, field) for name, field in CRFConfig.model_fields.items()
                              if name not in RUN_FIELDS}
    return create_model("CRFKernelFields", __base__=Strict, **fields)


class CRFParams(_kernel_fields()):  # type: ignore[misc]  # the fields come from CRFConfig
    """Parameters of the dense CRF (Krähenbühl & Koltun 2011; DeepLab / DeepMedic style): the fields of
    :class:`~pipeline.config.schema.CRFConfig` but :data:`RUN_FIELDS`, with its defaults and constraints.

    Attributes (see ``CRFConfig`` for their definition):
        iterations: mean-field iterations (>= 1).
        smooth_weight: weight of the smoothness (position-only) Gaussian kernel (>= 0; 0 disables it).
        smooth_sigma_mm: width of the smoothness kernel in millimetres (> 0).
        bilateral_weight: weight of the appearance (position + intensity) kernel (>= 0; 0 disables it).
        bilateral_sigma_mm: spatial width of the appearance kernel in millimetres (> 0).
        bilateral_sigma_intensity: intensity width of the appearance kernel, in the units of the image passed to
            :func:`dense_crf` (callers pass z-scored images) (> 0).
        bbox_margin_mm: when set, the CRF only runs inside the bounding box of the predicted foreground (argmax not
            background) grown by this margin in millimetres; outside it the labels are the argmax. ``None`` runs on
            the whole volume.

    Raises:
        ValueError: (on construction) a value outside its constraints (numbers must be finite), of the wrong type,
            or an unknown name; the message names the parameter.
    """

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = "; ".join(f"CRFParams.{'.'.join(map(str, e['loc']))}: {e['msg'][:1].lower()}{e['msg'][1:]}, "
                                 f"got {e['input']!r}" for e in exc.errors())
            raise ValueError(problems) from None

    @classmethod
    def from_config(cls, cfg: CRFConfig, **overrides: Any) -> CRFParams:
        """The parameters of ``cfg``, with ``overrides`` (e.g. values chosen by ``crf.tune``) replacing some.

        Raises:
            ValueError: an override outside its constraints or not a parameter.
        """
        return cls(**{**{name: getattr(cfg, name) for name in cls.model_fields}, **overrides})


def flag_options() -> dict[str, dict[str, Any]]:
    """``pipeline crf``'s CRF flags: for each CRFConfig field but :data:`NOT_FLAGS`, the keyword arguments of
    ``argparse``'s ``add_argument("--<field-name>")``: the type (or choices), the model's default, and the field's
    description with the default as help. The flag's ``dest`` is the field's name.

    Raises:
        TypeError: a field whose type has no flag form (only numbers, strings, booleans and ``Literal`` choices,
            optional or not, have one); give it one here or add it to :data:`NOT_FLAGS`.
    """
    options: dict[str, dict[str, Any]] = {}
    for name, field in CRFConfig.model_fields.items():
        if name in NOT_FLAGS:
            continue
        kinds = [a for a in _alternatives(field.annotation) if a is not type(None)]
        kind = kinds[0] if len(kinds) == 1 else None
        if get_origin(kind) is Literal:
            choices = list(get_args(kind))
            spec: dict[str, Any] = {"choices": choices, **({} if isinstance(choices[0], str) else
                                                            {"type": type(choices[0])})}
        elif kind is bool:
            spec = {"action": argparse.BooleanOptionalAction}
        elif kind in (int, float, str):
            spec = {"type": kind}
        else:
            raise TypeError(f"CRFConfig.{name}: a field of type {field.annotation} has no `pipeline crf` flag; "
                            "give it one in pipeline/postprocess/crf/params.py or add it to NOT_FLAGS")
        about = (field.description or "").replace("%", "%%")
        options[name] = {**spec, "default": field.get_default(), "help": f"{about} (default: %(default)s)".lstrip()}
    return options


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    """The members of a union (``X | None``, ``Optional[X]``), or the annotation itself."""
    return get_args(annotation) if get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
