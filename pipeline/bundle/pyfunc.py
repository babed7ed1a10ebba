"""A bundle as an MLflow Model: ``mlflow.pyfunc.load_model``, ``mlflow models serve`` and ``pipeline infer`` run
the same code on it.

``pipeline export`` logs the bundle with :func:`log_bundle_model`: a LoggedModel of the training run with a
``python_function`` flavor (:class:`BundleModel`, from code: loading unpickles nothing) whose artifact ``bundle`` is
the bundle folder, registered. Loading the model loads the bundle (format and weights digest checked); each scan
goes through :class:`~pipeline.cohort.runner.CaseRunner`, the per-case work of ``pipeline infer`` (the bundle's
preprocessing, sliding window and postprocessing; labels written on the scan's grid, read back and compared).

Input: a table (DataFrame; a dict is one row, a list of dicts several), one scan per row, either

- ``path``: a scan the process can read (``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``, ``.nrrd``, a DICOM series
  folder) and optional ``output``: the label map file (its suffix picks the format) or an existing folder for it.
  Default: the scan's file name (DICOM folder ``S``: ``S.nii.gz``) in the ``output_dir`` parameter's folder, else
  in a new folder under the system temp folder, one per call;
- or ``image``: numbers ``(channels, x, y, z)`` (``(channels, x, y)`` for a 2D model; channels first, also for one)
  indexed like nibabel's ``dataobj``, with ``affine``: its 4x4 voxel-to-world matrix (RAS+ mm, as nibabel gives it).

In a table with rows of both kinds the other kind's cells are None (MLflow's schema check refuses NaN for arrays).

Output: a table, one row per input row in order: ``path`` and ``label_path`` (rows with a path; the label map has the
scan's shape and geometry), ``labels`` (rows with an image: uint8 ``(x, y[, z])`` on the image's grid) and
``seconds``; columns no row uses are left out.

Rows that are not scans (neither or both of ``path`` and ``image``, no valid ``affine``, an ``output`` that is no
scan name, a missing file) and scans that fail (corrupt, wrong dimensionality or channel count, NaN voxels, geometry
drift) raise :class:`ScanInputError`, naming the rows (``mlflow models serve``: a 400 with the message); the other
scans' label maps are written all the same.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModelContext  # at runtime: MLflow reads the type hints of predict
from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from pipeline.bundle import Bundle
    from pipeline.cohort.inputs import Job
    from pipeline.cohort.runner import CaseRunner
    from pipeline.io.scan import Scan

BUNDLE_ARTIFACT = "bundle"  # the key of the bundle folder in the model's artifacts
# What loading the model imports, pinned to this environment's versions.
REQUIREMENTS = ("medseg-pipeline", "torch", "monai", "numpy", "nibabel", "simpleitk", "pandas", "mlflow")
# The model's code (MLflow's "models from code"): loading the model runs it, nothing is unpickled.
MODEL_CODE = '''"""The python_function model of a medseg-pipeline bundle (pipeline.bundle.pyfunc)."""
import mlflow
from pipeline.bundle.pyfunc import BundleModel
mlflow.models.set_model(BundleModel())
'''
EXAMPLE_SHAPE = {3: (8, 8, 4), 2: (8, 8)}  # the input example's image, per spatial dimensionality
_GLOBAL_URI = threading.Lock()  # held while MLflow's process-wide tracking URI is switched (_register)


class ScanInputError(PipelineError, MlflowException):
    """Rows the model cannot segment: a PipelineError, and an MlflowException (``mlflow models serve``: a 400)."""

    def __init__(self, message: str) -> None:
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


class BundleModel(mlflow.pyfunc.PythonModel):
    """The ``python_function`` flavor of a bundle (the contract is in the module docstring)."""

    def load_context(self, context: PythonModelContext) -> None:
        """Load the bundle from the model's artifact ``bundle`` and build the runner ``pipeline infer`` uses."""
        from pipeline.bundle import load_bundle
        from pipeline.cohort import InferOptions
        from pipeline.cohort.runner import CaseRunner
        from pipeline.inference.optimize import tune_allocator

        tune_allocator()  # process-wide, as in `pipeline infer`
        self.bundle: Bundle = load_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]))
        # Every call segments again (overwrite); its runner's output folder is a temporary one (see predict).
        self.runner: CaseRunner = CaseRunner(self.bundle, InferOptions(output=Path(), overwrite=True))

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Segment every row of ``model_input`` (see the module docstring).

        Raises:
            ScanInputError: a row that is not a scan, or scans that failed (after the others were written).
        """
        from pipeline.cohort.inputs import STATE_DIR

        if not isinstance(model_input, pd.DataFrame):  # called past MLflow's schema check, which makes a table
            model_input = pd.DataFrame([model_input] if isinstance(model_input, dict) else model_input)
        rows = model_input.to_dict("records")
        output_dir = (params or {}).get("output_dir") or None
        jobs: list[Job] = []
        arrays: list[tuple[int, Any, Any]] = []
        fresh: list[Path] = []  # the temporary output folder of this call, made when a row needs it
        targets: dict[Path, int] = {}
        for i, row in enumerate(rows):
            path, image = _given(row.get("path")), _given(row.get("image"))
            if (path is None) == (image is None):
                raise ScanInputError(f"row {i}: give either `path` (a scan file) or `image` with `affine`, "
                                     f"not {'both' if path is not None else 'neither'}")
            if image is not None:
                arrays.append((i, image, _given(row.get("affine"))))
                continue
            job = _path_job(i, str(path), _given(row.get("output")), output_dir, fresh)
            if job.output in targets:
                raise ScanInputError(f"rows {targets[job.output]} and {i} would both write {job.output}; give them "
                                     "different `output` values")
            targets[job.output] = i
            jobs.append(job)
        with tempfile.TemporaryDirectory(prefix="medseg-pyfunc.") as work:  # "done" records, arrays' label maps
            runner = copy.copy(self.runner)  # shares the network; a call's own folder (calls may overlap)
            runner.options = dataclasses.replace(self.runner.options, output=Path(work))
            (Path(work) / STATE_DIR).mkdir()
            results, errors = _segment_files(runner, jobs) if jobs else ({}, [])
            for i, image, affine in arrays:
                try:
                    results[i] = _segment_array(runner, i, image, affine)
                except Exception as exc:  # noqa: BLE001 - reported with its row, like a failed case of `pipeline infer`
                    errors.append(f"row {i}: " + (str(exc) if isinstance(exc, PipelineError) else
                                                  f"{type(exc).__name__}: {exc}"))
        if errors:
            written = f"; the other {len(results)} were segmented" if results else ""
            raise ScanInputError(f"{len(errors)} of {len(rows)} scans failed: " + "; ".join(errors) + written)
        return _result_table([results[i] for i in range(len(rows))])


def _segment_files(runner: CaseRunner, jobs: list[Job]) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """The scans named by path, as ``pipeline infer`` runs them (read ahead and written in threads)."""
    from pipeline.cohort.executors.local import run_local
    from pipeline.cohort.report import Row

    done: list[Row] = []
    run_local(runner, jobs, done.append, prefetch=2)
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    for row in sorted(done, key=lambda r: r.index):
        if row.status == "failed":
            errors.append(f"row {row.index}: {row.input}: {row.error}")
        else:
            results[row.index] = {"path": row.input, "label_path": row.output, "seconds": row.seconds}
    return results, errors


def _segment_array(runner: CaseRunner, i: int, image: Any, affine: Any) -> dict[str, Any]:
    """One image with its affine: the steps of ``pipeline infer`` on an in-memory scan; the label map is written
    (and checked) into the call's folder as for a file, and read back."""
    import nibabel as nib

    from pipeline.cohort.inputs import Job
    from pipeline.cohort.runner import Loaded

    t0 = time.perf_counter()
    scan = array_scan(image, affine, runner.bundle.spatial_dims, "image")
    scan, _ = runner.check(scan)  # NaN or infinite voxels: refused, or filled (the bundle's nan_policy)
    target = runner.options.output / f"row{i}.nii"
    loaded = Loaded(Job(i, f"row{i}", scan.path, target, None), "",
                    scan, runner.predictor.prepare(runner.model_input(scan), scan.affine, str(scan.path)))
    runner.finish(loaded, runner.network(loaded))
    labels = np.asarray(nib.load(str(target), mmap=False).dataobj, dtype=np.uint8)
    return {"labels": labels.reshape(scan.spatial_shape), "seconds": round(time.perf_counter() - t0, 3)}


