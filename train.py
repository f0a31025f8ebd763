"""Train a diffusion model: ``python train.py configs/experiment/x.yaml [more.yaml] key=value ...``."""

import logging
import sys

from diffaug.config import load_config
from diffaug.training import train

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    files = [arg for arg in sys.argv[1:] if "=" not in arg]
    overrides = [arg for arg in sys.argv[1:] if "=" in arg]
    result = train(load_config(files, overrides))
    logging.getLogger("train").info("run directory %s, final step %d, weights %s", result.run_dir,
                                    result.final_step, result.weights)
