"""Typed models of a workflow file. Every section forbids unknown keys.

Relative paths are resolved before validation by :mod:`pipeline.config.loader`: against the folder of the file
that contains them, or against the current directory for ``--set`` overrides.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.config.instances import InstancesConfig
from pipeline.config.strict import Strict

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # pipeline.runtime.precision resolves it on the device
PRECISION_HELP = ("arithmetic of the network: auto = bf16 where the CPU or GPU multiplies it in hardware (fp16 on "
                  "older GPUs), else fp32; fp32, bf16 or fp16 to force one")
MAX_PATH_LENGTH = 4096  # PATH_MAX on Linux


def _usable_path(p: Path) -> Path:
    text = str(p)
    if "\x00" in text or len(text) > MAX_PATH_LENGTH:
        raise ValueError(f"not a usable path (a NUL byte, or longer than {MAX_PATH_LENGTH} characters)")
    return p


# Paths come from YAML as strings: the one place where a str is accepted for another type.
PathField = Annotated[Path, Field(strict=False), AfterValidator(_usable_path)]

# Upper bounds of counts and sizes: far above any real workflow, low enough that a typo (an extra zero, 1e26) is
# refused by name instead of running for ever or allocating without bound.
MAX_EPOCHS = 1_000_000
MAX_ITERATIONS = 10_000_000
MAX_BATCH = 4096
MAX_WINDOW_AXIS = 16_384  # voxels along one axis of a patch or sliding window
MAX_SEED = 2**31 - 1  # numpy seeds are below 2**32; training adds the epoch and the rank to the seed
# A workflow name is a folder of runs/ and an MLflow experiment: a plain file name.
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")

# A size along each spatial axis, in voxels.
AxisSize = Annotated[int, Field(ge=1, le=MAX_WINDOW_AXIS)]
# A spatial axis of the data (0, 1, and 2 for 3D data; the loader checks it against the manifest's dimensions).
SpatialAxis = Annotated[int, Field(ge=0, le=2)]
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a run folder (``runs/<name>``), or None when it can."""
    if SAFE_NAME.fullmatch(name) is None:
        return ("must be a plain folder name of at most 128 letters, digits, '_', '-' and '.', not starting with "
                "'.' (it names the folder runs/<name>)")
    return None


def _unique_axes(v: list[int]) -> list[int]:
    if len(set(v)) != len(v):
        raise ValueError(f"each spatial axis may be listed once, not {v}")
    return v


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
    lower: float = Field(default=0.5, ge=0, lt=100, description="lower percentile (percentile mode), 0 to 100")
    upper: float = Field(default=99.5, gt=0, le=100, description="upper percentile (percentile mode), above lower")
    nonzero: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntensityConfig:
        if not self.lower < self.upper:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, not lower={self.lower} and "
                             f"upper={self.upper}")
        return self


class PatchConfig(Strict):
    size: list[AxisSize] = Field(min_length=2, max_length=3, description="one entry per spatial axis, in voxels")
    num_samples: int = Field(default=4, ge=1, le=1024)
    pos: float = Field(default=1.0, ge=0)
    neg: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _some_patches(self) -> PatchConfig:
        if self.pos + self.neg <= 0:
            raise ValueError("pos and neg are relative frequencies of foreground- and background-centred patches: "
                             f"at least one must be above 0, not pos={self.pos} and neg={self.neg}")
        return self


