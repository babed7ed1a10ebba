"""The bundle as an MLflow Model (``pipeline/bundle/pyfunc.py``): ``mlflow.pyfunc.load_model`` segments scans named
by path and arrays with their affine exactly as ``pipeline infer`` does, ``mlflow models serve`` answers with a label
map, and ``pipeline infer models:/...`` / ``runs:/...`` keep working with this layout and the one before it.

The model is a tiny V-Net with random weights (nothing is trained): the tests compare outputs, not their quality."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from mlflow.tracking import MlflowClient

import pipeline
from pipeline.bundle import load_bundle, log_bundle_to_mlflow, resolve_model, write_bundle
from pipeline.bundle.bundle import free_model_name
from pipeline.bundle.pyfunc import ScanInputError
from pipeline.cli import main
from pipeline.config.schema import InferConfig, PostprocessConfig, PreprocessConfig
from pipeline.errors import PipelineError
from pipeline.io.scan import read_scan
from pipeline.models import build_model
from tests.utils import AFFINES, blob_case, itk_image, rotation, write_nifti

NAME = "pyfunc_tiny"
MODEL_URI = f"models:/{NAME}/1"
VNET = {"base_channels": 4, "levels": 2, "kernel_size": 3, "convs_per_level": [1, 1]}


def tiny_bundle(folder: Path) -> Path:
    """Random weights; resampling (so the probability path of the sliding window) and largest component."""
    torch.manual_seed(0)
    net = build_model("vnet", VNET, 1, 3, 3)
    return write_bundle(
        folder, name=NAME, model={"name": "vnet", "kwargs": VNET, "in_channels": 1, "out_channels": 3},
        state_dict=net.state_dict(), labels={0: "background", 1: "outer", 2: "inner"}, channels=["T2"],
        spatial_dims=3, preprocess=PreprocessConfig(orientation="RAS", spacing=[1.5, 1.5, 2.0],
                                                    intensity={"mode": "zscore"}, patch={"size": [16, 16, 8]}),
        infer=InferConfig(roi_size=[16, 16, 8], overlap=0.25),
        postprocess=PostprocessConfig(keep_largest_component=True),
        source={"workflow": NAME, "experiment": NAME, "run_dir": str(folder.parent / "no-such-run")},
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A bundle exported to its own store as ``models:/pyfunc_tiny/1``, and three scans (two NIfTI, one MHA).
    MLflow's process-wide URIs point at the store for this module (``load_model`` has no URI argument)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tmp = tmp_path_factory.mktemp("pyfunc")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.setenv(var, uri)
        mp.setattr(tracking_utils, "_tracking_uri", uri)
        mp.setattr(registry_utils, "_registry_uri", uri)
        bundle = tiny_bundle(tmp / "model")
        uris = log_bundle_to_mlflow(bundle, uri, NAME)
        scans = []
        for i, key in enumerate(("oblique", "lps")):
            image, _ = blob_case(seed=10 + i)
            scans.append(write_nifti(tmp / "scans" / f"{key}{'.nii.gz' if i == 0 else '.nii'}", image,
                                     AFFINES[key]))
        image, _ = blob_case(seed=12)
        sitk.WriteImage(itk_image(image, rotation((0, 1, 1), 25.0), (5.0, -8.0, 2.0), (0.9, 1.2, 2.2)),
                        str(tmp / "scans" / "itk.mha"))
        scans.append(tmp / "scans" / "itk.mha")
        yield {"tmp": tmp, "uri": uri, "bundle": bundle, "uris": uris, "scans": scans}


@pytest.fixture(scope="module")
def server(store: dict[str, Any]) -> Iterator[tuple[int, Path]]:
    """``mlflow models serve`` of version 1, started (not waited for): it boots while other tests run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = store["tmp"] / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "MLFLOW_REGISTRY_URI": store["uri"]}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL_URI, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield port, log
    finally:  # the server and its uvicorn workers
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def model(store: dict[str, Any]) -> mlflow.pyfunc.PyFuncModel:
    return mlflow.pyfunc.load_model(MODEL_URI)


