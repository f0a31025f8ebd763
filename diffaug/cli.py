"""The ``diffaug`` command: ``diffaug train|sample|export|config|convert ...``.

Positional arguments that contain ``=`` are config overrides (``training.max_steps=500``); the others are
YAML config files (for ``train`` and ``config``) or a checkpoint (for ``sample`` and ``export``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from diffaug.config import ConfigError, load_config
from diffaug.config.argv import checkpoint_and_overrides, parse_items_anywhere, split_items


# ---------------------------------------------------------------- commands

# Each command imports what it runs when it runs, so that `diffaug --help` and usage errors answer without
# loading torch and Lightning, and no command loads another's modules; these imports follow the layers too.


def _cmd_config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    files, overrides = split_items(args.items)
    print(OmegaConf.to_yaml(load_config(files, overrides), resolve=True), end="")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from diffaug.training import train

    files, overrides = split_items(args.items)
    result = train(load_config(files, overrides))
    print(f"run directory: {result.run_dir}")
    print(f"final step:    {result.final_step}")
    print(f"checkpoint:    {result.last_checkpoint}")
    if result.weights is not None:
        print(f"EMA weights:   {result.weights}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from diffaug.sampling import sample_grid

    checkpoint, overrides = checkpoint_and_overrides(args.items)
    path = sample_grid(checkpoint, args.out, per_class=args.per_class, overrides=overrides)
    print(f"sample grid: {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from diffaug.sampling import export_augmentation_set

    checkpoint, overrides = checkpoint_and_overrides(args.items)
    summary = export_augmentation_set(checkpoint, overrides=overrides, rank=args.rank, world_size=args.world_size)
    print(summary.describe())
    return 0


# The source layouts of diffaug.convert.CONVERTERS, named here so that --help needs no torch (a test checks
# the two agree).
CONVERT_LAYOUTS = ("dit", "diffusers-dit", "improved-diffusion")


def _cmd_convert(args: argparse.Namespace) -> int:
    from diffaug.convert import CONVERTERS, ConvertOptions

    options = ConvertOptions(resolution=args.resolution, num_heads=args.num_heads,
                             class_names=args.class_names, keep_sigma=args.keep_sigma,
                             head_channels=args.head_channels, attention_order=args.attention_order,
                             diffusion_steps=args.diffusion_steps, noise_schedule=args.noise_schedule,
                             rescale_timesteps=args.rescale_timesteps)
    summary = CONVERTERS.get(args.layout)(args.src, args.out, options=options)
    print(summary.describe())
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffaug", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a diffusion model: diffaug train CONFIG.yaml... [key=value...]")
    p.add_argument("items", nargs="*", metavar="CONFIG_OR_OVERRIDE")
    p.set_defaults(func=_cmd_train)

    p = commands.add_parser("config", help="print the resolved config: diffaug config CONFIG.yaml... [key=value...]")
    p.add_argument("items", nargs="*", metavar="CONFIG_OR_OVERRIDE")
    p.set_defaults(func=_cmd_config)

    p = commands.add_parser("sample", help="write a grid of samples, one row per class: diffaug sample CKPT [key=value...]")
    p.add_argument("items", nargs="+", metavar="CHECKPOINT_OR_OVERRIDE")
    p.add_argument("--out", default=None, help="PNG path (default: next to the checkpoint)")
    p.add_argument("--per-class", type=int, default=8, help="images per class (one row each)")
    p.set_defaults(func=_cmd_sample)

    p = commands.add_parser("export", help="export a labelled augmentation set: diffaug export CKPT [key=value...]")
    p.add_argument("items", nargs="+", metavar="CHECKPOINT_OR_OVERRIDE")
    p.add_argument("--rank", type=int, default=None, help="this worker's part (default: from DDP or SLURM)")
    p.add_argument("--world-size", type=int, default=None, help="number of parts (default: from DDP or SLURM)")
    p.set_defaults(func=_cmd_export)

    p = commands.add_parser("convert", help="convert a public pretrained checkpoint into model.safetensors: "
                            "diffaug convert {dit,diffusers-dit,improved-diffusion} SRC --out model.safetensors")
    p.add_argument("layout", choices=CONVERT_LAYOUTS, help="dit: a facebookresearch/DiT .pt file; "
                   "diffusers-dit: a DiTTransformer2DModel folder; improved-diffusion: an openai "
                   "improved-diffusion or guided-diffusion UNet .pt file")
    p.add_argument("src", metavar="SRC", help="the .pt file or the diffusers folder")
    p.add_argument("--out", required=True, help="the model.safetensors to write")
    p.add_argument("--resolution", type=int, default=None,
                   help="network input size (latent pixels for DiT-XL/2: 32 for 256x256 images); default: "
                        "the checkpoint's")
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads, for a DiT checkpoint of none of the paper's sizes, or an "
                        "improved-diffusion UNet (default 4, the projects' default)")
    p.add_argument("--head-channels", type=int, default=None,
                   help="improved-diffusion: channels per head (guided-diffusion's --num_head_channels)")
    p.add_argument("--attention-order", choices=("legacy", "new"), default="legacy",
                   help="improved-diffusion: qkv layout; new = guided-diffusion's --use_new_attention_order True")
    p.add_argument("--diffusion-steps", type=int, default=1000,
                   help="improved-diffusion: the model's --diffusion_steps (not recorded in the file)")
    p.add_argument("--noise-schedule", choices=("linear", "cosine"), default="linear",
                   help="improved-diffusion: the model's --noise_schedule")
    p.add_argument("--no-rescale-timesteps", dest="rescale_timesteps", action="store_false",
                   help="improved-diffusion: the model was trained with --rescale_timesteps False (it sees the "
                        "raw step index; guided-diffusion's default, the same at 1000 steps)")
    p.add_argument("--class-names", default=None, metavar="FILE",
                   help="one class name a line, in label order (default: ImageNet's for 1000 classes)")
    p.add_argument("--keep-sigma", action="store_true",
                   help="keep the learned-variance outputs (2x channels) instead of slicing them off")
    p.set_defaults(func=_cmd_convert)

    from diffaug.cluster.cli import add_slurm_commands

    add_slurm_commands(commands)

    # Listed for --help only: main() hands "eval ..." to diffaug.evaluation.cli before this parser runs.
    commands.add_parser("eval", help="evaluate: diffaug eval {downstream,fid,bpd} CONFIG.yaml... [key=value...]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:  # the evaluation commands parse their own arguments, --help included
        from diffaug.evaluation.cli import eval_main

        return eval_main(argv[1:])
    args = parse_items_anywhere(build_parser(), argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Imported after parsing, so that --help and usage errors answer without loading torch and Lightning.
    from diffaug.data.corrupt import CorruptDataError

    try:
        return args.func(args)
    except ConfigError as err:
        print(f"diffaug: config error: {err}", file=sys.stderr)
        return 2
    # Bad input: a damaged checkpoint (CheckpointError), data that cannot be read or used (CorruptDataError,
    # IdxFormatError, ShardSampleError, the data module's checks), a missing file; all ValueErrors name the
    # file or setting and the fix. One line for the user; -v shows the traceback.
    except (ValueError, CorruptDataError, FileNotFoundError) as err:
        if args.verbose:
            raise
        print(f"diffaug: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
