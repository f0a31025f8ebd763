"""End to end: a tiny run writes config, checkpoints, samples, logs and weights that load for inference."""

from __future__ import annotations

import csv

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from safetensors.torch import load_file

from diffaug.checkpoint import CheckpointError
from diffaug.config import ConfigError, config_hash, to_dict
from diffaug.diffusion import sample
from diffaug.inference import load_for_inference
from diffaug.training import DiffusionModule, lr_factor, train
from tests.training_helpers import one_torch_thread, state_of, tiny_config  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = tiny_config(run_dir, "logging.logger=csv", "training.sample_every_n_steps=4",
                      "training.val_every_n_steps=4", "training.save_top_k=2", "training.lr_schedule=cosine",
                      "training.log_every_n_steps=1")
    return cfg, train(cfg)


def test_run_directory_contents(run):
    cfg, result = run
    assert result.final_step == 8
    assert result.last_checkpoint == result.run_dir / "checkpoints" / "last.ckpt"
    assert result.best_checkpoint is not None and "val_loss_ema=" in result.best_checkpoint.name
    assert result.weights == result.run_dir / "model.safetensors" and result.weights.is_file()
    saved = OmegaConf.to_container(OmegaConf.load(result.run_dir / "config.yaml"), resolve=True)
    assert config_hash(saved) == config_hash(cfg)
    # One row of 8 samples per class (10 digit classes), 8x8 images with 2-pixel gaps, as `diffaug sample` draws.
    for step in (4, 8):
        with Image.open(result.run_dir / "samples" / f"step_{step:07d}.png") as grid:
            assert grid.size == (8 * 10 + 2, 10 * 10 + 2)


def test_logged_metrics(run):
    _, result = run
    (metrics_file,) = (result.run_dir / "logs").glob("version_*/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    logged = {key for row in rows for key, value in row.items() if value not in ("", None)}
    for key in ("train/loss", "train/lr", "train/images_per_sec", "val/loss", "val/loss_ema",
                "train/skipped_steps"):
        assert key in logged, key
    buckets = {key for key in logged if key.startswith("train/loss_t")}
    assert len(buckets) >= 2 and buckets <= {"train/loss_t0.00-0.25", "train/loss_t0.25-0.50",
                                             "train/loss_t0.50-0.75", "train/loss_t0.75-1.00"}
    lrs = {int(r["step"]): float(r["train/lr"]) for r in rows if r.get("train/lr")}
    assert sorted(lrs) == list(range(8))
    for step, lr in lrs.items():  # warm-up over 2 steps, cosine to 0.1 x peak at step 8
        assert lr == pytest.approx(2e-4 * lr_factor(step, warmup_steps=2, max_steps=8, schedule="cosine",
                                                    min_lr_ratio=0.1))
    assert lrs[0] == pytest.approx(1e-4) and lrs[7] < lrs[2]


def test_checkpoint_describes_itself(run):
    cfg, result = run
    checkpoint = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    meta = checkpoint["diffaug"]
    assert meta["format_version"] == 1
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert meta["config"] == to_dict(cfg)
    assert checkpoint["global_step"] == 8
    ema = state_of(result.last_checkpoint, "ema.module.")
    live = state_of(result.last_checkpoint, "denoiser.")
    assert ema.keys() == live.keys() and len(ema) > 10
    assert any(not torch.equal(ema[k], live[k]) for k in ema)
    exported = load_file(result.weights)
    assert exported.keys() == ema.keys()
    assert all(torch.equal(exported[k], ema[k]) for k in ema)


def test_inference_loading_from_ckpt_and_safetensors(run):
    _, result = run
    ema_ckpt, process, cfg, class_map = load_for_inference(result.last_checkpoint)
    ema_st, _, cfg_st, class_map_st = load_for_inference(result.weights)
    live, _, _, _ = load_for_inference(result.last_checkpoint, use_ema=False)
    assert class_map.names == class_map_st.names == tuple(str(d) for d in range(10))
    assert config_hash(cfg) == config_hash(cfg_st)
    assert not ema_ckpt.training and not any(p.requires_grad for p in ema_ckpt.parameters())
    x_t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 500.0)
    labels = torch.tensor([0, 3, 7, 10])  # 10 = the null class
    with torch.no_grad():
        out_ckpt, out_st, out_live = (m(x_t, t, labels) for m in (ema_ckpt, ema_st, live))
    assert torch.equal(out_ckpt, out_st)
    assert (out_ckpt - out_live).abs().max() > 1e-6
    images = sample(cfg.sampling.sampler, ema_st, process, shape=(2, 1, 8, 8), seeds=[0, 1],
                    class_labels=torch.tensor([1, 2]), steps=3)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()


def test_resume_from_a_missing_file_is_a_config_error(tmp_path):
    cfg = tiny_config(tmp_path, f"training.resume={tmp_path / 'nope.ckpt'}")
    with pytest.raises(ConfigError, match="training.resume"):
        train(cfg)


def test_unlabelled_data_trains_an_unconditional_model(tmp_path):
    from tests.training_helpers import make_id_folder

    flat = make_id_folder(tmp_path / "data", ["all"], per_class=16) / "all"  # a folder without sub-folders
    result = train(tiny_config(tmp_path / "run", "data.source=folder", f"data.path={flat}",
                               "training.max_steps=2", "training.sample_every_n_steps=2"))
    denoiser, _, _, class_map = load_for_inference(result.weights)
    assert class_map.names == ("all",)
    assert not denoiser.conditional and denoiser.net.cond.classes is None
    with Image.open(result.run_dir / "samples" / "step_0000002.png") as grid:
        assert grid.size == (8 * 10 + 2, 1 * 10 + 2)  # one row


class _KeepModule(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        self.module = pl_module


def test_load_from_checkpoint_rebuilds_the_trained_module(tmp_path):
    keep = _KeepModule()
    result = train(tiny_config(tmp_path, "training.max_steps=2"), callbacks=[keep])
    loaded = DiffusionModule.load_from_checkpoint(result.last_checkpoint)
    assert type(loaded.objective) is type(keep.module.objective)
    assert int(loaded.ema.images_seen) == int(keep.module.ema.images_seen) == 16
    x_t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 500.0)
    labels = torch.tensor([0, 3, 7, 10])
    with torch.no_grad():
        for name in ("denoiser", "ema"):
            trained, rebuilt = (getattr(m, name).eval() for m in (keep.module, loaded))
            assert torch.equal(trained(x_t, t, labels), rebuilt(x_t, t, labels)), name
    with pytest.raises(CheckpointError, match="only the EMA weights"):
        DiffusionModule.load_from_checkpoint(result.weights)
