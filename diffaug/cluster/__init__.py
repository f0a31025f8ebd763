"""SLURM: sbatch scripts rendered from the config, submission, and preemption with requeue."""
