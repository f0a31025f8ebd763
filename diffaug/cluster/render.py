"""sbatch scripts for training and export jobs, rendered from explicit settings.

Training: ``srun`` starts one task per GPU (``--ntasks-per-node`` = GPUs per node) on every node; each task
is one DDP rank. SIGUSR1 reaches the tasks some minutes before the time limit (``--signal=USR1@...``): the
run saves a checkpoint at the next step and requeues the job, which resumes from it
(``training.resume=auto``).

Export: a job array; task i of N makes part i of the augmentation set (the exporter reads
SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT), keeps the images an earlier run of the task already wrote, and
the last part to finish writes the manifests, shards and dataset card. Its signal goes to the batch shell
(``B:USR1``), which requeues the task.

Every job writes its own log (``%j`` = job id, ``%A_%a`` = array job and task), appended across requeues.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from diffaug.config import ConfigError

SIGNAL_LEAD_S = 180  # seconds before the time limit: time to finish a step and write a checkpoint
# Who gets SIGUSR1 before the time limit: the job's tasks (training saves and requeues itself) or the batch
# shell (the export script requeues the task).
SignalTarget = Literal["tasks", "batch"]
# Lightning ignores SLURM in jobs of these names (it takes them for interactive shells).
INTERACTIVE_JOB_NAMES = ("bash", "interactive")
_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)
_WORD = re.compile(r"[^\s'\"\\]+")


def _check_word(what: str, value: str) -> None:
    if not _WORD.fullmatch(value):
        raise ConfigError(f"invalid {what}: {value!r}; an #SBATCH line takes a single word without spaces or "
                          "quotes")


def time_limit_seconds(time: str) -> int | None:
    """A SLURM time (MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in seconds; None: no limit."""
    if not _TIME.fullmatch(time):
        raise ConfigError(f"invalid value for config key 'cluster.time': {time!r}; SLURM takes "
                          "MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    if time.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, clock = time.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:  # HH:MM:SS
        hours, minutes, seconds = parts
    else:  # MINUTES[:SECONDS]
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def job_name(kind: str, name: str) -> str:
    """``diffaug-<kind>-<name>`` with characters other than letters, digits, ``_.-`` replaced by ``_``."""
    return f"diffaug-{kind}-" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def normalize_extra_line(line: str) -> str:
    """An ``extra_sbatch`` entry as an option: ``--qos=high`` or ``#SBATCH --qos=high`` -> ``--qos=high``."""
    option = re.sub(r"^#SBATCH\s+", "", line.strip())
    if not option.startswith("-") or "\n" in option:
        raise ConfigError(f"invalid entry in config key 'cluster.extra_sbatch': {line!r}; each entry is one "
                          "sbatch option such as '--qos=high' or '--constraint=a100'")
    name = re.sub(r"^--?([A-Za-z-]+).*", r"\1", option)
    value = option.split("=", 1)[1] if "=" in option else option.split(None, 1)[1] if " " in option else ""
    if name in ("job-name", "J") and value.strip("'\"") in INTERACTIVE_JOB_NAMES:
        raise ConfigError(f"cluster.extra_sbatch sets the job name to {value!r}: Lightning then ignores "
                          "SLURM (it takes such jobs for interactive shells); choose another name")
    return option


@dataclass(frozen=True)
class SbatchOptions:
    """The ``#SBATCH`` lines of a job. ``gpus_per_node=0`` makes a CPU job."""

    job_name: str
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    time: str
    output: str  # log path pattern, e.g. "slurm-logs/%x-%j.out"
    partition: str | None = None
    account: str | None = None
    mem: str | None = None
    array: str | None = None  # e.g. "0-3"
    requeue: bool = True
    signal: SignalTarget | None = None  # SIGUSR1 SIGNAL_LEAD_S before the time limit (with requeue)
    chdir: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.job_name in INTERACTIVE_JOB_NAMES:
            raise ConfigError(f"job name {self.job_name!r}: Lightning ignores SLURM in jobs of that name; "
                              "choose another")
        _check_word("job name", self.job_name)
        _check_word("log path", self.output)
        if self.chdir is not None:
            _check_word("working directory", self.chdir)
        for key, value, least in (("cluster.nodes", self.nodes, 1),
                                  ("tasks per node", self.tasks_per_node, 1),
                                  ("cluster.gpus_per_node", self.gpus_per_node, 0),
                                  ("cluster.cpus_per_task", self.cpus_per_task, 1)):
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"invalid value for config key {key!r}: {value!r}; must be an integer "
                                  f">= {least}")
        limit = time_limit_seconds(self.time)
        if self.signal is not None and self.signal not in get_args(SignalTarget):
            raise ValueError(f"signal must be one of {get_args(SignalTarget)} or None, got {self.signal!r}")
        if self.requeue and self.signal and limit is not None and limit < 2 * SIGNAL_LEAD_S:
            # The signal would come right after the start, and the job would requeue itself forever.
            raise ConfigError(f"cluster.time={self.time} leaves no time to work: the requeue signal comes "
                              f"{SIGNAL_LEAD_S} s before the limit. Ask for at least "
                              f"{2 * SIGNAL_LEAD_S // 60} minutes, or set cluster.requeue=false")
        for key, value in (("cluster.partition", self.partition), ("cluster.account", self.account),
                           ("cluster.mem", self.mem)):
            if value is not None:
                _check_word(f"value for config key {key!r}", value)
        object.__setattr__(self, "extra", tuple(normalize_extra_line(line) for line in self.extra))

    def lines(self) -> list[str]:
        options = [f"--job-name={self.job_name}"]
        if self.array is not None:
            options.append(f"--array={self.array}")
        options += [f"--nodes={self.nodes}", f"--ntasks-per-node={self.tasks_per_node}"]
        if self.gpus_per_node:
            options.append(f"--gpus-per-node={self.gpus_per_node}")
        options.append(f"--cpus-per-task={self.cpus_per_task}")
        if self.mem:
            options.append(f"--mem={self.mem}")
        options.append(f"--time={self.time}")
        if self.partition:
            options.append(f"--partition={self.partition}")
        if self.account:
            options.append(f"--account={self.account}")
        if self.chdir:
            options.append(f"--chdir={self.chdir}")
        options += [f"--output={self.output}", "--open-mode=append"]  # a requeued run appends to its log
        options.append("--requeue" if self.requeue else "--no-requeue")
        if self.requeue and self.signal:
            options.append(f"--signal={'B:' if self.signal == 'batch' else ''}USR1@{SIGNAL_LEAD_S}")
        options += self.extra  # last, so they override the lines above
        return [f"#SBATCH {option}" for option in options]


