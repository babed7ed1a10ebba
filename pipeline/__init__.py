"""medseg-pipeline: train, run and evaluate medical image segmentation workflows."""

__version__ = "0.2.0"
