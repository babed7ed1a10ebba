"""Typed models of a workflow file. Every section forbids unknown keys.

Relative paths are resolved before validation by :mod:`pipeline.config.loader`: against the folder of the file
that contains them, or against the current directory for ``--set`` overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Device = Literal["auto", "cpu", "cuda"]
# Paths come from YAML as strings: the one place where a str is accepted for another type.
PathField = Annotated[Path, Field(strict=False)]


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataConfig(Strict):
    """Where the cases come from."""

    manifest: PathField
    root: PathField | None = Field(
        default=None,
        description="folder the manifest's relative image paths start from (default: the manifest's data_root, "
        "else its folder); synthetic manifests generate their files there on first use",
    )
    max_voxels: int = Field(
        default=2**28, ge=1, description="largest scan, in voxels (times channels), read without asking: a header "
        "declaring more is refused before any decompression (raise it for very large scans)",
    )


class IntensityConfig(Strict):
    mode: Literal["zscore", "percentile", "none"] = "zscore"
    lower: float = 0.5
    upper: float = 99.5
    nonzero: bool = False


class PatchConfig(Strict):
    size: list[int] = Field(min_length=2, max_length=3, description="one entry per spatial axis")
    num_samples: int = Field(default=4, ge=1)
    pos: float = Field(default=1.0, ge=0)
    neg: float = Field(default=1.0, ge=0)


class AugmentConfig(Strict):
    flip_prob: float = Field(default=0.0, ge=0, le=1)
    flip_axes: list[int] = Field(default_factory=lambda: [0])
    rotate_prob: float = Field(default=0.0, ge=0, le=1)
    rotate_deg: list[float] = Field(
        default_factory=lambda: [0.0, 0.0, 15.0], min_length=3, max_length=3,
        description="maximum rotation about x, y, z in degrees; 2D images rotate in-plane by the z entry",
    )
    scale_prob: float = Field(default=0.0, ge=0, le=1)
    scale_range: float = Field(default=0.1, ge=0, lt=1, description="zoom in [1 - range, 1 + range]")
    scale_limits: list[float] | None = Field(
        default=None, min_length=2, max_length=2,
        description="explicit [min, max] zoom instead of scale_range, e.g. [0.5, 2.0] as in DeepLab and PSPNet",
    )

    @field_validator("scale_limits")
    @classmethod
    def _limits(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError(f"scale_limits must be [min, max] with 0 < min <= max, not {v}")
        return v
    intensity_prob: float = Field(default=0.0, ge=0, le=1)
    intensity_shift: float = Field(default=0.1, ge=0)
    intensity_scale: float = Field(default=0.1, ge=0)


class PreprocessConfig(Strict):
    """MONAI dictionary transforms: deterministic ones (cached) then random ones (per sample)."""

    orientation: str | None = "RAS"
    spacing: list[float] | None = Field(default=None, min_length=2, max_length=3, description="mm per spatial axis")
    intensity: IntensityConfig = IntensityConfig()
    crop_foreground: bool = False
    crop_margin: int = Field(default=4, ge=0)
    patch: PatchConfig
    augment: AugmentConfig = AugmentConfig()
    nan_policy: Literal["refuse", "fill"] = Field(
        default="refuse", description="NaN or infinite voxels (registration tools write NaN outside the field of "
        "view): refuse the case, or fill them with the scan's smallest finite value and record how many were filled")

    @field_validator("orientation")
    @classmethod
    def _axcodes(cls, v: str | None) -> str | None:
        codes = (v or "").upper().translate(str.maketrans("LPI", "RAS"))
        if v is not None and (len(codes) != 3 or sorted(codes) != ["A", "R", "S"]):
            raise ValueError(f"orientation must be three axis codes such as 'RAS' or 'LPS' (2D images use the first "
                             f"two), not {v!r}")
        return v.upper() if v else v


class ModelConfig(BaseModel):
    """``name`` picks a registered model; every other key is a keyword argument of its constructor."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    name: str

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ComponentConfig(ModelConfig):
    """A registered component (loss, ...) chosen by ``name`` with keyword arguments."""


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.99, ge=0)


class ScheduleConfig(Strict):
    name: Literal["poly", "constant"] = "poly"
    power: float = Field(default=0.9, gt=0)


class SlidingWindowConfig(Strict):
    """How a whole image is predicted from windows (MONAI's sliding-window scheme): shared by inference and by the
    validation during training, which each own their copy."""

    roi_size: list[int] = Field(min_length=2, max_length=3, description="one entry per spatial axis")
    overlap: float = Field(default=0.5, ge=0, lt=1)
    sw_batch_size: int = Field(default=1, ge=1)
    mode: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = Field(default=0.125, gt=0)
    tta_flip_axes: list[int] = Field(default_factory=list, description="spatial axes to mirror for test-time augmentation")

    @field_validator("tta_flip_axes")
    @classmethod
    def _axes(cls, v: list[int]) -> list[int]:
        bad = [a for a in v if a not in (0, 1, 2)]
        if bad:
            raise ValueError(f"spatial axes are 0, 1 or 2, not {bad}")
        return v


class InferConfig(SlidingWindowConfig):
    """Sliding-window prediction of the test cases (the infer stage) and of ``pipeline infer``."""

    device: Device = "auto"


class ValidationConfig(SlidingWindowConfig):
    """Sliding-window settings of the validation Dice computed during training (``train.validation``). Owned by
    the train section, so that changing ``infer`` never retrains; ``roi_size`` defaults to the patch size."""

    roi_size: list[int] | None = Field(  # type: ignore[assignment]
        default=None, min_length=2, max_length=3, description="one entry per spatial axis (default: the patch size)")

    def window(self, patch_size: list[int]) -> SlidingWindowConfig:
        """These settings with the window size filled in."""
        return SlidingWindowConfig(**{**self.model_dump(), "roi_size": list(self.roi_size or patch_size)})


