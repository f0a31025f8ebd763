"""Exact resume: N steps straight == N/2 steps, stop, resume="auto", N/2 more (weights, EMA, optimizer)."""

from __future__ import annotations

import pytest
import torch

from diffaug.training import find_resume_checkpoint, train
from tests.training_helpers import StopAtStep, one_torch_thread, state_of, tiny_config  # noqa: F401

pytestmark = pytest.mark.slow

CASES = {
    # 24 items, batches of 4, 2 batches per step: 3 steps per epoch, so step 4 stops mid-epoch 1.
    # Dropout in the net and validation in between check that neither disturbs the random streams.
    "mid_epoch_accumulated": [
        "data.max_items=24", "data.batch_size=4", "training.accumulate_grad_batches=2",
        "training.val_every_n_steps=2", "training.lr_schedule=cosine",
        "model.args={model_channels: 16, channel_mult: [1], norm_groups: 8, dropout: 0.2}",
    ],
    # 32 items, batches of 8: step 4 closes epoch 0 exactly.
    "epoch_boundary": ["data.max_items=32", "data.batch_size=8"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_resumed_run_equals_uninterrupted_run(tmp_path, case):
    straight = train(tiny_config(tmp_path / "straight", *CASES[case]))
    first = train(tiny_config(tmp_path / "resumed", *CASES[case]), callbacks=[StopAtStep(4)])
    assert first.final_step == 4 and first.weights is None  # stopped early: no final export
    newest = find_resume_checkpoint("auto", tmp_path / "resumed")
    assert torch.load(newest, weights_only=True)["global_step"] == 4
    second = train(tiny_config(tmp_path / "resumed", *CASES[case], "training.resume=auto"))
    assert straight.final_step == second.final_step == 8

    for prefix in ("denoiser.", "ema."):
        a, b = state_of(straight.last_checkpoint, prefix), state_of(second.last_checkpoint, prefix)
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{prefix}: {different[:3]}"
    # The EMA moved away from its start and counted every image once.
    assert float(state_of(second.last_checkpoint, "ema.")["images_seen"]) == 8 * 8

    opt_a = torch.load(straight.last_checkpoint, weights_only=True)["optimizer_states"][0]["state"]
    opt_b = torch.load(second.last_checkpoint, weights_only=True)["optimizer_states"][0]["state"]
    assert opt_a.keys() == opt_b.keys()
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)


def test_auto_resume_of_an_empty_run_dir_starts_fresh(tmp_path):
    assert find_resume_checkpoint("auto", tmp_path) is None
    assert find_resume_checkpoint(None, tmp_path) is None