def _command(words: Sequence[str]) -> str:
    return " ".join(shlex.quote(word) for word in words)


_COMMON_START = """set -euo pipefail
echo "diffaug: job ${SLURM_JOB_ID} on ${SLURM_JOB_NODELIST}, restart ${SLURM_RESTART_COUNT:-0}, $(date -Is)"
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
PYTHON=${DIFFAUG_PYTHON:-%(python)s}
"""


def render_train_script(options: SbatchOptions, *, configs: Sequence[str] = (), overrides: Sequence[str] = (),
                        python: str = "python", title: str = "diffaug training.") -> str:
    """An sbatch script that trains with ``configs`` and ``overrides`` (plus any arguments given to sbatch
    after the script name), one DDP rank per task, resuming after a requeue."""
    words = ["training.resume=auto", *configs, *overrides]
    ranks = f"{options.nodes} node(s) x {options.tasks_per_node} task(s), one DDP rank per task" + (
        " and GPU" if options.gpus_per_node else " (CPU)")
    return f"""#!/bin/bash
# {title}
# {ranks}.
{chr(10).join(options.lines())}
#
# Arguments after the script name are more config files and key=value overrides:
#   sbatch <this script> configs/experiment/x.yaml training.max_steps=20000
# On SIGUSR1 (sent {SIGNAL_LEAD_S} s before the time limit, or by `scancel --signal=USR1 JOB`) the run saves
# hpc_ckpt_N.ckpt in its run directory at the next step, requeues this job and stops; the requeued job
# resumes from that checkpoint (training.resume=auto), in the same W&B run.
{_COMMON_START % {"python": shlex.quote(python)}}
# The allocation decides devices and nodes (Lightning checks that they match it).
srun --kill-on-bad-exit=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" \\
    "$PYTHON" -m diffaug train {_command(words)} "$@" \\
    training.devices="$SLURM_NTASKS_PER_NODE" training.num_nodes="$SLURM_JOB_NUM_NODES"
"""