def array_scan(image: Any, affine: Any, spatial_dims: int, name: str) -> Scan:
    """An in-memory :class:`~pipeline.io.scan.Scan` of an ``image`` ``(channels, *spatial)`` with its RAS
    ``affine``, laid out as a scan read from a file (spatial axes first, channels last; one channel: none).

    Raises:
        ScanInputError: not ``spatial_dims + 1``-dimensional numbers, or no finite, invertible 4x4 affine.
    """
    from pipeline.io.scan import Scan
    from pipeline.io.scan.geometry import itk_geometry

    axes = "channels, x, y, z" if spatial_dims == 3 else "channels, x, y"
    try:
        data = np.asarray(image)
        matrix = np.asarray(affine, dtype=np.float64) if affine is not None else None
    except (TypeError, ValueError) as exc:
        raise ScanInputError(f"{name}: not an array of numbers ({exc})") from None
    if data.ndim != spatial_dims + 1 or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise ScanInputError(f"{name}: expected numbers shaped ({axes}) for this {spatial_dims}D model (channels "
                             f"first, also for one channel), got {data.dtype} of shape {data.shape}")
    if matrix is None or matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)) or abs(
            np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ScanInputError(f"{name}: needs `affine`, the image's 4x4 voxel-to-world matrix (RAS+ mm, as nibabel "
                             f"gives it), finite and invertible; got {None if matrix is None else matrix.tolist()}")
    spatial = tuple(int(n) for n in data.shape[1:])
    array = data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
    with np.errstate(all="ignore"):  # only the grid's geometry: a shape-only stand-in for the voxels
        header = itk_geometry(Scan(Path(name), "array", np.broadcast_to(np.uint8(0), spatial), matrix, None))
    return Scan(path=Path(name), kind="array", array=array, affine=matrix, header=header)


def _given(value: Any) -> Any:
    """A cell's value, or None for an empty one (None, NaN, empty string)."""
    if isinstance(value, str):
        return value if value.strip() else None
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _path_job(i: int, path: str, output: Any, output_dir: str | None, fresh: list[Path]) -> Job:
    """The job of a row with a path: where its label map goes (see the module docstring)."""
    from pipeline.cohort.inputs import Job
    from pipeline.io.scan import output_name, scan_suffix

    src = Path(path)
    if not src.exists():
        raise ScanInputError(f"row {i}: {src}: no such file or folder (paths are read by the process that runs the "
                             "model)")
    try:
        name = output_name(src)
    except PipelineError as exc:
        raise ScanInputError(f"row {i}: {exc}") from None
    if output is not None:
        target = Path(str(output))
        if target.is_dir():
            target = target / name
        elif scan_suffix(target) is None:
            raise ScanInputError(f"row {i}: output {target} is neither an existing folder nor a label map file name "
                                 "(.nii.gz, .nii, .mha, .mhd or .nrrd)")
    elif output_dir is not None:
        target = Path(output_dir) / name
    else:
        if not fresh:
            fresh.append(Path(tempfile.mkdtemp(prefix="medseg-labels.")))
        target = fresh[0] / name
    if target.resolve() == src.resolve():
        raise ScanInputError(f"row {i}: {src} would be overwritten by its own segmentation; give another `output`")
    case = src.name[: -len(scan_suffix(src) or "")] if src.is_file() else src.name
    return Job(i, case, src, target, None)


def _result_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """The output table; object columns keep None (not NaN) where a row has no value (JSON null)."""
    columns = {}
    for key in ("path", "label_path", "labels", "seconds"):
        values = [r.get(key) for r in results]
        if any(v is not None for v in values):
            columns[key] = pd.Series(values, dtype=float if key == "seconds" else object)
    return pd.DataFrame(columns)


def _nested(dtype: DataType, depth: int) -> Any:
    return Array(_nested(dtype, depth - 1)) if depth else dtype


def model_signature(spatial_dims: int) -> ModelSignature:
    """The signature of a bundle's model: the table of the module docstring (every column optional: a row has a
    path or an image), the output table and the ``output_dir`` parameter."""
    inputs = Schema([
        ColSpec(DataType.string, "path", required=False),
        ColSpec(DataType.string, "output", required=False),
        ColSpec(_nested(DataType.double, spatial_dims + 1), "image", required=False),
        ColSpec(_nested(DataType.double, 2), "affine", required=False),
    ])
    outputs = Schema([
        ColSpec(DataType.string, "path", required=False),
        ColSpec(DataType.string, "label_path", required=False),
        ColSpec(_nested(DataType.integer, spatial_dims), "labels", required=False),
        ColSpec(DataType.double, "seconds"),
    ])
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec("output_dir", DataType.string, "")]))


