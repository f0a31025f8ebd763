"""model.net=diffusers-unet2d: a diffusers UNet2DModel wrapped as a diffaug network, fine-tuned from its folder.

Every folder here is a tiny UNet2DModel with random weights written by save_pretrained, with a scheduler config.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from diffaug.build import build_process
from diffaug.config import ConfigError, load_config
from diffaug.inference import load_for_inference
from diffaug.nets import DenoiserNet
from diffaug.nets.lora import merge_lora_state_dict
from diffaug.sampling import export_augmentation_set
from diffaug.training import DiffusionModule, train
from tests.training_helpers import one_torch_thread, tiny_config  # noqa: F401

diffusers = pytest.importorskip("diffusers")

TINY_UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 norm_num_groups=4, attention_head_dim=4)
TABLE = "net.unet.class_embedding.weight"
DIGITS = [str(d) for d in range(10)]


def make_folder(path, *, scheduler: dict | None = None, seed: int = 0, **unet):
    """A random tiny UNet2DModel saved as a diffusers folder, with a DDPM scheduler config (or none)."""
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**{**TINY_UNET, **unet})
    with torch.no_grad():  # diffusers' init leaves some layers small; noise makes every path matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    if scheduler is not None:
        diffusers.DDPMScheduler(**scheduler).save_pretrained(path)
    return path, model.eval()


def config_for(tmp_path, folder, *overrides):
    return tiny_config(tmp_path / "run", "model.net=diffusers-unet2d", f"model.args={{pretrained: {folder}}}",
                       *overrides, net=None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("unet") / "ddpm-tiny", scheduler={"num_train_timesteps": 1000})


def test_the_wrapped_network_computes_what_diffusers_computes(tmp_path, folder):
    path, reference = folder
    cfg = config_for(tmp_path, path)
    module = DiffusionModule.from_config(cfg, None, ["all"])  # unconditional: the folder's own model
    denoiser = module.denoiser.eval()
    assert isinstance(denoiser.net, DenoiserNet) and denoiser.net.num_classes == 0
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for steps in ([0, 1, 2, 3], [10, 250, 500, 999], [999, 999, 0, 0]):
        t = torch.tensor(steps, dtype=torch.float32)
        with torch.no_grad():
            expected = reference(x, torch.tensor(steps), return_dict=False)[0]
            got = denoiser.net(x, denoiser.process.noise_level(t))
            eps = denoiser.predict(x, t).eps  # through diffaug's preconditioning: c_in = 1 for DDPM
        assert (got - expected).abs().max() < 1e-5
        assert (eps - expected).abs().max() < 1e-5


def test_a_shorter_chain_hands_diffusers_its_own_step_index(tmp_path):
    path, reference = make_folder(tmp_path / "f", scheduler={"num_train_timesteps": 250})
    cfg = config_for(tmp_path, path)
    assert cfg.model.args.num_train_timesteps == 250 and cfg.objective.process_args.num_timesteps == 250
    denoiser = DiffusionModule.from_config(cfg, None, ["all"]).denoiser.eval()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.0, 17.0, 249.0])
    with torch.no_grad():
        expected = reference(x, t.long(), return_dict=False)[0]
        got = denoiser.net(x, denoiser.process.noise_level(t))  # noise level 1000 t / 250
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("scheduler, process_args, prediction, clip", [
    ({"num_train_timesteps": 1000}, {"schedule": "linear"}, "eps", True),
    ({"num_train_timesteps": 500, "beta_start": 2e-4, "beta_end": 0.03, "prediction_type": "v_prediction"},
     {"schedule": "linear"}, "v", True),
    ({"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample",
      "clip_sample": False}, {"schedule": "cosine"}, "x0", False),
])
def test_the_scheduler_becomes_the_same_ddpm_chain(tmp_path, scheduler, process_args, prediction, clip):
    path, _ = make_folder(tmp_path / "f", scheduler=scheduler)
    cfg = config_for(tmp_path, path)
    assert cfg.objective.process == "ddpm" and cfg.objective.prediction == prediction
    assert cfg.sampling.clip_x0 is clip and cfg.training.init_from == str(path)
    assert {k: cfg.objective.process_args[k] for k in process_args} == process_args
    expected = diffusers.DDPMScheduler.from_pretrained(path).alphas_cumprod.double()
    got = build_process(cfg).alphas_cumprod
    assert got.shape == expected.shape and (got - expected).abs().max() < 1e-6  # diffusers keeps float32


def test_new_classes_get_a_defined_table_and_start_as_the_pretrained_model(tmp_path, folder):
    path, reference = folder
    module = DiffusionModule.from_config(config_for(tmp_path, path), 10, DIGITS)
    state = module.denoiser.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())
    assert torch.equal(state[TABLE], torch.zeros(11, 32))  # unconditional folder: zero rows for 10 + null
    x, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 7, 10])
    with torch.no_grad():
        expected = reference(x, torch.tensor([100, 100, 100]), return_dict=False)[0]
        got = module.denoiser.net(x, torch.full((3,), 100.0), labels)
    assert (got - expected).abs().max() < 1e-5


def test_a_conditional_folder_keeps_its_rows_by_index_and_the_rest_start_at_their_mean(tmp_path):
    path, reference = make_folder(tmp_path / "f", scheduler={}, num_class_embeds=3)
    rows = reference.class_embedding.weight.detach()
    module = DiffusionModule.from_config(config_for(tmp_path, path), 5, ["a", "b", "c", "d", "e"])
    table = module.denoiser.state_dict()[TABLE]
    assert table.shape == (6, 32) and torch.isfinite(table).all()
    assert torch.equal(table[:3], rows)
    assert torch.allclose(table[3:], rows.mean(0).expand(3, 32))  # d, e and the null class
    unconditional = DiffusionModule.from_config(config_for(tmp_path, path), None, ["all"])
    assert TABLE not in unconditional.denoiser.state_dict()  # its labels dropped


def test_a_network_built_from_explicit_keys_has_finite_weights_and_lora_on_its_attention(tmp_path):
    keys = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_UNET.items()
            if k not in ("sample_size", "in_channels")}
    cfg = tiny_config(tmp_path / "run", "model.net=diffusers-unet2d", f"model.args={json.dumps(keys)}",
                      "training.lora_rank=2", net=None)
    module = DiffusionModule.from_config(cfg, 10, DIGITS)
    net = module.denoiser.net
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert net.unet.class_embedding.num_embeddings == 11
    adapted = {n.removesuffix(".lora_down.weight") for n, p in net.named_parameters()
               if p.requires_grad and n.endswith(".lora_down.weight")}
    attentions = [n for n, m in net.named_modules() if type(m).__name__ == "Attention"]
    assert attentions and adapted == {f"{a}.{p}" for a in attentions for p in ("to_q", "to_k", "to_v", "to_out.0")}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or n == TABLE[len("net."):] for n in trainable)


@pytest.mark.slow
@pytest.mark.parametrize("lora_rank", [0, 2])
def test_fine_tune_sample_and_export_without_the_folder(tmp_path, lora_rank):
    """Ten digit classes on an unconditional folder, a few steps (all weights, or LoRA merged on export),
    then inference and export after the folder is gone: the checkpoint's config rebuilds the network."""
    path, reference = make_folder(tmp_path / "pretrained", scheduler={"num_train_timesteps": 1000})
    cfg = config_for(tmp_path, path, "training.max_steps=3", "training.checkpoint_every_n_steps=3",
                     f"training.lora_rank={lora_rank}", "sampling.steps=3", "sampling.microbatch=4",
                     "sampling.device=cpu")
    result = train(cfg)
    saved = torch.load(result.last_checkpoint, weights_only=True)
    args = saved["diffaug"]["config"]["model"]["args"]
    assert "pretrained" not in args and args["block_out_channels"] == [8, 16]
    live = merge_lora_state_dict({k[len("denoiser.net."):]: v for k, v in saved["state_dict"].items()
                                  if k.startswith("denoiser.net.")})
    start = {f"unet.{k}": v for k, v in reference.state_dict().items()}
    assert any(not torch.equal(live[k], v) for k, v in start.items())  # it trained,
    assert all((live[k] - v).abs().max() < 1e-2 for k, v in start.items())  # from the folder's weights
    shutil.rmtree(path)  # inference and export use what the run saved, never the folder
    denoiser, _, _, class_map = load_for_inference(result.weights)
    assert class_map.names == tuple(DIGITS) and denoiser.net.unet.class_embedding.num_embeddings == 11
    assert all(torch.isfinite(v).all() for v in denoiser.state_dict().values())
    export_augmentation_set(result.weights, ["export.per_class=2", f"export.out_dir={tmp_path / 'set'}"])
    assert len(list((tmp_path / "set" / "images").rglob("*.png"))) == 20