@pytest.fixture(scope="module")
def inferred(store: dict[str, Any]) -> dict[str, np.ndarray]:
    """``pipeline infer models:/pyfunc_tiny/1`` over the scans: each scan's labels, by scan name."""
    out = store["tmp"] / "infer"
    assert main(["infer", MODEL_URI, "--input", *map(str, store["scans"]), "--output", str(out), "--quiet",
                 "--tracking-uri", store["uri"], "--no-mlflow"]) == 0
    labels = {p.name: np.asarray(read_scan(out / p.name).array) for p in store["scans"]}
    assert all(len(np.unique(v)) > 1 for v in labels.values())  # not a trivial map
    return labels


def test_export_logs_a_registered_mlflow_model(store, server):  # `server` boots while the tests below run
    client = MlflowClient(store["uri"], store["uri"])
    version = client.get_model_version(NAME, "1")
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert version.source == f"models:/{logged.model_id}" and version.run_id == logged.source_run_id
    assert logged.name == "model" and logged.status == "READY"
    run = client.get_run(version.run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]  # listed on the run's page
    assert store["uris"] == {"run_id": run.info.run_id, "runs_uri": f"runs:/{run.info.run_id}/model",
                             "model_uri": MODEL_URI}
    info = mlflow.models.get_model_info(MODEL_URI)
    assert "python_function" in info.flavors and info.signature is not None
    assert set(info.signature.inputs.input_names()) == {"path", "output", "image", "affine"}
    assert info.signature.params.params[0].name == "output_dir"
    local = Path(mlflow.artifacts.download_artifacts(MODEL_URI, dst_path=str(store["tmp"] / "download")))
    requirements = (local / "requirements.txt").read_text().split()
    assert f"medseg-pipeline=={pipeline.__version__}" in requirements
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert not list(local.glob("*.pkl"))  # models from code: loading unpickles nothing
    # The input example is valid for the REST server (MLflow's own check runs it through predict).
    serving = (local / "serving_input_example.json").read_text()
    result = mlflow.models.validate_serving_input(MODEL_URI, serving)
    assert result["labels"][0].shape == (8, 8, 4) and result["labels"][0].dtype == np.uint8


def test_paths_give_the_labels_of_pipeline_infer(store, model, inferred, tmp_path, monkeypatch):
    scans = store["scans"]
    table = pd.DataFrame({"path": [str(p) for p in scans], "output": [None, str(tmp_path / "lps.nrrd"), None]})
    result = model.predict(table, params={"output_dir": str(tmp_path / "out")})
    assert list(result.columns) == ["path", "label_path", "seconds"]
    assert list(result["label_path"]) == [str(tmp_path / "out" / "oblique.nii.gz"), str(tmp_path / "lps.nrrd"),
                                          str(tmp_path / "out" / "itk.mha")]
    for scan_path, label_path in zip(scans, result["label_path"], strict=True):
        scan, labels = read_scan(scan_path), read_scan(label_path)
        assert labels.spatial_shape == scan.spatial_shape and labels.array.dtype == np.uint8
        np.testing.assert_allclose(labels.affine, scan.affine, atol=1e-5)
        assert np.array_equal(labels.array, inferred[scan_path.name])
    # No output column nor output_dir: a new folder under the temp folder, one per call.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (fresh,) = model.predict(pd.DataFrame({"path": [str(scans[0])]}))["label_path"]
    assert Path(fresh).name == "oblique.nii.gz" and Path(fresh).parent.parent == tmp_path
    assert np.array_equal(np.asarray(nib.load(fresh).dataobj), inferred["oblique.nii.gz"])


def test_an_array_with_its_affine_gives_the_same_labels(store, model, inferred, tmp_path):
    img = nib.load(str(store["scans"][0]))
    image = np.asarray(img.dataobj)[None]  # (channels, x, y, z)
    (labels,) = model.predict({"image": image, "affine": img.affine})["labels"]
    assert labels.dtype == np.uint8 and labels.shape == image.shape[1:]
    assert np.array_equal(labels, inferred["oblique.nii.gz"])
    # Rows of both kinds in one table (the other kind's cells None: MLflow's check refuses NaN for an array);
    # each keeps its place.
    mixed = model.predict(pd.DataFrame({"path": [str(store["scans"][1]), None],
                                        "image": [None, image.astype(np.float32)],
                                        "affine": [None, img.affine.tolist()]}),
                          params={"output_dir": str(tmp_path)})
    assert list(mixed.columns) == ["path", "label_path", "labels", "seconds"]
    assert mixed["labels"][0] is None and mixed["path"][1] is None
    assert np.array_equal(mixed["labels"][1], labels)
    assert np.array_equal(read_scan(mixed["label_path"][0]).array, inferred["lps.nii"])


