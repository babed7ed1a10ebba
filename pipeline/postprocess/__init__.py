"""Postprocessing of predicted label maps (largest connected component; the dense CRF plugs in here)."""
