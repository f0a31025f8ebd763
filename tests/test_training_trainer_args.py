"""training.trainer_args: Trainer options diffaug has no key for reach lightning.Trainer; the rest fail at load."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from lightning.pytorch.profilers import SimpleProfiler

from diffaug.config import ConfigError, load_config
from diffaug.config.trainer_args import TRAINER_DEFAULTS, TRAINER_OWNED
from diffaug.training import train
from diffaug.training.run import build_trainer
from tests.training_helpers import one_torch_thread, tiny_config  # noqa: F401


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config([], ["training.trainer_args.profilr=simple"])
    message = str(err.value)
    assert "'profilr' in training.trainer_args" in message and "Did you mean 'profiler'?" in message
    assert "detect_anomaly" in message and "valid names:" in message
    assert "max_steps" not in message  # diffaug's own are not offered


@pytest.mark.parametrize("name,key", [("deterministic", "training.deterministic"),
                                      ("gradient_clip_val", "training.grad_clip"),
                                      ("max_epochs", "training.max_steps")])
def test_names_diffaug_sets_point_to_its_key(name, key):
    with pytest.raises(ConfigError, match=f"'{name}' in training.trainer_args: diffaug sets .*use {key}"):
        load_config([], [f"training.trainer_args.{name}=1"])


def test_owned_table_is_what_build_trainer_sets(tmp_path, monkeypatch):
    """Every option build_trainer passes is either refused (with its key) or a default trainer_args may change."""
    cfg = tiny_config(tmp_path, "training.trainer_args={detect_anomaly: true, num_sanity_val_steps: 2}")
    passed = {}
    monkeypatch.setattr(pl, "Trainer", lambda **kwargs: passed.update(kwargs))
    build_trainer(cfg, tmp_path, callbacks=[], loggers=[], has_val=True)
    assert set(passed) == set(TRAINER_OWNED) | set(TRAINER_DEFAULTS) | {"detect_anomaly"}
    assert passed["detect_anomaly"] is True and passed["num_sanity_val_steps"] == 2


class _Seen(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.profiler, self.anomaly = trainer.profiler, trainer._detect_anomaly


@pytest.mark.slow
def test_a_run_gets_them(tmp_path):
    seen = _Seen()
    result = train(tiny_config(tmp_path, "training.max_steps=2",
                               "training.trainer_args={profiler: simple, detect_anomaly: true}"),
                   callbacks=[seen])
    assert result.final_step == 2
    assert isinstance(seen.profiler, SimpleProfiler) and seen.anomaly is True
