"""The base of every workflow section (:mod:`pipeline.config.schema`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are not coerced across types, and numbers are
    finite (NaN and infinity are refused)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
