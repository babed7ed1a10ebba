"""Instances: one id per object (cell nuclei), from the network's output and for its training.

Modules: :mod:`~pipeline.instances.targets` (training targets derived from a manifest's instance maps: three classes
with the U-Net paper's border weight map, or a normalised distance map), :mod:`~pipeline.instances.decode` (from
probabilities to an instance label map, one method per name a workflow's ``instances.method`` uses),
:mod:`~pipeline.instances.measure` (per-object measurements in physical units).
"""
