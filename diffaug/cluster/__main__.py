import sys

from diffaug.cluster.cli import slurm_main

sys.exit(slurm_main())