def test_rows_that_are_not_scans_are_refused(store, model, tmp_path):
    image = np.zeros((1, 8, 8, 4))
    cases = [
        ({"output": str(tmp_path / "x.nii.gz")}, "give either `path`"),
        ({"path": str(store["scans"][0]), "image": image, "affine": np.eye(4)}, "not both"),
        ({"path": str(tmp_path / "missing.nii.gz")}, "no such file"),
        ({"path": str(store["scans"][0]), "output": str(tmp_path / "labels.jpg")}, "neither an existing folder"),
        ({"image": np.zeros((2, 8, 8, 4)), "affine": np.eye(4)}, "has 2 channel(s) but the model takes 1"),
        ({"image": image, "affine": np.zeros((4, 4))}, "finite and invertible"),
        ({"image": image}, "needs `affine`"),
    ]
    for row, message in cases:
        with pytest.raises(PipelineError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
            model.predict(row)
        assert isinstance(err.value, ScanInputError)
    with pytest.raises(PipelineError, match="would both write"):
        model.predict([{"path": str(store["scans"][0]), "output": str(tmp_path / "a.nii.gz")},
                       {"path": str(store["scans"][1]), "output": str(tmp_path / "a.nii.gz")}])
    # The signature refuses an image of the wrong rank before the model sees it.
    with pytest.raises(mlflow.exceptions.MlflowException):
        model.predict({"image": np.zeros((8, 8, 4)), "affine": np.eye(4)})


def test_runs_uris_layouts_before_mlflow_models_and_a_second_export(store, tmp_path):
    uri, bundle = store["uri"], store["bundle"]
    digest = load_bundle(bundle).digest
    assert load_bundle(resolve_model(store["uris"]["runs_uri"], uri, tmp_path)).digest == digest
    # An export before MLflow Models: the bundle folder as plain run artifacts, registered by its location.
    client = MlflowClient(uri, uri)
    run = client.create_run(client.get_experiment_by_name(NAME).experiment_id)
    client.log_artifacts(run.info.run_id, str(bundle), "model")
    client.create_registered_model("legacy")
    client.create_model_version("legacy", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    for old in ("models:/legacy/1", f"runs:/{run.info.run_id}/model"):
        assert load_bundle(resolve_model(old, uri, tmp_path)).digest == digest
    assert free_model_name(client, run.info.run_id, run.info.experiment_id).startswith("model-")
    # Exporting again: a new model of the same run and a new version; version 1 still points at its own files.
    again = log_bundle_to_mlflow(bundle, uri, NAME)
    assert again["run_id"] == store["uris"]["run_id"] and again["model_uri"] == f"models:/{NAME}/2"
    assert again["runs_uri"].split("/")[-1].startswith("model-")
    assert load_bundle(resolve_model(again["runs_uri"], uri, tmp_path)).digest == digest


def _post(port: int, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


def test_the_rest_server_answers_with_a_label_map(store, server, inferred, tmp_path):
    port, log = server
    deadline = time.monotonic() + 150
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow models serve did not answer /ping in time:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    img = nib.load(str(store["scans"][0]))
    (row,) = _post(port, {"inputs": {"image": np.asarray(img.dataobj)[None].tolist(), "affine": img.affine.tolist()}})
    labels = np.asarray(row["labels"], dtype=np.uint8)
    assert labels.shape == img.shape and np.array_equal(labels, inferred["oblique.nii.gz"])
    (row,) = _post(port, {"dataframe_records": [{"path": str(store["scans"][2]), "output": str(tmp_path / "s.mha")}]})
    assert row["label_path"] == str(tmp_path / "s.mha")
    assert np.array_equal(read_scan(tmp_path / "s.mha").array, inferred["itk.mha"])
    with pytest.raises(urllib.error.HTTPError) as err:  # a bad row is a 400 with the reason
        _post(port, {"inputs": {"path": str(tmp_path / "missing.nii.gz")}})
    assert err.value.code == 400 and "no such file" in err.value.read().decode()
