"""python -m benchmarks.latent: latent-diffusion training images/s, cached latents against on-the-fly encoding.

The same model (one DiffusionModule, one denoiser, one autoencoder) trains on the same images both ways,
steps interleaved in one run: from pixels, encoding every batch (``model.latent_cache=false``), and from the
cached posterior moments of those images (``model.latent_cache=true``). A step is what training runs:
``denoising_loss`` (posterior sample, noise, loss), backward, AdamW and the EMA update. Data loading is left
out of both (it is measured by benchmarks.loader). Without --autoencoder, a random AutoencoderKL of the
given widths stands in (the SD VAE is block_out_channels 128,256,512,512).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.harness import time_interleaved
from diffaug.config import load_config
from diffaug.training.module import DiffusionModule


def random_autoencoder(folder: Path, widths: tuple[int, ...]) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=widths,
                  down_block_types=("DownEncoderBlock2D",) * len(widths),
                  up_block_types=("UpDecoderBlock2D",) * len(widths), layers_per_block=1,
                  norm_num_groups=min(8, widths[0])).save_pretrained(folder)
    return folder


def measure(args: argparse.Namespace, autoencoder: str) -> dict[str, float]:
    overrides = [f"model.autoencoder={autoencoder}", f"model.net={args.net}", f"data.resolution={args.resolution}",
                 "data.channels=3", "training.accelerator=cpu", "logging.logger=none"]
    modules = {}
    for label, cached in (("on-the-fly", False), ("cached", True)):
        cfg = load_config([], [*overrides, f"model.latent_cache={str(cached).lower()}"])
        torch.manual_seed(0)
        modules[label] = DiffusionModule.from_config(cfg, 10, [str(c) for c in range(10)])
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand((args.batch_size, 3, args.resolution, args.resolution), generator=g) * 2 - 1).to(device)
    labels = torch.randint(0, 10, (args.batch_size,), generator=g).to(device)
    autoencoder_model = modules["cached"].autoencoder.to(device)
    moments = torch.cat(autoencoder_model.moments(images), dim=1).half()  # what the cache holds
    batches = {"on-the-fly": (images, labels), "cached": (moments, labels)}
    runs = {}
    for label, module in modules.items():
        module.to(device)
        optimizer = module.configure_optimizers(scaled_gradients=False)["optimizer"]

        def step(i: int, module=module, optimizer=optimizer, batch=batches[label]) -> None:
            loss = module.denoising_loss(batch, i)[0].mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            module.ema.update(module.denoiser, batch_images=args.batch_size)

        step(0)  # warm-up: allocations and kernel choices
        runs[label] = step
    times = time_interleaved(runs, repeats=args.repeats, steps=args.steps, device=device, first_step=1)
    return {label: args.batch_size / statistics.median(seconds) for label, seconds in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", help="a diffusers AutoencoderKL folder (default: a random one)")
    p.add_argument("--widths", default="32,64", help="block_out_channels of the random autoencoder")
    p.add_argument("--net", default="dit-tiny")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.autoencoder or str(random_autoencoder(Path(tmp) / "vae",
                                                            tuple(int(w) for w in args.widths.split(","))))
        rates = measure(args, folder)
    print(f"latent training, {args.net} at {args.resolution} px, batch {args.batch_size}, {args.device}:")
    for label, rate in rates.items():
        print(f"  {label:>10}: {rate:8.1f} images/s")
    print(f"  cached / on-the-fly: {rates['cached'] / rates['on-the-fly']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