def render_export_script(options: SbatchOptions, *, checkpoint: str | None, overrides: Sequence[str] = (),
                         python: str = "python", title: str = "diffaug export.") -> str:
    """An sbatch job-array script: each array task exports its own part of the set from ``checkpoint``
    (``None``: the checkpoint comes with the arguments given to sbatch after the script name)."""
    if options.array is None:
        raise ValueError("an export job needs options.array, e.g. '0-3' for four parts")
    words = [*([checkpoint] if checkpoint is not None else []), *overrides]
    return f"""#!/bin/bash
# {title}
# A job array: array task i of N exports part i of the augmentation set.
{chr(10).join(options.lines())}
#
# Arguments after the script name are the checkpoint (unless given below) and key=value overrides:
#   sbatch <this script> runs/x/model.safetensors export.per_class=1000
# Task i of N writes the images of part i; a requeued or repeated task keeps the images already written; the
# last part to finish writes manifests, shards and the dataset card (or run: sample.py --finalize OUT_DIR).
# On SIGUSR1 to this batch shell (sent {SIGNAL_LEAD_S} s before the time limit, or by
# `scancel --batch --signal=USR1 JOB_TASK`) the task requeues itself.
{_COMMON_START % {"python": shlex.quote(python)}}
TASK="${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
requeue() {{
    echo "diffaug: requeue signal; requeueing $TASK"
    scontrol requeue "$TASK"
}}
trap requeue USR1

srun --kill-on-bad-exit=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" \\
    "$PYTHON" -m diffaug export {(_command(words) + " ") if words else ""}"$@" &
STEP=$!
# A trapped signal ends `wait` early: wait again until the step itself ends, and exit with its status.
while true; do
    status=0
    wait "$STEP" || status=$?
    kill -0 "$STEP" 2>/dev/null || exit "$status"
done
"""


# ---------------------------------------------------------------- the scripts kept in slurm/


def example_scripts() -> dict[str, str]:
    """File name -> text of the ready-made scripts in the repository's ``slurm/`` folder.

    They take the config (or checkpoint) and overrides as arguments; ``diffaug slurm submit`` renders the same
    scripts with the ``cluster`` section of the config filled in.
    """
    def options(**kwargs) -> SbatchOptions:
        base = dict(tasks_per_node=4, gpus_per_node=4, cpus_per_task=8, time="24:00:00", nodes=1,
                    signal="tasks")
        return SbatchOptions(**{**base, **kwargs})

    return {
        "train_single_node.sbatch": render_train_script(
            options(job_name="diffaug-train", output="%x-%j.out"),
            title="diffaug training on one node; edit the #SBATCH lines to fit your cluster."),
        "train_multi_node.sbatch": render_train_script(
            options(job_name="diffaug-train", nodes=2, output="%x-%j.out"),
            title="diffaug training on several nodes; edit the #SBATCH lines to fit your cluster."),
        "export_array.sbatch": render_export_script(
            options(job_name="diffaug-export", array="0-3", tasks_per_node=1, gpus_per_node=1,
                    time="04:00:00", output="%x-%A_%a.out", signal="batch"),
            checkpoint=None,
            title="diffaug export in four parts; edit --array and the #SBATCH lines to fit your cluster."),
    }