class AugmentConfig(Strict):
    flip_prob: float = Field(default=0.0, ge=0, le=1)
    flip_axes: list[SpatialAxis] = Field(default_factory=lambda: [0], description="spatial axes to mirror")
    rotate_prob: float = Field(default=0.0, ge=0, le=1)
    rotate_deg: list[Annotated[float, Field(ge=0, le=180)]] = Field(
        default_factory=lambda: [0.0, 0.0, 15.0], min_length=3, max_length=3,
        description="maximum rotation about x, y, z in degrees (0 to 180); 2D images rotate in-plane by the z entry",
    )
    scale_prob: float = Field(default=0.0, ge=0, le=1)
    scale_range: float = Field(default=0.1, ge=0, lt=1, description="zoom in [1 - range, 1 + range]")
    scale_limits: list[Positive] | None = Field(
        default=None, min_length=2, max_length=2,
        description="explicit [min, max] zoom instead of scale_range, e.g. [0.5, 2.0] as in DeepLab and PSPNet",
    )

    @field_validator("scale_limits")
    @classmethod
    def _limits(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError(f"scale_limits must be [min, max] with 0 < min <= max, not {v}")
        return v

    _flip_axes = field_validator("flip_axes")(_unique_axes)
    intensity_prob: float = Field(default=0.0, ge=0, le=1)
    intensity_shift: float = Field(default=0.1, ge=0, description="largest intensity offset (normalised units)")
    intensity_scale: float = Field(default=0.1, ge=0, lt=1, description="intensities are scaled by 1 + f with "
                                   "|f| up to this (below 1, so that intensities keep their sign)")


class PreprocessConfig(Strict):
    """MONAI dictionary transforms: deterministic ones (cached) then random ones (per sample)."""

    orientation: str | None = "RAS"
    spacing: list[Positive] | None = Field(default=None, min_length=2, max_length=3,
                                           description="mm per spatial axis (each above 0)")
    intensity: IntensityConfig = IntensityConfig()
    crop_foreground: bool = False
    crop_margin: int = Field(default=4, ge=0, le=MAX_WINDOW_AXIS)
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
            raise ValueError("orientation must be three axis codes such as 'RAS' or 'LPS' (2D images use the first "
                             "two)")
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
    momentum: float = Field(default=0.99, ge=0, lt=1)


class ScheduleConfig(Strict):
    name: Literal["poly", "constant"] = "poly"
    power: float = Field(default=0.9, gt=0)


class SlidingWindowConfig(Strict):
    """How a whole image is predicted from windows (MONAI's sliding-window scheme): shared by inference and by the
    validation during training, which each own their copy."""

    roi_size: list[AxisSize] = Field(min_length=2, max_length=3, description="one entry per spatial axis, in voxels")
    overlap: float = Field(default=0.5, ge=0, lt=1)
    sw_batch_size: int = Field(default=1, ge=1, le=MAX_BATCH)
    mode: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = Field(default=0.125, gt=0)
    tta_flip_axes: list[SpatialAxis] = Field(default_factory=list,
                                             description="spatial axes to mirror for test-time augmentation")

    _axes = field_validator("tta_flip_axes")(_unique_axes)


class InferConfig(SlidingWindowConfig):
    """Sliding-window prediction of the test cases (the infer stage) and of ``pipeline infer``."""

    device: Device = "auto"
    precision: Precision = Field(default="auto", description=PRECISION_HELP)
    compile: bool = Field(default=False, description="torch.compile the network before the first case (a warm-up "
                          "of a minute or more; pays off on long cohorts, see the README)")


class ValidationConfig(SlidingWindowConfig):
    """Sliding-window settings of the validation Dice computed during training (``train.validation``). Owned by
    the train section, so that changing ``infer`` never retrains; ``roi_size`` defaults to the patch size."""

    roi_size: list[AxisSize] | None = Field(  # type: ignore[assignment]
        default=None, min_length=2, max_length=3, description="one entry per spatial axis (default: the patch size)")

    def window(self, patch_size: list[int]) -> SlidingWindowConfig:
        """These settings with the window size filled in."""
        return SlidingWindowConfig(**{**self.model_dump(), "roi_size": list(self.roi_size or patch_size)})


class TrainConfig(Strict):
    """Training. Under several processes (``--nproc``, torchrun) ``batch_size`` and ``iterations_per_epoch`` are per
    process: a step sees ``batch_size x processes`` samples; the learning-rate schedule is unchanged."""

    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    iterations_per_epoch: int | None = Field(default=None, ge=1, le=MAX_ITERATIONS,
                                             description="default: one pass over the training cases")
    batch_size: int = Field(default=2, ge=1, le=MAX_BATCH)
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: ScheduleConfig = ScheduleConfig()
    loss: ComponentConfig = ComponentConfig(name="dice")
    val_every: int = Field(default=5, ge=1, le=MAX_EPOCHS)
    amp: bool = Field(default=True, description="false: precision auto means fp32 (the setting from before "
                      "precision; with precision set explicitly it has no effect)")
    precision: Precision = Field(default="auto", description=PRECISION_HELP)
    num_workers: int = Field(default=0, ge=0, le=1024)
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

    smooth_weight: list[NonNegative] = Field(default_factory=lambda: [1.0, 3.0], min_length=1, max_length=16)
    bilateral_weight: list[NonNegative] = Field(default_factory=lambda: [3.0, 5.0], min_length=1, max_length=16)
    bilateral_sigma_mm: list[Positive] = Field(default_factory=lambda: [5.0, 10.0], min_length=1, max_length=16)
    bilateral_sigma_intensity: list[Positive] = Field(default_factory=lambda: [0.25, 0.5], min_length=1,
                                                      max_length=16)


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
    iterations: int = Field(default=5, ge=1, le=1000, description="mean-field iterations")
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
        default=False, description="true for every foreground class, or the list of classes (numbers of the "
        "manifest's labels; 0, the background, is not one)"
    )
    crf: CRFConfig | None = Field(default=None, description="dense CRF on the probabilities (null: off)")

    @field_validator("keep_largest_component", mode="before")
    @classmethod
    def _classes(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return v
        if not isinstance(v, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in v):
            raise ValueError("must be true, false or a list of foreground class numbers such as [1, 2]")
        bad = [c for c in v if c < 1]
        if bad:
            raise ValueError(f"classes are the manifest's foreground labels, numbered from 1 (0 is the "
                             f"background), not {bad}")
        return v


class EvaluateConfig(Strict):
    metrics: list[Literal["dice", "hd95", "asd"]] = Field(default_factory=lambda: ["dice", "hd95", "asd"])
    figures: int = Field(default=3, ge=0, le=1000, description="test cases drawn in the overview PNG")
    instances: Literal["components", "watershed"] = Field(
        default="components", description="cells without an instances section: objects from the semantic "
        "prediction by connected components, or by a distance-transform watershed (with one: its instance maps)")
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

    name: str = Field(description="names the run folder runs/<name> and the MLflow experiment: letters, digits, "
                      "'_', '-' and '.', not starting with '.'")
    description: str = ""
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    data: DataConfig
    preprocess: PreprocessConfig
    model: ModelConfig
    train: TrainConfig
    infer: InferConfig
    postprocess: PostprocessConfig = PostprocessConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    instances: InstancesConfig | None = Field(default=None, description="cells: make one id per object (null: "
                                              "no instance maps; evaluate.instances splits the mask for scoring)")
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        problem = name_problem(v)
        if problem:
            raise ValueError(problem)
        return v
