"""MONAI dictionary transforms built from a workflow's ``preprocess`` section."""

from pipeline.transforms.build import deterministic_transforms, random_transforms

__all__ = ["deterministic_transforms", "random_transforms"]
