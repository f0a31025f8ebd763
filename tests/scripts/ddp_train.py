"""A real two-process DDP training run on CPU (gloo), for tests/test_training_ddp.py.

    python tests/scripts/ddp_train.py OUT_DIR

Lightning's DDP launcher re-runs this command line for rank 1, so it must stay a standalone script. Each
rank writes OUT_DIR/rank<r>.json (the item ids of every batch it trained on, hashes of its weights) and its
log to OUT_DIR/rank<r>.log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import lightning.pytorch as pl  # noqa: E402

from diffaug.training import train  # noqa: E402
from tests.training_helpers import batch_ids, make_id_folder, tiny_config  # noqa: E402


def weights_hash(module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Record(pl.Callback):
    def __init__(self, out: Path):
        self.out = out
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        images, labels = batch
        self.batches.append({"step": trainer.global_step, "epoch": trainer.current_epoch,
                             "ids": batch_ids(images), "labels": labels.tolist()})

    def on_train_end(self, trainer, pl_module):
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "batches": self.batches,
            "denoiser": weights_hash(pl_module.denoiser),
            "ema": weights_hash(pl_module.ema),
            "global_step": trainer.global_step,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    out = Path(sys.argv[1])
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    logging.basicConfig(filename=out / f"rank{rank}.log", level=logging.INFO, force=True)
    warnings.filterwarnings("ignore", message="The `srun` command is available")
    data = out / "data"
    if rank == 0 and not data.exists():  # rank 1 starts inside fit, after this
        make_id_folder(data, ["a", "b"], per_class=16)
    cfg = tiny_config(
        out / "run", "data.source=folder", f"data.path={data}", "data.batch_size=4", "data.val_fraction=0.25",
        "training.devices=2", "training.strategy=ddp", "training.max_steps=4",
        "training.checkpoint_every_n_steps=2", "training.sample_every_n_steps=4", "logging.logger=csv",
    )
    train(cfg, callbacks=[Record(out)])


if __name__ == "__main__":
    main()