class TrainConfig(Strict):
    """Training. Under several processes (``--nproc``, torchrun) ``batch_size`` and ``iterations_per_epoch`` are per
    process: a step sees ``batch_size x processes`` samples; the learning-rate schedule is unchanged."""

    epochs: int = Field(ge=1)
    iterations_per_epoch: int | None = Field(default=None, ge=1, description="default: one pass over the training cases")
    batch_size: int = Field(default=2, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: ScheduleConfig = ScheduleConfig()
    loss: ComponentConfig = ComponentConfig(name="dice")
    val_every: int = Field(default=5, ge=1)
    amp: bool = True
    num_workers: int = Field(default=0, ge=0)
    device: Device = "auto"
    progress: bool = True
    sync_batchnorm: bool = Field(
        default=False, description="with several processes (pipeline run --nproc N, torchrun), BatchNorm layers "
        "normalise with the statistics of the whole batch across processes (SyncBatchNorm, GPUs only) instead of each "
        "process's share")
    validation: ValidationConfig = Field(
        default_factory=ValidationConfig,
        description="sliding-window settings of the validation during training (default: patch-sized windows)")


class CRFTuneConfig(Strict):
    """Grid searched on the validation cases; the best combination by mean Dice is kept and recorded."""

    smooth_weight: list[float] = Field(default_factory=lambda: [1.0, 3.0], min_length=1)
    bilateral_weight: list[float] = Field(default_factory=lambda: [3.0, 5.0], min_length=1)
    bilateral_sigma_mm: list[float] = Field(default_factory=lambda: [5.0, 10.0], min_length=1)
    bilateral_sigma_intensity: list[float] = Field(default_factory=lambda: [0.25, 0.5], min_length=1)


class CRFConfig(Strict):
    """3D fully connected CRF (Kraehenbuehl & Koltun 2011) on the network's probabilities.

    The one definition of the CRF's settings: :class:`pipeline.postprocess.crf.CRFParams` (the kernel parameters
    the backends take) and the flags of ``pipeline crf`` are derived from these fields, their defaults, constraints
    and descriptions.
    """

    backend: Literal["auto", "torch", "pydensecrf"] = Field(
        default="auto", description="pydensecrf (the reference C++ code, CPU), torch (CPU or CUDA) or auto (torch on "
        "a CUDA device, else pydensecrf)")
    device: Device = Field(default="auto", description="device of the torch backend (auto: CUDA when available)")
    iterations: int = Field(default=5, ge=1, description="mean-field iterations")
    smooth_weight: float = Field(default=3.0, ge=0, allow_inf_nan=False,
                                 description="weight of the smoothness (position only) kernel; 0 turns it off")
    smooth_sigma_mm: float = Field(default=3.0, gt=0, allow_inf_nan=False,
                                   description="width of the smoothness kernel in mm")
    bilateral_weight: float = Field(default=5.0, ge=0, allow_inf_nan=False,
                                    description="weight of the appearance (position + intensity) kernel; 0 turns it "
                                    "off")
    bilateral_sigma_mm: float = Field(default=10.0, gt=0, allow_inf_nan=False,
                                      description="spatial width of the appearance kernel in mm")
    bilateral_sigma_intensity: float = Field(default=0.5, gt=0, allow_inf_nan=False,
                                             description="intensity width of the appearance kernel, in z-scored "
                                             "intensity units")
    bbox_margin_mm: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="only refine the bounding box of the predicted "
        "foreground grown by this margin in mm (the argmax outside it); unset: the whole image")
    tune: CRFTuneConfig | None = Field(default=None, description="grid search of some settings on the validation "
                                       "cases (null: the values above)")


class PostprocessConfig(Strict):
    keep_largest_component: bool | list[int] = Field(
        default=False, description="true for every foreground class, or the list of classes"
    )
    crf: CRFConfig | None = Field(default=None, description="dense CRF on the probabilities (null: off)")


class EvaluateConfig(Strict):
    metrics: list[Literal["dice", "hd95", "asd"]] = Field(default_factory=lambda: ["dice", "hd95", "asd"])
    figures: int = Field(default=3, ge=0, description="test cases drawn in the overview PNG")
    instances: Literal["components", "watershed"] = Field(
        default="components", description="cells: objects from the semantic prediction by connected components, or "
        "by a distance-transform watershed that splits touching nuclei")
    overlays: bool = Field(default=True, description="one PNG per test case (image, reference, prediction on a few "
                           "slices) in evaluate/overlays/, also shown in MLflow")
    overlay_slices: int = Field(default=3, ge=1, le=9, description="slices per overlay (3D scans)")


class TrackingConfig(Strict):
    enabled: bool = True
    experiment: str | None = Field(default=None, description="default: the workflow's name")
    tracking_uri: str | None = Field(
        default=None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current folder"
    )
    log_checkpoint: bool = True
    log_model: bool = Field(default=False, description="at the end of the run, log the trained model as an MLflow "
                            "Model and register it under the workflow's name (as `pipeline export` does)")
    system_metrics: float | None = Field(default=10.0, gt=0, description="seconds between CPU/memory/GPU samples "
                                         "while stages run; null for none")


class Workflow(Strict):
    """A whole workflow file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    seed: int = 0
    data: DataConfig
    preprocess: PreprocessConfig
    model: ModelConfig
    train: TrainConfig
    infer: InferConfig
    postprocess: PostprocessConfig = PostprocessConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
