"""Loading checkpoints for sampling: refused pickles, overrides limited to sampling settings, the grid."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffaug.checkpoint import CheckpointError
from diffaug.config import ConfigError
from diffaug.sampling import export_augmentation_set, load_model, sample_grid
from tests.export_helpers import make_checkpoint, one_cpu_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
ROOT = Path(__file__).resolve().parents[1]
NAMES = ("cat", "dog", "bird")


class CreatesMarker:
    """Unpickling this calls open(marker, "w"): code runs and leaves a file behind."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), class_names=NAMES)


def test_a_checkpoint_that_runs_code_when_unpickled_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "last.ckpt"
    torch.save(
        {"state_dict": {}, "diffaug": {"config": {}, "class_names": ["a"], "hook": CreatesMarker(marker)}},
        evil,
    )
    with pytest.raises(CheckpointError, match="refusing to load"):
        export_augmentation_set(evil, ["export.per_class=1", f"export.out_dir={tmp_path / 'out'}"])
    with pytest.raises(CheckpointError, match="refusing to load"):
        sample_grid(evil, tmp_path / "grid.png")
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "grid.png").exists()
    # The file really is hostile: an unsafe load in another process runs its code.
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(evil)!r}, weights_only=False)"],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert marker.exists()


def test_only_sampling_and_export_settings_can_be_overridden(checkpoint):
    with pytest.raises(ConfigError, match="cannot override 'model.net'.*Overridable: sampling"):
        load_model(checkpoint, ["model.net=dit-tiny"])
    with pytest.raises(ConfigError, match="sampling.step"):
        load_model(checkpoint, ["sampling.step=4"])
    with pytest.raises(ConfigError, match="valid names"):
        load_model(checkpoint, ["sampling.sampler=ddimm"])
    model = load_model(checkpoint, ["sampling.steps=7", "sampling.class_guidance={dog: 2.5}"])
    assert model.cfg.sampling.steps == 7 and model.cfg.model.net == "unet-tiny"  # the checkpoint's own config
    assert model.class_map.names == NAMES and model.denoiser.num_classes == 3
    with pytest.raises(CheckpointError, match="holds only the EMA weights"):
        load_model(checkpoint, ["sampling.use_ema=false"])


def test_grid_has_one_row_per_class_and_previews_the_export(checkpoint, tmp_path):
    path = sample_grid(checkpoint, tmp_path / "grid.png", per_class=5, overrides=["sampling.batch_size=3"])
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * 10 + 2, 5 * 10 + 2)  # 8x8 cells with 2-pixel gaps
    out = tmp_path / "set"
    export_augmentation_set(checkpoint, ["export.per_class=5", f"export.out_dir={out}"])
    for c, name in enumerate(NAMES):
        for i in range(5):
            cell = grid[2 + c * 10 : 10 + c * 10, 2 + i * 10 : 10 + i * 10]
            assert np.array_equal(cell, np.asarray(Image.open(out / "images" / name / f"{i:06d}.png")))
    assert sample_grid(checkpoint, per_class=1) == checkpoint.with_name("model_samples.png")


def test_sample_script_grid_and_config_errors(checkpoint, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sample_script", ROOT / "sample.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(checkpoint), "--grid", str(tmp_path / "g.png"), "--per-class", "2"]) == 0
    assert Image.open(tmp_path / "g.png").size == (2 * 10 + 2, 3 * 10 + 2)
    assert script.main([str(checkpoint), f"export.out_dir={tmp_path / 'x'}"]) == 2  # no quota given
    assert "choose exactly one way to size the export" in capsys.readouterr().err


@pytest.mark.slow
def test_export_from_a_trained_run_checkpoint_and_weights_file(tmp_path):
    from diffaug.config import load_config
    from diffaug.training import train

    cfg = load_config(
        [],
        [
            f"run_dir={tmp_path / 'run'}",
            "data.resolution=8",
            "data.batch_size=8",
            "data.max_items=32",
            "model.args={model_channels: 16, channel_mult: [1], norm_groups: 8}",
            "training.max_steps=4",
            "training.warmup_steps=1",
            "training.checkpoint_every_n_steps=4",
            "training.accelerator=cpu",
            "training.devices=1",
            "training.ema_halflife_kimg=0.01",
            "sampling.steps=3",
            "sampling.device=cpu",
            "sampling.microbatch=4",
            "logging.logger=none",
            "logging.progress_bar=false",
        ],
    )
    result = train(cfg)
    assert result.last_checkpoint is not None and result.weights is not None
    sets = {}
    for name, path, extra in (
        ("ckpt", result.last_checkpoint, []),
        ("weights", result.weights, []),
        ("live", result.last_checkpoint, ["sampling.use_ema=false"]),
    ):
        out = tmp_path / name
        export_augmentation_set(path, ["export.per_class=2", f"export.out_dir={out}", *extra])
        sets[name] = {p.relative_to(out): p.read_bytes() for p in (out / "images").rglob("*.png")}
    assert len(sets["ckpt"]) == 20  # the run's own config: sklearn digits, 10 classes
    assert sets["ckpt"] == sets["weights"]  # the .ckpt's EMA weights are the ones in model.safetensors
    assert sets["live"] != sets["ckpt"]  # use_ema=false loads the raw weights
