"""The per-case work of ``pipeline infer``, shared by every executor: key and skip check, read, check and
preprocess, the sliding window, then map back, postprocess, write and verify."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.bundle import Bundle
from pipeline.bundle.bundle import package_versions as bundle_versions
from pipeline.cohort.inputs import STATE_DIR, Job, input_digest
from pipeline.cohort.report import Row
from pipeline.config.schema import CRFConfig
from pipeline.errors import DataError, PipelineError
from pipeline.inference.predictor import NetworkOutput, Predictor
from pipeline.instances.measure import measure_instances, write_instances_csv
from pipeline.io.atomic import WriteFault, write_json
from pipeline.io.finite import count_non_finite, fill_non_finite
from pipeline.io.scan import Scan, output_name, read_scan, scan_suffix, write_labels, write_probabilities
from pipeline.postprocess.postprocessor import Postprocessor
from pipeline.runtime.device import select_device

if TYPE_CHECKING:
    from pipeline.cohort import InferOptions

log = logging.getLogger("pipeline")


@dataclass
class Loaded:
    """A case read and preprocessed, waiting for the network."""

    job: Job
    key: str
    scan: Scan
    prepared: dict[str, Any]
    seconds: float = 0.0
    filled: int = 0  # NaN or infinite voxels filled (nan_policy fill)


class CaseRunner:
    """The per-case work, shared by the local and the Ray executor."""

    def __init__(self, bundle: Bundle, options: InferOptions, device: torch.device | None = None) -> None:
        options = options.resolve(bundle)  # nan_policy: the bundle's unless given
        self.bundle, self.options = bundle, options
        self.device = device or select_device(options.device)
        self.head = bundle.head
        self.predictor = Predictor(bundle.model, bundle.preprocess, options.infer_config(bundle), self.device,
                                   bundle.spatial_dims, self.head)
        log.info("precision: %s", self.predictor.precision.describe())
        if options.compile:
            log.info("compiling the network (torch.compile) for its window batches ...")
            log.info("torch.compile warm-up: %.1f s (before the first case, in no case's time)",
                     self.predictor.warm_up())
        # --crf: the bundle's CRF settings (the default ones when it has none); without it no CRF.
        crf = (bundle.postprocess.crf or CRFConfig()) if options.crf else None
        self.postprocessor = Postprocessor(bundle.postprocess.model_copy(update={"crf": crf}), bundle.num_classes)
        self.needs_probs = options.probabilities or self.postprocessor.needs_probabilities  # on the scan's grid
        # What changes an output's bytes: the model, the options, the code (its version), the device and the
        # network's arithmetic (bf16 and fp16 round differently from fp32).
        self.model_key = {"bundle": bundle.digest, **options.key_part(), "device": self.device.type,
                          "precision": self.predictor.precision.name,
                          "pipeline": bundle_versions().get("medseg-pipeline")}

    def _state(self, job: Job) -> Path:
        return self.options.output / STATE_DIR / f"{job.output.name}.json"

    def done_record(self, job: Job, key: str) -> dict[str, Any] | None:
        """The case's "done" record when it was done with ``key`` and its outputs are there, else None."""
        state = self._state(job)
        try:
            record = json.loads(state.read_text())
        except (OSError, ValueError):
            return None
        outputs = [job.output] + ([job.probs_output] if job.probs_output else []) + list(self.instance_outputs(job))
        done = isinstance(record, dict) and record.get("key") == key and all(p.is_file() for p in outputs)
        return record if done else None

    def instance_outputs(self, job: Job) -> tuple[Path, ...]:
        """The instance map (``<name>_instances`` in the scan's format) and its per-object measurements
        (``<name>_instances.csv``) of a bundle that makes instances; none otherwise."""
        if self.head.method is None:
            return ()
        name = output_name(job.input, f"{self.options.suffix}_instances")
        ext = scan_suffix(name) or ""
        return job.output.parent / name, job.output.parent / f"{name[: len(name) - len(ext)]}.csv"

    def load(self, job: Job) -> Loaded | Row:
        """Key, skip check, read, check and preprocess (any thread)."""
        t0 = time.perf_counter()
        key = hashlib.sha256(json.dumps({"input": input_digest(job.input), **self.model_key},
                                        sort_keys=True).encode()).hexdigest()
        done = None if self.options.overwrite else self.done_record(job, key)
        if done is not None:
            filled = done.get("filled_voxels", 0)
            return Row(job.case, str(job.input), "skipped", 0.0, str(job.output), str(job.probs_output or ""),
                       filled_voxels=filled if isinstance(filled, int) else 0, index=job.index)
        scan = read_scan(job.input, self.options.max_voxels)
        scan, filled = self.check(scan)
        prepared = self.predictor.prepare(self.model_input(scan), scan.affine, str(job.input))
        return Loaded(job, key, scan, prepared, time.perf_counter() - t0, filled)

    def single_slice(self, scan: Scan) -> bool:
        """A 2D model given a 3D scan one slice thick, ``(x, y, 1)``: how 2D images often come in NIfTI or
        MetaImage. It is segmented as the 2D image and the labels are written back with the scan's shape."""
        return self.bundle.spatial_dims == 2 and scan.spatial_dims == 3 and scan.spatial_shape[2] == 1

    def model_input(self, scan: Scan) -> np.ndarray:
        """The voxels the model takes: ``scan.array``, or its only slice (see :meth:`single_slice`)."""
        return scan.array[:, :, 0] if self.single_slice(scan) else scan.array

    def check(self, scan: Scan) -> tuple[Scan, int]:
        """The scan fits the model: dimensions, channels, and no NaN or infinite voxel, or with ``nan_policy``
        ``fill`` those voxels filled with the smallest finite value of their channel.

        Returns:
            the scan the model (and the CRF) takes, and how many voxels were filled.

        Raises:
            DataError: naming the scan and what is wrong.
        """
        want = self.bundle.spatial_dims
        if scan.spatial_dims != want and not self.single_slice(scan):
            shape = "x".join(map(str, scan.spatial_shape))
            raise DataError(f"{scan.path}: is a {scan.spatial_dims}D image ({shape}) but the model segments {want}D "
                            f"{'volumes' if want == 3 else 'images (3D scans one slice thick are taken too)'}")
        channels = scan.array.shape[-1] if scan.array.ndim > scan.spatial_dims else 1
        if channels != len(self.bundle.channels):
            raise DataError(f"{scan.path}: has {channels} channel(s) but the model takes "
                            f"{len(self.bundle.channels)} ({', '.join(self.bundle.channels)})")
        channel_axis = -1 if scan.array.ndim > scan.spatial_dims else None
        if self.options.nan_policy == "fill":
            array, filled = fill_non_finite(scan.array, channel_axis, name=f"{scan.path}:")
            if filled:
                log.info("%s: filled %d NaN or infinite voxel(s) with the scan's minimum (--nan-policy fill)",
                         scan.path, filled)
                scan = dataclasses.replace(scan, array=array)
            return scan, filled
        bad, _ = count_non_finite(scan.array, channel_axis)
        if bad:
            raise DataError(f"{scan.path}: has {bad} NaN or infinite voxel(s); fix or mask the scan, or fill them "
                            "with the scan's minimum: pipeline infer --nan-policy fill")
        return scan, 0

    def network(self, loaded: Loaded) -> NetworkOutput:
        t0 = time.perf_counter()
        out = self.predictor.network(loaded.prepared, self.needs_probs, case=loaded.job.case)
        loaded.seconds += time.perf_counter() - t0
        return out

    def finish(self, loaded: Loaded, out: NetworkOutput) -> Row:
        """Map back, postprocess, write (probabilities, labels, then the done record) and verify geometry."""
        t0 = time.perf_counter()
        job, scan = loaded.job, loaded.scan
        labels, probs, instances = self.predictor.restore_all(out, self.needs_probs)
        post = self.postprocessor
        if post.needs_probabilities:  # the CRF refines the probabilities with the image the model saw
            assert probs is not None
            crf_probs, image, spacing = post.crf_inputs(probs, self.model_input(scan), scan.affine)
            labels = post(probs=crf_probs, image=image, spacing=spacing)
            del crf_probs, image
        else:
            labels = post(labels)
        if job.probs_output is not None:
            assert probs is not None
            probs = np.moveaxis(probs, 0, -1)
            write_probabilities(scan, probs.reshape(*scan.spatial_shape, probs.shape[-1]), job.probs_output)
        if instances is not None:  # objects and their measurements before the labels: labels mark a case written
            inst_path, csv_path = self.instance_outputs(job)
            instances = instances.reshape(scan.spatial_shape)
            write_labels(scan, instances, inst_path)
            image, dims = self.model_input(scan), self.bundle.spatial_dims  # a one-slice scan: its 2D slice
            spacing = [float(v) for v in np.linalg.norm(scan.affine[:3, :dims], axis=0)]
            rows = measure_instances(instances.reshape(image.shape[:dims]), image, spacing)
            write_instances_csv(rows, csv_path, ndim=dims)
        write_labels(scan, labels.astype(np.uint8).reshape(scan.spatial_shape), job.output)
        write_json(self._state(job), {"key": loaded.key, "input": str(job.input), "output": str(job.output),
                                      "filled_voxels": loaded.filled,
                                      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        seconds = loaded.seconds + time.perf_counter() - t0
        return Row(job.case, str(job.input), "written", round(seconds, 3), str(job.output),
                   str(job.probs_output or ""), filled_voxels=loaded.filled, index=job.index)

    def run(self, job: Job) -> Row:
        """All steps in sequence, failures caught (the Ray executor's unit of work)."""
        try:
            loaded = self.load(job)
            if isinstance(loaded, Row):
                return loaded
            return self.finish(loaded, self.network(loaded))
        except Exception as exc:
            return failed(job, exc)


def failed(job: Job, exc: BaseException) -> Row:
    """A report row for a case that raised: a user-facing message as it is, anything else with its type."""
    message = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
    stops = isinstance(exc, WriteFault) and exc.persistent  # a full disk, a read-only output folder: see ReportWriter
    return Row(job.case, str(job.input), "failed", 0.0, "", "", message, index=job.index, stops_batch=stops)
