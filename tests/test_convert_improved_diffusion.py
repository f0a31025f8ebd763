"""Converting openai improved-diffusion / guided-diffusion UNet checkpoints: the converted diffaug UNet computes
what the original computes (both attention orders, resblock_updown, learned sigma, class labels, rescaled and
raw step indices), at guided-diffusion's full 256x256 size the keys and shapes agree, bad files and options are
refused in one line, and a converted model fine-tunes onto a new label set, samples and exports.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch

from diffaug.cli import main
from diffaug.config import load_config
from diffaug.convert import CONVERTERS, ConvertOptions
from diffaug.convert.improved_diffusion import convert_state
from diffaug.inference import load_for_inference
from diffaug.nets.unet import UNet
from diffaug.sampling import export_augmentation_set
from diffaug.training import train
from tests.adm_reference import UNetModel, randomize_
from tests.convert_helpers import Payload
from tests.training_helpers import one_torch_thread, tiny_config  # noqa: F401

TOLERANCE = 1e-5

# improved-diffusion's CIFAR-10 recipe shrunk (legacy attention, learned sigma, 4000 cosine steps, rescaled
# steps), guided-diffusion's ImageNet recipe shrunk (head channels, new attention order, resblock_updown, raw
# steps), and Ho et al.'s DDPM (no scale-shift norm, unconditional, eps only).
CASES = {
    "improved": dict(
        net=dict(in_channels=3, model_channels=32, out_channels=6, num_res_blocks=2, attention_resolutions=(2,),
                 channel_mult=(1, 2, 2), num_classes=4, num_heads=2, use_scale_shift_norm=True),
        options=dict(resolution=16, num_heads=2, diffusion_steps=4000, noise_schedule="cosine")),
    "guided": dict(
        net=dict(in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=(1, 2),
                 channel_mult=(1, 2), num_classes=3, num_head_channels=16, use_scale_shift_norm=True,
                 resblock_updown=True, use_new_attention_order=True),
        options=dict(resolution=8, head_channels=16, attention_order="new", rescale_timesteps=False)),
    "ddpm": dict(
        net=dict(in_channels=1, model_channels=32, out_channels=1, num_res_blocks=1, attention_resolutions=(2,),
                 channel_mult=(1, 2, 2), num_heads=4, use_scale_shift_norm=False),
        options=dict(resolution=8)),
}


def original(case: str, seed: int = 0) -> UNetModel:
    model = UNetModel(**CASES[case]["net"])
    randomize_(model, seed)
    return model.eval()


def _convert(tmp_path, case, model, **extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / f"{case}.pt"
    torch.save(model.state_dict(), src)
    options = ConvertOptions(**{**CASES[case]["options"], **extra})
    return CONVERTERS.get("improved-diffusion")(src, tmp_path / f"{case}.safetensors", options=options,
                                                progress=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_converted_unet_computes_what_the_original_computes(tmp_path, case):
    model = original(case)
    net, opts = CASES[case]["net"], CASES[case]["options"]
    summary = _convert(tmp_path, case, model)
    denoiser, process, cfg, class_map = load_for_inference(summary.out)
    channels, res, classes = net["in_channels"], opts["resolution"], net.get("num_classes") or 0
    steps = opts.get("diffusion_steps", 1000)
    t = torch.tensor([0.0, 1.0, steps / 4, steps / 2, steps - 1.0, 0.7 * steps]).round()
    x = torch.randn(len(t), channels, res, res, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, classes - 1, 1]) if classes else None
    # What the original's diffusion hands its network: t * 1000 / N with rescale_timesteps, else t itself.
    seen = t * 1000 / steps if opts.get("rescale_timesteps", True) else t
    with torch.no_grad():
        expected = model(x, seen, y)[:, :channels]  # the eps half: learned sigma is sliced off
        got = denoiser.net(x, process.noise_level(t), y)
        eps = denoiser.predict(x, t, y).eps  # through the denoiser: DDPM, eps prediction
    assert (got - expected).abs().max() < TOLERANCE
    assert (eps - expected).abs().max() < TOLERANCE
    assert expected.abs().mean() > 0.1  # random weights everywhere: nothing passes by being zero
    assert cfg.model.net == "unet" and cfg.objective.process_args.num_timesteps == steps
    assert cfg.objective.process_args.schedule == opts.get("noise_schedule", "linear")
    assert cfg.model.args.resblock_updown is net.get("resblock_updown", False)
    assert summary.learn_sigma is (net["out_channels"] == 2 * channels)
    if classes:  # the class table gets a null row for guidance: the mean of the class rows
        table = denoiser.net.cond.classes.table.weight
        assert table.shape[0] == classes + 1
        assert torch.allclose(table[-1], model.label_emb.weight.mean(0), atol=1e-6)
        assert class_map.names == tuple(f"class_{i}" for i in range(classes))
    else:
        assert class_map.names == ("all",) and denoiser.net.num_classes == 0


def test_the_attention_order_and_head_count_matter_and_the_assumption_is_noted(tmp_path):
    """A wrong order or head count gives another function: the options are not decoration."""
    model = original("improved", seed=2)
    right = _convert(tmp_path, "improved", model)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    t, y = torch.tensor([100.0, 2000.0]), torch.tensor([0, 3])
    outputs = {}
    for name, extra in [("right", {}), ("order", {"attention_order": "new"}), ("heads", {"num_heads": 1})]:
        summary = right if name == "right" else _convert(tmp_path / name, "improved", model, **extra)
        denoiser, process, _, _ = load_for_inference(summary.out)
        with torch.no_grad():
            outputs[name] = denoiser.net(x, process.noise_level(t), y)
    assert (outputs["order"] - outputs["right"]).abs().max() > 1e-3
    assert (outputs["heads"] - outputs["right"]).abs().max() > 1e-3
    default = _convert(tmp_path / "default", "ddpm", original("ddpm"))  # no head option given
    text = default.describe()
    assert "assumed 4 heads" in text and "1000 linear steps" in text


def test_guided_diffusion_256_keys_and_shapes_match_diffaugs_unet():
    """guided-diffusion's released 256x256 class-conditional model, on the meta device: no memory."""
    flags = dict(in_channels=3, model_channels=256, out_channels=6, num_res_blocks=2,
                 attention_resolutions=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4), num_classes=1000,
                 num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True)
    with torch.device("meta"):
        state = UNetModel(**flags).state_dict()
        done = convert_state(state, Path("256x256_diffusion.pt"), ConvertOptions(resolution=256, head_channels=64))
        ours = UNet(in_channels=3, resolution=256, num_classes=1000, **done.config["model"]["args"]).state_dict()
    assert {k: tuple(v.shape) for k, v in done.net_state.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    assert done.config["model"]["args"]["attention_resolutions"] == [32, 16, 8]
    assert sum(v.numel() for v in state.values()) > 5e8  # the 554M-parameter model, not a small one
    assert done.class_names[207] == "golden retriever"


def _cli_error(capsys, *argv) -> str:
    assert main(["convert", "improved-diffusion", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffaug: ") and err.count("\n") == 1
    return err


def test_bad_files_and_options_are_refused_in_one_line_naming_the_fix(tmp_path, capsys):
    good = tmp_path / "good.pt"
    torch.save(original("ddpm").state_dict(), good)
    out = tmp_path / "m.safetensors"
    assert "does not record its image size; pass --resolution N" in _cli_error(capsys, good, "--out", out)
    err = _cli_error(capsys, good, "--out", out, "--resolution", 11)
    assert "resolution 11 is not a multiple of 2**2 = 4" in err and "--resolution 12" in err
    assert "drop --keep-sigma" in _cli_error(capsys, good, "--out", out, "--resolution", 8, "--keep-sigma")
    assert "not both" in _cli_error(capsys, good, "--out", out, "--resolution", 8, "--num-heads", 2,
                                    "--head-channels", 16)
    assert "--head-channels 24 does not divide the attention width 64" in _cli_error(
        capsys, good, "--out", out, "--resolution", 8, "--head-channels", 24)

    torch.save({"x_embedder.proj.weight": torch.zeros(4, 3, 2, 2)}, tmp_path / "dit.pt")
    err = _cli_error(capsys, tmp_path / "dit.pt", "--out", out, "--resolution", 8)
    assert "dit.pt is not an improved-/guided-diffusion UNet state dict" in err and "diffaug convert dit" in err

    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    err = _cli_error(capsys, tmp_path / "cut.pt", "--out", out, "--resolution", 8)
    assert "cut.pt is not a readable PyTorch checkpoint (truncated or corrupt?)" in err

    marker = tmp_path / "payload-ran"
    torch.save({"input_blocks.0.0.weight": torch.zeros(1), "hook": Payload(marker)}, tmp_path / "evil.pt")
    err = _cli_error(capsys, tmp_path / "evil.pt", "--out", out, "--resolution", 8)
    assert "refusing to load" in err and "could run code" in err and not marker.exists()

    pooled = UNetModel(**{**CASES["ddpm"]["net"], "conv_resample": False})  # avg-pool / nearest, no convs
    torch.save(pooled.state_dict(), tmp_path / "pooled.pt")
    err = _cli_error(capsys, tmp_path / "pooled.pt", "--out", out, "--resolution", 8)
    assert "conv_resample=False" in err
    assert not out.exists()


def test_a_converted_model_fine_tunes_onto_a_new_label_set_samples_and_exports(tmp_path, capsys, one_torch_thread):
    src = tmp_path / "ema_0.9999_000100.pt"
    model = UNetModel(**{**CASES["improved"]["net"], "in_channels": 1, "out_channels": 2})  # grey, learned sigma
    randomize_(model, 5)
    torch.save(model.state_dict(), src)
    names = tmp_path / "names.txt"
    names.write_text("0\n1\nkitten\nputty\n")  # two of the digits' classes by name, two the data lacks
    out = tmp_path / "converted.safetensors"
    assert main(["convert", "improved-diffusion", str(src), "--out", str(out), "--resolution", "8",
                 "--num-heads", "2", "--diffusion-steps", "4000", "--noise-schedule", "cosine",
                 "--class-names", str(names)]) == 0
    printed = capsys.readouterr().out
    overrides = shlex.split(printed.split("fine-tune with:")[1].splitlines()[0])
    assert f"training.init_from={out}" in overrides and "model.net=unet" in overrides
    load_config([], overrides)  # what the summary prints is a config that loads
    cfg = tiny_config(tmp_path / "run", *overrides, "training.max_steps=3", "training.checkpoint_every_n_steps=3",
                      "data.resolution=8", net=None)
    result = train(cfg)
    denoiser, process, saved_cfg, class_map = load_for_inference(result.weights)
    assert class_map.names == tuple(str(d) for d in range(10)) and saved_cfg.objective.process_args.schedule == "cosine"
    start = load_for_inference(out)[0].net.state_dict()
    after = denoiser.net.state_dict()
    table = "cond.classes.table.weight"
    assert any(not torch.equal(after[k], v) for k, v in start.items() if k != table)  # it trained
    # The rows of classes the source knew by name moved little in three steps; the null row is carried over.
    assert (after[table][:2] - start[table][:2]).abs().max() < 0.05
    assert (after[table][-1] - start[table][-1]).abs().max() < 0.05
    export_augmentation_set(result.weights, ["export.per_class=1", f"export.out_dir={tmp_path / 'set'}",
                                             "sampling.steps=3"])
    assert len(list((tmp_path / "set" / "images").rglob("*.png"))) == 10
