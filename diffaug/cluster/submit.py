"""Hand a rendered script to ``sbatch`` and return the job id."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence


class SubmitError(RuntimeError):
    """sbatch is missing or refused the job; the message carries its reason."""


def parse_job_id(output: str) -> str:
    """The job id from ``sbatch --parsable`` output (``123`` or ``123;cluster``)."""
    match = re.match(r"\s*(\d+)", output)
    if match is None:
        raise SubmitError(f"sbatch printed no job id: {output.strip()!r}")
    return match.group(1)


def submit_script(script: str, *, sbatch: str = "sbatch", args: Sequence[str] = ()) -> str:
    """Submit ``script`` (its text, read by sbatch from stdin) and return the job id."""
    if shutil.which(sbatch) is None:
        raise SubmitError(f"{sbatch!r} is not on PATH: submit from a SLURM login node, or use --dry-run to "
                          "print the script")
    result = subprocess.run([sbatch, "--parsable", *args], input=script, capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise SubmitError(f"sbatch refused the job: {reason}")
    return parse_job_id(result.stdout)
