"""One export as a torch.distributed job: ``torchrun --nproc_per_node N export_ddp.py CKPT key=value ...``.

Each process joins the gloo group from the torchrun environment, makes its part, and rank 0 finalises.
"""

import logging
import sys

from diffaug.sampling import export_augmentation_set

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    summary = export_augmentation_set(sys.argv[1], sys.argv[2:], progress=False)
    generated, finalized = summary.generated, summary.finalized
    print(f"rank {summary.rank} of {summary.world_size}: generated {generated}, finalized {finalized}")
