"""Sample from a trained checkpoint: ``python sample.py CHECKPOINT [key=value ...]``.

Exports a labelled augmentation set (``export.*`` settings) by default; ``--grid PNG`` writes a preview
grid instead (one row per class) and ``--finalize DIR`` finishes a set whose parts were made separately.
Overrides: ``sampling.*`` (sampler, steps, guidance_scale, class_guidance, batch_size, seed, device,
precision), ``export.*`` and ``data.path``. Examples::

    python sample.py runs/digits/model.safetensors export.per_class=100 export.formats=[folder,shards]
    python sample.py runs/digits/last.ckpt --grid grid.png sampling.sampler=ddim sampling.steps=25
    torchrun --nproc_per_node 4 sample.py model.safetensors export.balance=true
"""

from __future__ import annotations

import argparse
import logging
import sys

from diffaug.config import ConfigError
from diffaug.config.argv import checkpoint_and_overrides, parse_items_anywhere


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "items",
        nargs="*",
        metavar="CHECKPOINT_OR_OVERRIDE",
        help="the checkpoint (.ckpt or .safetensors) and key=value overrides",
    )
    parser.add_argument("--grid", metavar="PNG", help="write a preview grid here instead of exporting")
    parser.add_argument("--per-class", type=int, default=8, help="grid images per class (default 8)")
    parser.add_argument(
        "--finalize", metavar="DIR", help="finalise the export in DIR once all its parts are done"
    )
    parser.add_argument("--rank", type=int, default=None, help="this process's part (default: DDP or SLURM)")
    parser.add_argument(
        "--world-size", type=int, default=None, help="number of parts (default: DDP or SLURM)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parse_items_anywhere(parser, argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )

    from diffaug.checkpoint import CheckpointError
    from diffaug.augset import finalize_export
    from diffaug.sampling import export_augmentation_set, sample_grid

    try:
        if args.finalize:
            print(finalize_export(args.finalize).describe())
            return 0
        checkpoint, overrides = checkpoint_and_overrides(args.items)
        if args.grid:
            path = sample_grid(checkpoint, args.grid, per_class=args.per_class, overrides=overrides)
            print(f"sample grid: {path}")
            return 0
        summary = export_augmentation_set(
            checkpoint,
            overrides,
            rank=args.rank,
            world_size=args.world_size,
            progress=False if args.no_progress else None,
        )
        print(summary.describe())
        return 0
    except ConfigError as error:
        print(f"sample.py: config error: {error}", file=sys.stderr)
        return 2
    except (CheckpointError, FileNotFoundError) as error:
        print(f"sample.py: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
