"""Train a diffusion model: ``python train.py configs/experiment/x.yaml [more.yaml] key=value ...``.

The same as ``diffaug train``: a bad config, checkpoint or data file ends in one line that names it and the
fix (exit status 2), not a traceback; ``-v`` shows the traceback.
"""

import logging
import sys

from diffaug.cli import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    verbose = [arg for arg in sys.argv[1:] if arg in ("-v", "--verbose")]  # an option of `diffaug`, before the command
    sys.exit(main([*verbose, "train", *(arg for arg in sys.argv[1:] if arg not in verbose)]))
