"""Execution building blocks shared by the stages that run a network: device selection and sliding-window
prediction (training validates with it, inference predicts with it)."""