def test_a_value_the_config_sets_must_agree_with_the_scheduler_even_the_schemas_default(tmp_path):
    # The schema's defaults are eps and clip_x0=true; this folder's scheduler says v and no clipping.
    path, _ = make_folder(tmp_path / "f", scheduler={"num_train_timesteps": 1000, "prediction_type": "v_prediction",
                                                     "clip_sample": False})
    cfg = config_for(tmp_path, path)  # not set: the scheduler's values
    assert cfg.objective.prediction == "v" and cfg.sampling.clip_x0 is False
    assert config_for(tmp_path, path, "objective.prediction=v").objective.prediction == "v"  # set and agreeing
    for override, key, wanted in [("objective.prediction=eps", "objective.prediction", "'v'"),
                                  ("sampling.clip_x0=true", "sampling.clip_x0", "False")]:
        message = _error(tmp_path, path, override)
        assert f"config key '{key}' is" in message and f"scheduler_config.json says {wanted}" in message
    (tmp_path / "exp.yaml").write_text("objective:\n  prediction: eps\n")  # a file sets it just the same
    with pytest.raises(ConfigError, match="objective.prediction"):
        load_config([tmp_path / "exp.yaml"], ["model.net=diffusers-unet2d", f"model.args={{pretrained: {path}}}",
                                              "data.resolution=8"])


