"""The ``instances`` section of a workflow: objects (cell nuclei) as one id per object."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipeline.config.strict import Strict


class InstancesConfig(Strict):
    """Objects (cell nuclei) as an instance label map, one id per object (``pipeline.instances``)."""

    method: Literal["components", "watershed", "three_class", "distance"] = Field(
        description="components: connected components of the mask; watershed: the mask split at its distance "
        "transform's maxima; three_class: train background / interior / touching boundary with the U-Net border "
        "weights and grow interior seeds; distance: train a normalised distance-to-border channel too and grow "
        "its cores")
    boundary_px: int = Field(default=2, ge=1, le=64, description="three_class: half-width of the touching "
                             "boundary, in pixels of the finest axis")
    border_w0: float = Field(default=10.0, ge=0, le=1000, allow_inf_nan=False,
                             description="three_class: w0 of the border weight map (0: class balance only)")
    border_sigma_px: float = Field(default=5.0, gt=0, le=1000, allow_inf_nan=False,
                                   description="three_class: sigma of the border weight map, in pixels")
    distance_weight: float = Field(default=1.0, gt=0, le=1000, allow_inf_nan=False,
                                   description="distance: weight of the distance term in the loss")
    seed_threshold: float = Field(default=0.5, gt=0, lt=1, allow_inf_nan=False,
                                  description="distance: a nucleus' core is where the predicted normalised distance "
                                  "exceeds this")
    min_size_px: int = Field(default=10, ge=0, le=10**9, description="objects with fewer pixels are dropped")

    def target(self) -> dict[str, Any]:
        """The settings that change training (part of the train and preprocess stage keys)."""
        keys = {"three_class": ("boundary_px", "border_w0", "border_sigma_px"),
                "distance": ("distance_weight",)}.get(self.method, ())
        return {"method": self.method, **{k: getattr(self, k) for k in keys}}

    def decoder(self) -> dict[str, Any]:
        """The decoder's settings (:mod:`pipeline.instances.decode`)."""
        out: dict[str, Any] = {"min_size_px": self.min_size_px}
        if self.method == "distance":
            out["seed_threshold"] = self.seed_threshold
        return out
