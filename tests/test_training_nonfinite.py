"""NaN/inf losses: "stop" ends the run naming the step and keeps good checkpoints; "skip" skips the step."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from diffaug.training import NonFiniteLossError, train
from tests.training_helpers import one_torch_thread, state_of, tiny_config  # noqa: F401

pytestmark = pytest.mark.slow


class PoisonBatches(pl.Callback):
    """Turns the images of the batches at the given optimizer steps into NaN; records weight changes."""

    def __init__(self, steps: set[int]):
        self.steps = steps
        self.unchanged_on_poisoned_step: list[bool] = []
        self._before = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step in self.steps:
            batch[0].fill_(float("nan"))
            self._before = {k: v.clone() for k, v in pl_module.denoiser.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._before is not None:
            after = pl_module.denoiser.state_dict()
            unchanged = all(torch.equal(after[k], v) for k, v in self._before.items())
            self.unchanged_on_poisoned_step.append(unchanged)
            self._before = None


def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, "training.checkpoint_every_n_steps=2", "training.on_nonfinite=stop")
    with pytest.raises(NonFiniteLossError, match="at step 5 .*on_nonfinite=skip"):
        train(cfg, callbacks=[PoisonBatches({5})])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
    for prefix in ("denoiser.", "ema.module."):
        assert all(torch.isfinite(v).all() for v in state_of(last, prefix).values())
    assert not (tmp_path / "model.safetensors").exists()


def test_skip_leaves_weights_untouched_and_counts(tmp_path):
    poison = PoisonBatches({2, 5})
    result = train(tiny_config(tmp_path, "training.on_nonfinite=skip"), callbacks=[poison])
    assert result.final_step == 8  # skipped steps count towards max_steps
    assert poison.unchanged_on_poisoned_step == [True, True]
    state = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert int(state["skipped_steps"]) == 2
    assert float(state["ema.images_seen"]) == 6 * 8  # the EMA skips them too
    assert all(torch.isfinite(v).all() for k, v in state.items() if v.is_floating_point())
    assert result.weights is not None