def input_example(spatial_dims: int, channels: int) -> dict[str, np.ndarray]:
    """A small image (a ramp, so that intensity normalisation has something to scale) with an identity affine."""
    shape = (channels, *EXAMPLE_SHAPE[spatial_dims])
    image = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    return {"image": image, "affine": np.eye(4)}


def pip_requirements() -> list[str]:
    """The packages loading the model needs, pinned to the versions here (no local labels such as ``+cpu``)."""
    installed = {(d.metadata["Name"] or "").lower().replace("_", "-"): d.version for d in metadata.distributions()}
    return [f"{name}=={installed[name].split('+')[0]}" for name in REQUIREMENTS if name in installed]


def log_bundle_model(client: MlflowClient, run_id: str, bundle_dir: Path, artifact_path: str,
                     register_as: str | None, tracking_uri: str) -> dict[str, str]:
    """Log a bundle folder as an MLflow Model of run ``run_id`` and register it as a new version of
    ``register_as``.

    What ``mlflow.pyfunc.log_model`` does, through ``client`` and ``run_id`` only (the fluent API uses the
    process's active run and tracking URI): a LoggedModel ``artifact_path`` of the run (with its parameters and
    test metrics; an output of the run), saved by ``mlflow.pyfunc.save_model`` (:data:`MODEL_CODE`, the bundle as
    artifact ``bundle``, signature, input example, pinned requirements: nothing inferred or downloaded) and
    uploaded, then a model version with source ``models:/<model id>``.

    Returns:
        ``{"run_id", "runs_uri"`` (``runs:/<run id>/<artifact_path>``), ``"model_uri"`` (when registered)``}``.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    from pipeline.bundle.bundle import MANIFEST, _read_json

    if not hasattr(client, "create_logged_model"):
        raise PipelineError(f"logging a bundle as an MLflow Model needs MLflow 3 (installed: {mlflow.__version__}); "
                            "upgrade mlflow, or export with --no-mlflow and run the bundle folder")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per tiny file is noise
    bundle_dir = Path(bundle_dir)
    meta = _read_json(bundle_dir / MANIFEST)
    run = client.get_run(run_id)
    model = client.create_logged_model(run.info.experiment_id, name=artifact_path, source_run_id=run_id,
                                       params={k: str(v) for k, v in run.data.params.items()})
    try:
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        _link_metrics(client, run_id, model.model_id)
        with tempfile.TemporaryDirectory(prefix="medseg-mlflow-model.") as tmp:
            local, code = Path(tmp) / "model", Path(tmp) / "bundle_model.py"
            code.write_text(MODEL_CODE)
            spatial_dims = int(meta["spatial_dims"])
            mlflow.pyfunc.save_model(
                str(local), python_model=str(code), artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
                signature=model_signature(spatial_dims),
                input_example=input_example(spatial_dims, len(meta["channels"])),
                pip_requirements=pip_requirements(),
                mlflow_model=Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                                   model_id=model.model_id),
                metadata={"medseg_bundle": {"name": meta["name"], "format_version": meta["format_version"],
                                            "labels": meta["labels"], "channels": meta["channels"],
                                            "spatial_dims": spatial_dims}},
            )
            client.log_model_artifacts(model.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    out = {"run_id": run_id, "runs_uri": f"runs:/{run_id}/{artifact_path}"}
    if register_as:
        version = _register(client, register_as, model.model_id, run_id, tracking_uri)
        out["model_uri"] = f"models:/{register_as}/{version}"
    return out


def _link_metrics(client: MlflowClient, run_id: str, model_id: str) -> None:
    """The run's single-valued metrics (the test metrics; not the per-epoch curves, whose first values
    ``log_model`` would link) also as the model's: its page and the experiment's model list show them."""
    from mlflow.entities import Metric

    metrics = []
    for key in client.get_run(run_id).data.metrics:
        history = [m for m in client.get_metric_history(run_id, key) if m.model_id is None]
        if len(history) == 1:
            m = history[0]
            metrics.append(Metric(m.key, m.value, m.timestamp, m.step, dataset_name=m.dataset_name,
                                  dataset_digest=m.dataset_digest, run_id=run_id, model_id=model_id))
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


def _register(client: MlflowClient, name: str, model_id: str, run_id: str, tracking_uri: str) -> str:
    """A new version of ``name`` (created if missing) with source ``models:/<model id>`` (by which the UI links it
    to the LoggedModel), listed on the LoggedModel as ``mlflow.register_model`` does.

    MLflow's SQL registry looks that model up with the process-wide tracking URI, not the client's (a TODO in
    ``SqlAlchemyStore.create_model_version``): it is ``tracking_uri`` for the call, then restored (the module
    variable only; ``mlflow.set_tracking_uri`` would also rewrite ``MLFLOW_TRACKING_URI``).
    """
    from mlflow.tracking._tracking_service import utils as tracking_utils
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    with _GLOBAL_URI:
        before = tracking_utils._tracking_uri
        tracking_utils._tracking_uri = tracking_uri
        try:
            version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run_id,
                                                  model_id=model_id)
        finally:
            tracking_utils._tracking_uri = before
    known = client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS)
    versions = [*(json.loads(known) if known else []), {"name": name, "version": version.version}]
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})
    return str(version.version)
