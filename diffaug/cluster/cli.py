"""``diffaug slurm submit {train,export} ...``: render an sbatch script from the config and submit it.

    diffaug slurm submit train CONFIG.yaml... [key=value...] [--dry-run] [--log-dir DIR]
    diffaug slurm submit export CHECKPOINT [key=value...] [--parts N] [--dry-run] [--log-dir DIR]

Nodes, GPUs, partition, account, time, memory and extra ``#SBATCH`` lines come from the ``cluster`` section
(``cluster.gpus_per_node=8`` etc. on the command line). An export takes the ``cluster`` section stored in the
checkpoint, with ``cluster.*`` overrides applied. Prints the job id (``--dry-run``: the script instead).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffaug.cluster.render import (
    SbatchOptions,
    SignalTarget,
    job_name,
    render_export_script,
    render_train_script,
)
from diffaug.cluster.submit import SubmitError, submit_script
from diffaug.config import ClusterConfig, ConfigError, load_config
from diffaug.config.argv import checkpoint_and_overrides, parse_items_anywhere, split_items

logger = logging.getLogger(__name__)

DEFAULT_LOG_DIR = "slurm-logs"


def _tasks_per_node(cluster: DictConfig, devices: object) -> int:
    """One task per GPU; a CPU job (gpus_per_node=0) runs training.devices tasks (one if not a number)."""
    if cluster.gpus_per_node > 0:
        return int(cluster.gpus_per_node)
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1


def _options(cluster: DictConfig, *, name: str, nodes: int, tasks_per_node: int, gpus_per_node: int,
             output: str, signal: SignalTarget, array: str | None = None) -> SbatchOptions:
    return SbatchOptions(
        job_name=name, nodes=nodes, tasks_per_node=tasks_per_node, gpus_per_node=gpus_per_node,
        cpus_per_task=int(cluster.cpus_per_task), time=str(cluster.time), output=output,
        partition=cluster.partition, account=cluster.account, mem=cluster.mem, array=array,
        requeue=bool(cluster.requeue), signal=signal, chdir=str(Path.cwd()),
        extra=tuple(cluster.extra_sbatch),
    )


def _log_pattern(log_dir: str, pattern: str) -> str:
    return f"{log_dir.rstrip('/')}/{pattern}"


def render_train(items: Sequence[str], *, log_dir: str = DEFAULT_LOG_DIR) -> str:
    """The training script for ``diffaug train ITEMS...`` (config files and overrides), validated first."""
    files, overrides = split_items(items)
    cfg = load_config(files, overrides)
    options = _options(
        cfg.cluster, name=job_name("train", cfg.name), nodes=int(cfg.cluster.nodes),
        tasks_per_node=_tasks_per_node(cfg.cluster, cfg.training.devices),
        gpus_per_node=int(cfg.cluster.gpus_per_node), output=_log_pattern(log_dir, "%x-%j.out"),
        signal="tasks",
    )
    return render_train_script(options, configs=files, overrides=overrides, python=sys.executable)


def _checkpoint_cluster(checkpoint: str, overrides: Sequence[str]) -> tuple[DictConfig, list[str], str]:
    """(cluster section, export overrides, run name): the checkpoint's config with ``cluster.*`` overrides;
    the other overrides are checked now, as the export will apply them."""
    # Imported here: these load torch, which importing this module (render_train, the parser) need not.
    from diffaug.checkpoint import read_weights
    from diffaug.config.load import parse_overrides
    from diffaug.sampling import apply_overrides

    cluster_items = [o for o in overrides if o.split("=", 1)[0].strip().startswith("cluster.")]
    export_items = [o for o in overrides if o not in cluster_items]
    moved_autoencoder = OmegaConf.select(parse_overrides(export_items), "model.autoencoder", default=None)
    _, saved, _ = read_weights(checkpoint, autoencoder=moved_autoencoder)
    apply_overrides(saved, export_items)
    try:
        cluster = OmegaConf.merge(OmegaConf.structured(ClusterConfig), saved.cluster,
                                  parse_overrides(cluster_items).get("cluster", {}))
    except OmegaConfBaseException as error:
        raise ConfigError(f"invalid cluster override: {str(error).splitlines()[0]}") from None
    return cluster, export_items, str(saved.name)  # type: ignore[return-value]


def render_export(items: Sequence[str], *, parts: int | None = None, log_dir: str = DEFAULT_LOG_DIR) -> str:
    """The export array script for ``diffaug export CHECKPOINT OVERRIDES...``: ``parts`` array tasks
    (default: cluster.nodes x cluster.gpus_per_node), one GPU each (none if cluster.gpus_per_node=0)."""
    checkpoint, overrides = checkpoint_and_overrides(items)
    cluster, export_overrides, name = _checkpoint_cluster(checkpoint, overrides)
    parts = parts if parts is not None else int(cluster.nodes) * max(int(cluster.gpus_per_node), 1)
    if parts < 1:
        raise ConfigError(f"--parts must be at least 1, got {parts}")
    options = _options(
        cluster, name=job_name("export", name), nodes=1, tasks_per_node=1,
        gpus_per_node=min(int(cluster.gpus_per_node), 1), output=_log_pattern(log_dir, "%x-%A_%a.out"),
        signal="batch", array=f"0-{parts - 1}",
    )
    return render_export_script(options, checkpoint=checkpoint, overrides=export_overrides,
                                python=sys.executable)


# ---------------------------------------------------------------- command line


def _cmd_submit(args: argparse.Namespace) -> int:
    from diffaug.checkpoint import CheckpointError

    try:
        if args.kind == "train":
            script = render_train(args.items, log_dir=args.log_dir)
        else:
            script = render_export(args.items, parts=args.parts, log_dir=args.log_dir)
    except (CheckpointError, FileNotFoundError) as error:
        print(f"diffaug slurm: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(script, end="")
        return 0
    Path(args.log_dir).mkdir(parents=True, exist_ok=True)  # sbatch does not create the log folder
    try:
        job = submit_script(script)
    except SubmitError as error:
        print(f"diffaug slurm: {error}", file=sys.stderr)
        return 1
    logger.info("submitted %s job %s; log in %s/", args.kind, job, args.log_dir)
    print(job)
    return 0


def add_slurm_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``slurm submit {train,export}`` to a parser's subcommands; each sets ``func(args) -> int``."""
    slurm = commands.add_parser("slurm", help="submit training or export jobs to SLURM",
                                description=__doc__.splitlines()[0])
    actions = slurm.add_subparsers(dest="slurm_command", required=True, metavar="ACTION")
    submit = actions.add_parser("submit", help="render an sbatch script from the config and submit it")
    kinds = submit.add_subparsers(dest="kind", required=True, metavar="JOB")
    for kind, what, items_help in (
        ("train", "a training job (one DDP rank per GPU)", "config files and key=value overrides"),
        ("export", "an export job array (one part of the set per task)",
         "the checkpoint and key=value overrides"),
    ):
        p = kinds.add_parser(kind, help=what)
        p.add_argument("items", nargs="+", metavar="ITEM", help=items_help)
        p.add_argument("--dry-run", action="store_true", help="print the script instead of submitting it")
        p.add_argument("--log-dir", default=DEFAULT_LOG_DIR,
                       help=f"folder for the job logs, one per job (default: {DEFAULT_LOG_DIR})")
        if kind == "export":
            p.add_argument("--parts", type=int, default=None,
                           help="array tasks (default: cluster.nodes x cluster.gpus_per_node)")
        p.set_defaults(func=_cmd_submit)


def slurm_main(argv: Sequence[str] | None = None) -> int:
    """``python -m diffaug.cluster slurm submit ...``: the same command outside the ``diffaug`` CLI."""
    parser = argparse.ArgumentParser(prog="python -m diffaug.cluster")
    add_slurm_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parse_items_anywhere(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as error:
        print(f"diffaug slurm: config error: {error}", file=sys.stderr)
        return 2
