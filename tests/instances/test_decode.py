"""Decoders, heads and losses of the instance methods: touching objects come apart only with the methods that
learn more than a mask; heads fold their outputs into the manifest's classes; the losses weigh what they claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.evaluation.domain import instance_metrics
from pipeline.instances.decode import decode, relabel
from pipeline.instances.heads import Head
from pipeline.instances.loss import DistanceLoss, WeightedDiceCE
from pipeline.instances.targets import normalised_distance, three_class_labels


def touching_disks() -> np.ndarray:
    yy, xx = np.mgrid[:40, :60]
    inst = np.zeros((40, 60), np.uint16)
    inst[(yy - 20) ** 2 + (xx - 20) ** 2 <= 100] = 1
    inst[((yy - 20) ** 2 + (xx - 37) ** 2 <= 100) & (inst == 0)] = 2
    return inst


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.stack([(labels == c).astype(np.float32) for c in range(k)])


def test_perfect_outputs_separate_touching_nuclei_only_with_the_trained_heads() -> None:
    inst = touching_disks()
    fg = (inst > 0).astype(np.uint8)
    assert decode("components", None, 2, labels=fg).max() == 1  # the mask alone merges them
    three = decode("three_class", one_hot(three_class_labels(inst, 2), 3), 3)
    dist = decode("distance", np.concatenate([one_hot(fg, 2), normalised_distance(inst)[None]]), 2)
    for out in (three, dist):
        m = instance_metrics(out, inst)
        assert m["f1"] == 1.0 and m["mean_matched_iou"] > 0.95


def test_three_class_keeps_a_nucleus_predicted_all_boundary() -> None:
    labels = np.zeros((20, 20), np.uint8)
    labels[5:10, 5:10] = 2  # no interior seed
    out = decode("three_class", one_hot(labels, 3), 3, min_size_px=5)
    assert out.max() == 1 and (out > 0).sum() == 25


def test_relabel_drops_small_objects_and_widens_the_type_past_65535() -> None:
    inst = np.array([[0, 5, 5, 9], [7, 7, 7, 0]])
    np.testing.assert_array_equal(relabel(inst, min_size_px=2), [[0, 1, 1, 0], [2, 2, 2, 0]])
    assert relabel(inst).dtype == np.uint16
    many = np.arange(70000, dtype=np.int64).reshape(350, 200)
    assert relabel(many).dtype == np.uint32 and relabel(many).max() == 69999


def test_heads_fold_outputs_into_the_manifest_classes() -> None:
    three, dist, plain = Head(2, "three_class"), Head(2, "distance"), Head(3)
    assert (three.out_channels, dist.out_channels, plain.out_channels) == (3, 3, 3)
    logits = torch.randn(3, 8, 8)
    p = dist.activation(logits)
    torch.testing.assert_close(p[:2].sum(0), torch.ones(8, 8))
    torch.testing.assert_close(p[2], torch.sigmoid(logits[2]))
    torch.testing.assert_close(plain.activation(logits).sum(0), torch.ones(8, 8))
    probs = three.activation(logits).numpy()
    np.testing.assert_allclose(three.class_probabilities(probs).sum(0), 1.0, rtol=1e-5)
    assert set(np.unique(three.labels(probs))) <= {0, 1}
    np.testing.assert_array_equal(three.labels(probs), (probs.argmax(0) > 0).astype(np.uint8))
    with pytest.raises(PipelineError, match="two labels"):
        Head(3, "three_class")


def test_a_head_decodes_only_what_it_was_trained_for() -> None:
    with pytest.raises(PipelineError, match="trained for instances.method distance"):
        Head(2, "distance").with_decoding("three_class", {})
    with pytest.raises(PipelineError, match="needs a model trained for it"):
        Head(2).with_decoding("distance", {})
    assert Head(2).with_decoding("watershed", {"min_size_px": 3}).settings == {"min_size_px": 3}
    assert Head.from_json(Head(2, "distance", {"seed_threshold": 0.4}).to_json(), 2) == \
        Head(2, "distance", {"seed_threshold": 0.4})
    assert Head.from_json(None, 4) == Head(4)  # a checkpoint from before instances


def test_border_weights_scale_the_cross_entropy_pixel_by_pixel() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 6, 6)
    labels = torch.randint(0, 3, (1, 1, 6, 6))
    loss = WeightedDiceCE()
    flat = loss(logits, labels, {"weight": torch.ones(1, 1, 6, 6)})
    ce = torch.nn.functional.cross_entropy(logits, labels[:, 0])
    torch.testing.assert_close(flat - loss.dice(logits, labels), ce)
    w = torch.ones(1, 1, 6, 6)
    w[0, 0, 0, 0] = 50.0
    per_pixel = torch.nn.functional.cross_entropy(logits, labels[:, 0], reduction="none")
    want = (per_pixel * w[:, 0]).sum() / w.sum()
    torch.testing.assert_close(loss(logits, labels, {"weight": w}) - loss.dice(logits, labels), want)


def test_distance_loss_adds_the_weighted_soft_target_cross_entropy() -> None:
    torch.manual_seed(1)
    logits, labels = torch.randn(2, 3, 5, 5), torch.randint(0, 2, (2, 1, 5, 5))
    target = torch.rand(2, 1, 5, 5)

    def semantic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 2
        return x.mean() * 0

    got = DistanceLoss(semantic, 2, weight=3.0)(logits, labels, {"distance": target})
    p = torch.sigmoid(logits[:, 2:])
    torch.testing.assert_close(got, 3.0 * -(target * p.log() + (1 - target) * (1 - p).log()).mean())