def _error(tmp_path, folder, *overrides) -> str:
    with pytest.raises(ConfigError) as caught:
        config_for(tmp_path, folder, *overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_folders_that_do_not_fit_are_refused_in_one_line_naming_the_file_and_the_fix(tmp_path, folder):
    path, _ = folder
    message = _error(tmp_path, tmp_path / "missing")
    assert "missing is not a folder" in message and "save_pretrained" in message
    message = _error(tmp_path, path, "data.resolution=16")
    assert "config.json: sample_size is 8 but data.resolution is 16" in message
    assert "set data.resolution=8" in message
    assert "set data.channels=1" in _error(tmp_path, path, "data.channels=3")
    assert "objective.process=ddpm" in _error(tmp_path, path, "objective.process=vp")
    assert "would change the architecture" in _error(tmp_path, path, "model.args.layers_per_block=3")
    assert "the network was trained with it" in _error(tmp_path, path, "objective.prediction=v")

    other = shutil.copytree(path, tmp_path / "conditioned")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    assert re.search(r"conditioned/config\.json: _class_name is 'UNet2DConditionModel'.*UNet2DModel folders",
                     _error(tmp_path, other))

    for name, change, key in [("pndm", {"_class_name": "PNDMScheduler"}, "_class_name is 'PNDMScheduler'"),
                              ("scaled", {"beta_schedule": "scaled_linear"}, "beta_schedule is 'scaled_linear'"),
                              ("zero-snr", {"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr is True")]:
        bad = shutil.copytree(path, tmp_path / name)
        scheduler = json.loads((bad / "scheduler_config.json").read_text())
        (bad / "scheduler_config.json").write_text(json.dumps({**scheduler, **change}))
        message = _error(tmp_path, bad)
        assert f"{name}/scheduler_config.json: {key}" in message


def test_keys_diffaug_sets_and_unknown_keys_are_refused_by_the_network():
    from diffaug.nets.diffusers_unet import DiffusersUNet2D

    with pytest.raises(ValueError, match=r"\['sample_size'\] are set from the data"):
        DiffusersUNet2D(in_channels=1, resolution=8, sample_size=8)
    with pytest.raises(TypeError, match="UNet2DModel has no argument"):
        DiffusersUNet2D(in_channels=1, resolution=8, model_channels=8)
    with pytest.raises(ValueError, match="class_embed_type='timestep' is not supported"):
        DiffusersUNet2D(in_channels=1, resolution=8, class_embed_type="timestep")
    with pytest.raises(ValueError, match="out_channels=2 must equal in_channels=3"):
        DiffusersUNet2D(in_channels=3, resolution=8, out_channels=2)
