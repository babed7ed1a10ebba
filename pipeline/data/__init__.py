"""Data sets: manifests, checks, synthetic generators, importers and fetchers of public data sets.

* :mod:`pipeline.data.storage`: the storage convention every case and manifest follows (start here), and the
  helpers that write it; :mod:`pipeline.data.splits`: the one training / validation / test split and its folds;
* :mod:`pipeline.data.importers`: ``pipeline data import NAME`` (registry :data:`~pipeline.data.importers.IMPORTERS`);
* :mod:`pipeline.data.fetchers`: ``pipeline data fetch NAME`` (registry :data:`~pipeline.data.fetchers.FETCHERS`);
* :mod:`pipeline.data.generators`: synthetic data sets a manifest names in ``source.generator``.
"""
