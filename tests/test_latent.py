"""Latent diffusion: a frozen autoencoder outside training, decoded sampling and export, the latent cache."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from diffaug.build import build_autoencoder, build_datamodule, build_training_data
from diffaug.checkpoint import CheckpointError
from diffaug.config import ConfigError, load_config
from diffaug.latents import LatentCacheError, build_cache, cache_key
from diffaug.latents import cache as cache_module
from diffaug.sampling.export_config import export_augmentation_set
from diffaug.sampling.model import load_model
from diffaug.training.module import DiffusionModule
from diffaug.training.run import train
from tests.export_helpers import tree_digest
from tests.training_helpers import one_torch_thread, tiny_config  # noqa: F401 (autouse fixture)


def make_autoencoder(folder: Path, *, seed: int = 0, in_channels: int = 3) -> Path:
    """A random two-level AutoencoderKL (downsampling 2, 4 latent channels), as save_pretrained writes it."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=in_channels, out_channels=in_channels, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=16,
                        scaling_factor=0.5, shift_factor=0.1)
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> Path:
    return make_autoencoder(tmp_path_factory.mktemp("vae") / "vae")


def latent_config(run_dir: Path, vae: Path, *overrides: str):
    """Grey 16x16 digits through an RGB autoencoder: 4 x 8 x 8 latents, a tiny UNet on them."""
    return load_config([], [
        f"run_dir={run_dir}", "data.resolution=16", "data.batch_size=8", "data.max_items=40",
        "data.val_fraction=0", f"model.autoencoder={vae}", "model.autoencoder_channels=repeat",
        "model.args={model_channels: 16, channel_mult: [1], norm_groups: 8}", f"model.latent_cache_dir={run_dir}/c",
        "objective.prediction=x0", "training.max_steps=3", "training.warmup_steps=1",
        "training.checkpoint_every_n_steps=3", "training.accelerator=cpu", "training.devices=1",
        "sampling.steps=2", "sampling.microbatch=4", "sampling.device=cpu", "logging.logger=none",
        "logging.progress_bar=false", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vae):
    run_dir = tmp_path_factory.mktemp("latent-run")
    return train(latent_config(run_dir, vae, "training.sample_every_n_steps=3")), vae


# ---------------------------------------------------------------- training on latents, exporting decoded images


def test_the_autoencoder_stays_outside_training(tmp_path, vae):
    cfg = latent_config(tmp_path, vae)
    module = DiffusionModule.from_config(cfg, 10, [str(d) for d in range(10)])
    assert module.autoencoder is not None and module.autoencoder.spec.scaling_factor == 0.5
    assert module.autoencoder.spec.shift_factor == pytest.approx(0.1)  # read from its config
    vae_params = {id(p) for p in module.autoencoder.vae.parameters()}
    assert not vae_params & {id(p) for p in module.parameters()}
    optimizer = module.configure_optimizers(scaled_gradients=False)["optimizer"]
    assert not vae_params & {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(k.startswith(("autoencoder", "vae")) for k in module.state_dict())
    assert module.denoiser.net.in_channels == 4 and module.denoiser.net.resolution == 8  # the latents' shape
    assert cfg.model.autoencoder_sha256 == module.autoencoder.sha256  # recorded for the checkpoint


def test_training_records_the_autoencoder_and_export_decodes(trained, tmp_path):
    result, vae = trained
    with safe_open(str(result.weights), framework="pt") as f:
        saved = json.loads(f.metadata()["config"])["model"]
        names = list(f.keys())
    assert saved["autoencoder"] == str(vae) and len(saved["autoencoder_sha256"]) == 64
    assert not any("encoder" in n or "decoder" in n for n in names)  # only the denoiser's weights
    from PIL import Image

    with Image.open(result.run_dir / "samples" / "step_0000003.png") as grid:  # the training grid, decoded
        assert grid.size == (8 * 18 + 2, 10 * 18 + 2) and grid.mode == "L"  # 16 px cells, 2 px gaps
    digests = []
    for batch_size in (3, 5):
        out = tmp_path / f"export-{batch_size}"
        export_augmentation_set(result.weights, [f"export.out_dir={out}", "export.per_class=2",
                                                 f"sampling.batch_size={batch_size}"], progress=False)
        digests.append({k: v for k, v in tree_digest(out).items() if k.startswith("images/")})
    assert len(digests[0]) == 20 and digests[0] == digests[1]  # byte-identical at both batch sizes
    with Image.open(next((tmp_path / "export-3" / "images").rglob("*.png"))) as image:
        assert image.size == (16, 16) and image.mode == "L"  # decoded grey pixels, not latents
    card = json.loads((tmp_path / "export-3" / "dataset_card.json").read_text())
    assert card["autoencoder"] == {"path": str(vae), "sha256": saved["autoencoder_sha256"]}
    row = json.loads((tmp_path / "export-3" / "manifest.jsonl").read_text().splitlines()[0])
    assert row["autoencoder_sha256"] == saved["autoencoder_sha256"]


def test_sdedit_encodes_the_source_images(trained, tmp_path):
    result, _ = trained
    from PIL import Image

    for c in ("0", "1"):
        (tmp_path / "src" / c).mkdir(parents=True)
        Image.fromarray(np.full((16, 16), 40 + 100 * int(c), np.uint8)).save(tmp_path / "src" / c / "a.png")
    summary = export_augmentation_set(result.weights, [f"export.out_dir={tmp_path / 'out'}", "export.multiple=1",
                                                       f"export.source_images={tmp_path / 'src'}",
                                                       "export.strength=0.5"], progress=False)
    assert summary.generated == 2


def test_a_changed_autoencoder_folder_is_refused_at_load(trained, tmp_path):
    result, vae = trained
    moved = tmp_path / "model"
    moved.mkdir()
    shutil.copy(result.weights, moved / "model.safetensors")
    other = make_autoencoder(tmp_path / "other", seed=1)
    original = tmp_path / "original"
    shutil.copytree(vae, original)
    try:
        shutil.rmtree(vae)
        shutil.copytree(other, vae)
        with pytest.raises(ConfigError, match=r"^model.autoencoder=.* has content hash .* point model.autoencoder"):
            load_model(moved / "model.safetensors")
    finally:
        shutil.rmtree(vae)
        shutil.copytree(original, vae)


def test_a_moved_autoencoder_is_named_by_an_override_and_checked_by_hash(trained, tmp_path):
    result, vae = trained
    before = tmp_path / "before"
    export_augmentation_set(result.weights, [f"export.out_dir={before}", "export.per_class=1"], progress=False)
    moved = shutil.copytree(vae, tmp_path / "moved-vae")
    other = make_autoencoder(tmp_path / "other", seed=1)
    vae.rename(vae.with_name("away"))
    try:
        with pytest.raises(ConfigError, match=r"is gone .* pass model.autoencoder=<its folder now>"):
            load_model(result.weights)
        after = tmp_path / "after"
        export_augmentation_set(result.weights, [f"export.out_dir={after}", "export.per_class=1",
                                                 f"model.autoencoder={moved}"], progress=False)
        images = {k: v for k, v in tree_digest(before).items() if k.startswith("images/")}
        assert len(images) == 10 and images == {k: v for k, v in tree_digest(after).items() if k.startswith("images/")}
        with pytest.raises(ConfigError, match=r"has content hash .* was trained with autoencoder"):
            load_model(result.weights, [f"model.autoencoder={other}"])
    finally:
        vae.with_name("away").rename(vae)
    pixel = train(tiny_config(tmp_path / "pixel", "training.max_steps=2", "training.checkpoint_every_n_steps=2"))
    with pytest.raises(ConfigError, match="is a pixel model: it has no autoencoder; remove the override"):
        load_model(pixel.weights, [f"model.autoencoder={moved}"])


def test_fine_tuning_a_latent_model_uses_the_runs_autoencoder_and_checks_its_hash(trained, tmp_path):
    result, vae = trained
    moved = shutil.copytree(vae, tmp_path / "moved-vae")
    other = make_autoencoder(tmp_path / "other", seed=1)
    vae.rename(vae.with_name("away"))  # the source's recorded folder is gone; the run names where it is now
    try:
        tuned = train(latent_config(tmp_path / "tuned", moved, f"training.init_from={result.weights}",
                                    "training.lr=1e-12", "training.max_steps=1", "training.checkpoint_every_n_steps=1"))
    finally:
        vae.with_name("away").rename(vae)
    with safe_open(result.weights, "pt") as a, safe_open(tuned.weights, "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert max((a.get_tensor(k) - b.get_tensor(k)).abs().max().item() for k in a.keys()) < 1e-6
    for overrides, found in [([], "this run has autoencoder "),
                             (["model.autoencoder=null", "model.latent_cache=false", "data.resolution=8"],
                              "this run has no autoencoder (a pixel run)")]:
        with pytest.raises(ConfigError, match=r"training.init_from=.* was trained with autoencoder [0-9a-f]{12}, but "
                           + re.escape(found) + ".*point model.autoencoder at the folder it was trained with"):
            train(latent_config(tmp_path / "refused", other, f"training.init_from={result.weights}", *overrides))
        assert not list((tmp_path / "refused").rglob("*.ckpt"))


def test_a_resume_with_another_autoencoder_is_refused_before_it_trains(tmp_path, vae):
    run_dir = tmp_path / "run"
    first = train(latent_config(run_dir, vae))
    other = make_autoencoder(tmp_path / "other", seed=1)
    for overrides, found in [([f"model.autoencoder={other}"], "this run has autoencoder "),
                             (["model.autoencoder=null", "model.latent_cache=false", "data.resolution=8",
                               "model.args={model_channels: 16, channel_mult: [1], norm_groups: 8}"],
                              "this run has no autoencoder (a pixel model)")]:
        before = sorted(p.name for p in run_dir.rglob("*.ckpt"))
        with pytest.raises(CheckpointError, match=r"^cannot resume \(training.resume\) from .*: it was trained "
                           r"with autoencoder [0-9a-f]{12}, " + re.escape(found) + ".*point model.autoencoder"):
            train(latent_config(run_dir, vae, "training.resume=auto", "training.max_steps=6", *overrides))
        assert sorted(p.name for p in run_dir.rglob("*.ckpt")) == before  # nothing trained, nothing lost
    resumed = train(latent_config(run_dir, vae, "training.resume=auto", "training.max_steps=6"))  # the same one
    assert resumed.weights == first.weights and resumed.final_step == 6


def test_bits_per_dim_refuses_a_latent_model(trained, capsys):
    from diffaug.evaluation.cli import eval_main

    result, _ = trained
    status = eval_main(["bpd", "--checkpoint", str(result.weights), "eval.likelihood.device=cpu"])
    err = capsys.readouterr().err
    assert status == 2 and "is a latent model" in err and "bits/dim of pixels is not defined" in err


def test_quality_report_has_the_autoencoders_reconstruction_ceiling(trained, tmp_path):
    from diffaug.data import ClassMap, to_model_range, to_uint8
    from diffaug.evaluation.cli import _reconstructed
    from diffaug.evaluation.data import LabelledImages
    from diffaug.evaluation.features import random_features
    from diffaug.evaluation.quality import quality_markdown, sample_quality
    from diffaug.nets.autoencoder import load_frozen

    result, vae = trained
    cfg = load_config([result.run_dir / "config.yaml"], [])
    gen = torch.Generator().manual_seed(0)
    real = LabelledImages(torch.randint(0, 256, (12, 1, 16, 16), generator=gen, dtype=torch.uint8),
                          torch.arange(12) % 3, ClassMap(("a", "b", "c")))
    recon = _reconstructed(cfg, real.images, torch.device("cpu"))
    ae = load_frozen(vae, channels="repeat")
    expected = to_uint8(ae.decode(ae.sample_latents(*ae.moments(to_model_range(real.images)), None)))
    assert recon.dtype == torch.uint8 and torch.equal(recon, expected)  # decode(posterior mean), per image
    assert not torch.equal(recon, real.images)
    extractor = random_features(in_channels=1, seed=0, device=torch.device("cpu"))
    report = sample_quality(real, real, extractor=extractor, cache_dir=tmp_path, per_class=False,
                            kid_subsets=5, kid_subset_size=6, reconstructed=recon)
    assert report["overall"]["fid"] < 1e-6 < report["reconstruction"]["fid"]  # the ceiling is a real row
    assert "decode(encode(real))" in quality_markdown(report)
    pixel_cfg = load_config([], ["data.source=sklearn_digits"])
    assert _reconstructed(pixel_cfg, real.images, torch.device("cpu")) is None  # pixel models: no row


# ---------------------------------------------------------------- the latent cache


def _cache_inputs(tmp_path: Path, vae: Path, *overrides: str):
    cfg = latent_config(tmp_path, vae, "model.latent_cache=true", *overrides)
    autoencoder = build_autoencoder(cfg)
    return cfg, autoencoder, build_training_data(cfg, autoencoder)


def test_the_cache_holds_the_posterior_moments_exactly(tmp_path, vae):
    cfg, autoencoder, dm = _cache_inputs(tmp_path, vae, "data.hflip=true")
    dm.setup("fit")
    plain = build_datamodule(latent_config(tmp_path, vae))  # the same items, unflipped
    plain.setup("fit")
    images = torch.stack([plain.train_set[i][0] for i in range(len(plain.train_set))])
    mean, logvar = autoencoder.moments(images)
    rows = dm.train_set.rows
    cache = dm.train_set.cache
    assert torch.equal(cache.mean[rows], mean.half()) and torch.equal(cache.logvar[rows], logvar.half())
    flip_mean, _ = autoencoder.moments(images.flip(-1))
    assert torch.equal(cache.mean_flip[rows], flip_mean.half())
    assert len({p.name for p in dm.cache_path.glob("chunk-*")}) == 1 and cache.mean.dtype == torch.float16
    moments, label = dm.train_set[0]
    assert moments.shape == (8, 8, 8) and label == int(plain.train_set[0][1])


def test_a_killed_cache_build_resumes_to_the_same_bytes(tmp_path, vae, monkeypatch):
    monkeypatch.setattr(cache_module, "CHUNK", 8)
    cfg, autoencoder, _ = _cache_inputs(tmp_path, vae)
    images = torch.rand(40, 1, 16, 16) * 2 - 1
    key = cache_key(dataset="d", autoencoder=autoencoder, resolution=16, hflip=False)
    calls, kill = [], [True]

    def dying(part):
        calls.append(len(part))
        if kill[0] and len(calls) == 3:
            raise KeyboardInterrupt  # killed while making the third chunk
        return images[part]

    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "a", key, np.arange(40), dying, autoencoder, show_progress=False)
    folder = next((tmp_path / "a").iterdir())
    assert len(list(folder.glob("chunk-*"))) == 2 and not (folder / "cache.json").exists()
    calls.clear()
    kill[0] = False
    build_cache(tmp_path / "a", key, np.arange(40), dying, autoencoder, show_progress=False)
    assert calls == [8, 8, 8]  # only the chunks the killed build had not finished
    build_cache(tmp_path / "b", key, np.arange(40), lambda part: images[part], autoencoder, show_progress=False)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b") and len(tree_digest(tmp_path / "a")) == 6


def test_a_changed_autoencoder_gets_a_new_cache(tmp_path, vae):
    _, _, first = _cache_inputs(tmp_path, vae)
    first.setup("fit")
    other = make_autoencoder(tmp_path / "other", seed=1)
    _, _, second = _cache_inputs(tmp_path, other)
    second.setup("fit")
    assert first.cache_path != second.cache_path
    assert not torch.equal(first.train_set.cache.mean, second.train_set.cache.mean)
    # A cache folder carried over from the other autoencoder is refused, not read.
    shutil.rmtree(second.cache_path)
    shutil.copytree(first.cache_path, second.cache_path)
    _, _, third = _cache_inputs(tmp_path, other)
    with pytest.raises(LatentCacheError, match=r"was built with autoencoder .* delete .* model.latent_cache_dir"):
        third.setup("fit")


def test_training_on_cached_latents(tmp_path, vae):
    result = train(latent_config(tmp_path, vae, "model.latent_cache=true", "data.hflip=true",
                                 "training.max_steps=2"))
    assert result.final_step == 2 and result.weights is not None
    assert len(list((tmp_path / "c").glob("*/cache.json"))) == 1


# ---------------------------------------------------------------- bad input: one line naming what to change


@pytest.mark.parametrize("overrides, message", [
    (["model.autoencoder={tmp}/missing"], r"model.autoencoder=.*missing: no such folder; point it at"),
    (["model.autoencoder={tmp}/unet"], r"holds a UNet2DModel, not an AutoencoderKL; point it at"),
    (["model.autoencoder_channels=match"], r"data.channels=1 but .* set model.autoencoder_channels=repeat"),
    (["model.args.in_channels=1"], r"model.args.in_channels.* remove model.args.in_channels .* set it to 4"),
    (["data.resolution=17"], r"data.resolution.* downsamples by 2: use a multiple of 2"),
    (["model.net=dit-s-2", "model.args.patch_size=3"],
     r"model.net=dit-s-2 does not fit the latents \(4, 8, 8\) .*change model.args"),
    (["model.latent_cache=true", "data.source=shards", "data.path=x"], r"set model.latent_cache=false"),
])
def test_bad_latent_configs_say_what_to_change(tmp_path, vae, overrides, message):
    from diffusers import UNet2DModel

    UNet2DModel(block_out_channels=(8, 8), norm_num_groups=4, down_block_types=("DownBlock2D",) * 2,
                up_block_types=("UpBlock2D",) * 2, sample_size=8).save_pretrained(tmp_path / "unet")
    with pytest.raises(ConfigError, match=message) as error:
        latent_config(tmp_path, vae, *[o.format(tmp=tmp_path) for o in overrides])
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- the bundled latent presets


@pytest.mark.parametrize("preset", ["latent-dit-s-2", "latent-dit-b-2", "latent-dit-l-2", "latent-dit-xl-2",
                                    "latent-unet"])
def test_latent_presets_need_an_autoencoder_and_fit_its_latents(tmp_path, vae, preset):
    with pytest.raises(ConfigError, match=r"^model.latent_cache=true .* set model.autoencoder to a local diffusers"):
        build_autoencoder(load_config([f"model/{preset}.yaml"], ["data.resolution=32"]))
    cfg = load_config([f"model/{preset}.yaml"], ["data.resolution=32", "data.channels=3", f"model.autoencoder={vae}"])
    assert cfg.model.latent_cache and cfg.model.autoencoder == str(vae)


def test_the_256_px_experiment_loads_with_a_folder_and_an_autoencoder(tmp_path, vae):
    cfg = load_config(["experiment/latent-folder-256.yaml"],
                      [f"data.path={tmp_path / 'images'}", f"model.autoencoder={vae}"])
    assert (cfg.model.net, cfg.data.resolution) == ("dit-b-2", 256)
