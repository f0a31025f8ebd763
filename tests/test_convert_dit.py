"""Converting public DiT checkpoints into diffaug's model.safetensors: the converted network computes what the
source computes (original layout and diffusers), at full size the keys and shapes agree, bad files are refused
in one line, and a converted model fine-tunes onto a new label set, samples and exports like any diffaug model.
"""

from __future__ import annotations

import argparse
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from diffaug.cli import CONVERT_LAYOUTS, main
from diffaug.convert import CONVERTERS, ConvertError, ConvertOptions, imagenet_class_names
from diffaug.convert.dit import infer_shape, rename
from diffaug.convert.common import drop_sigma
from diffaug.inference import load_for_inference
from diffaug.nets import build_net
from tests.convert_helpers import Payload
from tests.training_helpers import one_torch_thread  # noqa: F401

TINY = dict(depth=2, hidden=32, heads=2, patch=2, channels=3, classes=5, resolution=8)
TOLERANCE = 1e-5




# ---------------------------------------------------------------- the original DiT, rebuilt from models.py


def sincos_pos_embed(dim: int, grid: int) -> np.ndarray:
    """models.py's get_2d_sincos_pos_embed, transcribed (numpy, float64 frequencies)."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)), axis=0)
    return np.concatenate([one_axis(dim // 2, g[0]), one_axis(dim // 2, g[1])], axis=1)


def original_state(*, depth, hidden, heads, patch, channels, classes, resolution, learn_sigma=True, seed=0,
                   device="cpu") -> dict[str, torch.Tensor]:
    """A DiT state dict with models.py's keys and shapes, random values (zero-initialised layers included)."""
    out = channels * (2 if learn_sigma else 1)
    shapes = {
        "x_embedder.proj.weight": (hidden, channels, patch, patch), "x_embedder.proj.bias": (hidden,),
        "t_embedder.mlp.0.weight": (hidden, 256), "t_embedder.mlp.0.bias": (hidden,),
        "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
        "y_embedder.embedding_table.weight": (classes + 1, hidden),
        "final_layer.linear.weight": (patch * patch * out, hidden), "final_layer.linear.bias": (patch * patch * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
        "final_layer.adaLN_modulation.1.bias": (2 * hidden,),
    }
    for i in range(depth):
        shapes |= {f"blocks.{i}.attn.qkv.weight": (3 * hidden, hidden), f"blocks.{i}.attn.qkv.bias": (3 * hidden,),
                   f"blocks.{i}.attn.proj.weight": (hidden, hidden), f"blocks.{i}.attn.proj.bias": (hidden,),
                   f"blocks.{i}.mlp.fc1.weight": (4 * hidden, hidden), f"blocks.{i}.mlp.fc1.bias": (4 * hidden,),
                   f"blocks.{i}.mlp.fc2.weight": (hidden, 4 * hidden), f"blocks.{i}.mlp.fc2.bias": (hidden,),
                   f"blocks.{i}.adaLN_modulation.1.weight": (6 * hidden, hidden),
                   f"blocks.{i}.adaLN_modulation.1.bias": (6 * hidden,)}
    generator = torch.Generator().manual_seed(seed)
    state = {k: (torch.empty(s, device="meta") if device == "meta" else
                 torch.randn(s, generator=generator) / math.sqrt(s[-1] if len(s) > 1 else hidden))
             for k, s in shapes.items()}
    grid = resolution // patch
    state["pos_embed"] = (torch.empty(1, grid * grid, hidden, device="meta") if device == "meta" else
                          torch.from_numpy(sincos_pos_embed(hidden, grid)).float()[None])
    return state


def original_forward(s, x, t, y, *, heads, patch):
    """models.py's DiT.forward, written out with functional ops over its state dict."""
    def linear(x, name):
        return F.linear(x, s[f"{name}.weight"], s[f"{name}.bias"])

    def modulate(x, shift, scale):
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    n, hidden = x.shape[0], s["x_embedder.proj.weight"].shape[0]
    h = F.conv2d(x, s["x_embedder.proj.weight"], s["x_embedder.proj.bias"], stride=patch)
    h = h.flatten(2).transpose(1, 2) + s["pos_embed"]  # (N, T, D)
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    c = linear(F.silu(linear(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    c = c + s["y_embedder.embedding_table.weight"][y]
    depth = len([k for k in s if k.endswith("attn.qkv.weight")])
    for i in range(depth):
        b = f"blocks.{i}"
        sh1, sc1, g1, sh2, sc2, g2 = linear(F.silu(c), f"{b}.adaLN_modulation.1").chunk(6, dim=1)
        a = modulate(F.layer_norm(h, (hidden,), eps=1e-6), sh1, sc1)
        qkv = linear(a, f"{b}.attn.qkv").reshape(n, -1, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) / math.sqrt(hidden // heads)).softmax(-1) @ v
        h = h + g1.unsqueeze(1) * linear(attn.transpose(1, 2).reshape(n, -1, hidden), f"{b}.attn.proj")
        m = modulate(F.layer_norm(h, (hidden,), eps=1e-6), sh2, sc2)
        m = linear(F.gelu(linear(m, f"{b}.mlp.fc1"), approximate="tanh"), f"{b}.mlp.fc2")
        h = h + g2.unsqueeze(1) * m
    shift, scale = linear(F.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    h = linear(modulate(F.layer_norm(h, (hidden,), eps=1e-6), shift, scale), "final_layer.linear")
    g = int(h.shape[1] ** 0.5)
    h = h.reshape(n, g, g, patch, patch, -1)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(n, -1, g * patch, g * patch)


def inputs(channels, resolution, classes, seed=1):
    """Noise levels from clean to pure noise, labels with the null class among them."""
    t = torch.tensor([0.0, 10.0, 250.0, 500.0, 999.0, 731.0])
    y = torch.tensor([0, 1, classes - 1, classes, 2, classes])  # `classes` is the null class
    x = torch.randn(len(t), channels, resolution, resolution, generator=torch.Generator().manual_seed(seed))
    return x, t, y


def _convert_original(tmp_path, payload, **options):
    src = tmp_path / "DiT-tiny.pt"
    torch.save(payload, src)
    return CONVERTERS.get("dit")(src, tmp_path / "model.safetensors", progress=False,
                                 options=ConvertOptions(num_heads=TINY["heads"], **options))


def test_original_dit_converts_to_the_same_function(tmp_path):
    state = original_state(**TINY)
    summary = _convert_original(tmp_path, state)
    denoiser, process, cfg, class_map = load_for_inference(summary.out)
    x, t, y = inputs(TINY["channels"], TINY["resolution"], TINY["classes"])
    with torch.no_grad():
        expected = original_forward(state, x, t, y, heads=TINY["heads"], patch=TINY["patch"])
        got = denoiser.net(x, t, y)
        x0 = denoiser(x, t.clamp(max=999), y)
    assert expected.shape[1] == 2 * TINY["channels"] and got.shape[1] == TINY["channels"]
    assert (got - expected[:, :TINY["channels"]]).abs().max() < TOLERANCE  # the eps half, sigma sliced off
    assert torch.isfinite(x0).all()
    # The denoiser feeds DiT the step index as DiT's own sampler does: DDPM, linear betas, eps, no clipping.
    assert torch.equal(process.noise_level(t), t) and cfg.objective.prediction == "eps"
    assert not cfg.sampling.clip_x0 and process.betas[0] == 1e-4 and abs(process.betas[-1] - 0.02) < 1e-12
    assert class_map.names == ("class_0", "class_1", "class_2", "class_3", "class_4")
    assert summary.learn_sigma and not summary.sigma_kept and summary.parameters == sum(
        v.numel() for v in denoiser.state_dict().values())
    assert any("pos_embed" in d for d in summary.dropped) and any("sigma" in d for d in summary.dropped)
    assert "model.net=dit-tiny" in summary.describe()


def test_train_py_checkpoint_converts_its_ema_and_keeps_sigma_on_request(tmp_path):
    ema, raw = original_state(**TINY, seed=3), original_state(**TINY, seed=4)
    args = argparse.Namespace(model="DiT-S/2", image_size=64, num_classes=TINY["classes"])
    payload = {"model": raw, "ema": ema, "opt": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "args": args}
    summary = _convert_original(tmp_path, payload, keep_sigma=True, class_names=list("abcde"))
    denoiser, _, cfg, class_map = load_for_inference(summary.out)
    x, t, y = inputs(TINY["channels"], TINY["resolution"], TINY["classes"], seed=2)
    with torch.no_grad():
        expected = original_forward(ema, x, t, y, heads=TINY["heads"], patch=TINY["patch"])
        got = denoiser.net(x, t, y)
    assert got.shape == expected.shape and (got - expected).abs().max() < TOLERANCE  # all 2C channels
    assert cfg.model.args.learn_sigma and class_map.names == tuple("abcde")
    assert sorted(d.split()[0] for d in summary.dropped) == ["args", "model", "opt", "pos_embed"]


def test_full_size_dit_xl_2_keys_and_shapes_match_diffaugs_network():
    """At DiT-XL/2 256x256 (latent 32x32, 4 channels, 1000 classes) on the meta device: no memory."""
    state = original_state(depth=28, hidden=1152, heads=16, patch=2, channels=4, classes=1000, resolution=32,
                           device="meta")
    shape = infer_shape(state, Path("DiT-XL-2-256x256.pt"))  # the head count from the paper's sizes
    assert (shape.depth, shape.hidden_size, shape.num_heads, shape.patch_size, shape.resolution,
            shape.num_classes, shape.learn_sigma) == (28, 1152, 16, 2, 32, 1000, True)
    converted = {rename(k): v for k, v in state.items() if k != "pos_embed"}
    w, b = drop_sigma(converted["final_layer.linear.weight"], converted["final_layer.linear.bias"], 2, 4)
    converted["final_layer.linear.weight"], converted["final_layer.linear.bias"] = w, b
    with torch.device("meta"):
        net = build_net("dit-xl-2", in_channels=4, resolution=32, num_classes=1000)
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == own


# ---------------------------------------------------------------- diffusers


def _diffusers_dit(norm_eps=1e-6, seed=0):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(
        num_attention_heads=TINY["heads"], attention_head_dim=TINY["hidden"] // TINY["heads"],
        in_channels=TINY["channels"], out_channels=2 * TINY["channels"], num_layers=TINY["depth"],
        sample_size=TINY["resolution"], patch_size=TINY["patch"], num_embeds_ada_norm=TINY["classes"],
        norm_eps=norm_eps).eval()
    with torch.no_grad():  # diffusers zero-initialises nothing, but keeps one embedder copy per block
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    return model


def _with_time_shift(model, shift):
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = shift
    return model


def test_diffusers_dit_converts_to_the_original_dits_function(tmp_path):
    model = _diffusers_dit()
    model.save_pretrained(tmp_path / "dit")
    summary = CONVERTERS.get("diffusers-dit")(tmp_path / "dit", tmp_path / "model.safetensors", progress=False)
    denoiser, _, _, _ = load_for_inference(summary.out)
    x, t, y = inputs(TINY["channels"], TINY["resolution"], TINY["classes"])
    with torch.no_grad():
        got = denoiser.net(x, t, y)
        # What the original DiT computes: diffusers' forward with its time-embedding shift set to DiT's 0.
        aligned = _with_time_shift(model, 0)(x, t, y).sample[:, :TINY["channels"]]
        stock = _with_time_shift(model, 1)(x, t, y).sample[:, :TINY["channels"]]
    assert (got - aligned).abs().max() < TOLERANCE
    # Unaligned, diffusers' shift-1 frequencies give another function: the difference is not rounding.
    assert (got - stock).abs().max() > 100 * TOLERANCE
    assert any("downscale_freq_shift=1" in n for n in summary.notes)
    assert any("repeated copies" in d for d in summary.dropped)


def test_diffusers_default_norm_eps_is_noted_and_blocks_with_own_embedders_are_refused(tmp_path):
    model = _diffusers_dit(norm_eps=1e-5)
    model.save_pretrained(tmp_path / "eps")
    summary = CONVERTERS.get("diffusers-dit")(tmp_path / "eps", tmp_path / "a.safetensors", progress=False)
    assert any("norm_eps=1e-05" in n for n in summary.notes)
    with torch.no_grad():
        model.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight.add_(1.0)
    model.save_pretrained(tmp_path / "own")
    with pytest.raises(ConvertError, match=r"own.*block 1's norm1\.emb\.class_embedder.*differs"):
        CONVERTERS.get("diffusers-dit")(tmp_path / "own", tmp_path / "b.safetensors", progress=False)


# ---------------------------------------------------------------- bad input: one line, the file and the fix


def _cli_error(capsys, *argv) -> str:
    assert main(["convert", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffaug: ") and err.count("\n") == 1
    return err


def test_unknown_layout_is_named_with_the_other_converter(tmp_path, capsys):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    err = _cli_error(capsys, "dit", tmp_path / "other.pt", "--out", tmp_path / "m.safetensors")
    assert "other.pt is not a facebookresearch/DiT checkpoint" in err and "diffaug convert diffusers-dit" in err
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    err = _cli_error(capsys, "diffusers-dit", tmp_path / "folder", "--out", tmp_path / "m.safetensors")
    assert "config.json is not a DiT transformer" in err and "diffaug convert dit" in err


def test_truncated_files_are_refused(tmp_path, capsys):
    torch.save(original_state(**TINY), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    err = _cli_error(capsys, "dit", tmp_path / "cut.pt", "--out", tmp_path / "m.safetensors", "--num-heads", 2)
    assert "cut.pt is not a readable PyTorch checkpoint (truncated or corrupt?)" in err and "download" in err
    model = _diffusers_dit()
    model.save_pretrained(tmp_path / "dit")
    weights = tmp_path / "dit" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    err = _cli_error(capsys, "diffusers-dit", tmp_path / "dit", "--out", tmp_path / "m.safetensors")
    assert "diffusion_pytorch_model.safetensors is not a readable safetensors file" in err
    assert not (tmp_path / "m.safetensors").exists()


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x_embedder.proj.weight": torch.zeros(1), "hook": Payload(marker)}, f)
    torch.save({"ema": {"x": Payload(marker)}}, tmp_path / "evil-zip.pt")
    for name in ("evil.pt", "evil-zip.pt"):
        err = _cli_error(capsys, "dit", tmp_path / name, "--out", tmp_path / "m.safetensors")
        assert f"refusing to load {tmp_path / name}" in err and "could run code" in err
    assert not marker.exists()


def test_a_resolution_the_model_cannot_take_names_a_fitting_one(tmp_path, capsys):
    torch.save(original_state(**TINY), tmp_path / "dit.pt")
    err = _cli_error(capsys, "dit", tmp_path / "dit.pt", "--out", tmp_path / "m.safetensors", "--num-heads", 2,
                     "--resolution", 7)
    assert "dit.pt: resolution 7 is not a positive multiple of the model's patch size 2" in err
    assert "--resolution 8" in err


def test_the_cli_lists_every_registered_converter_and_imagenet_names_ship():
    assert sorted(CONVERT_LAYOUTS) == CONVERTERS.names()
    names = imagenet_class_names()
    assert len(names) == len(set(names)) == 1000
    assert (names[0], names[207], names[999]) == ("tench", "golden retriever", "toilet tissue")
