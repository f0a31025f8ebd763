"""Weights & Biases for every command: how a run opens, and the artifacts that chain a checkpoint to the
augmentation set it made and to the evaluations of that set.

    train        logs   <name>-model    (model.safetensors; Lightning logs the checkpoints as model-<run id>)
    export       uses   <name>-model,   logs <name>-set  (the exported folder, by reference)
    eval         uses   <name>-set      (every set a report read)

A consumer builds the artifact of what it reads from the file or folder itself (by reference: nothing is
copied or uploaded), so its digest is that of the version the producer logged, and W&B resolves it to that
version. Online, ``use_artifact`` draws the link in the lineage graph. W&B refuses ``use_artifact`` in offline
mode, so every consumer also writes its inputs (name, type, digest) into its run config and into the metadata
of what it logs: an offline run holds the same chain, and a user can follow it before syncing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

MODEL_TYPE = "model"
SET_TYPE = "dataset"


def enabled(cfg: DictConfig) -> bool:
    return cfg.logging.logger == "wandb"


def init_args(cfg: DictConfig, *, name: str, job_type: str, directory: str | Path) -> dict[str, Any]:
    """The ``wandb.init`` arguments every diffaug run shares (also what the training WandbLogger passes on)."""
    log = cfg.logging
    return {"project": log.project, "entity": log.entity, "mode": log.mode, "tags": list(log.tags),
            "name": name, "job_type": job_type, "dir": str(directory)}


@contextmanager
def open_run(cfg: DictConfig, *, name: str, job_type: str, directory: str | Path,
             config: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A W&B run of its own, files under ``directory``/wandb; a run still open in this process (e.g. a
    train() before) is finished first, which is what the deprecated ``reinit=True`` did."""
    import wandb

    if wandb.run is not None:
        wandb.finish()
    Path(directory).mkdir(parents=True, exist_ok=True)
    with wandb.init(**init_args(cfg, name=name, job_type=job_type, directory=directory),
                    config=dict(config or {})) as run:
        yield run


# ---------------------------------------------------------------- artifacts


def artifact_name(run_name: str, kind: str) -> str:
    """W&B artifact names allow letters, digits, ``-``, ``_`` and ``.``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{run_name}-{kind}")


def model_artifact(weights: str | Path, *, run_name: str, upload: bool = False,
                   metadata: Mapping[str, Any] | None = None) -> Any:
    """``<run_name>-model`` holding the weights file under its own name: uploaded by the run that made it,
    a reference (same digest) for the runs that read it."""
    import wandb

    path = Path(weights).resolve()
    artifact = wandb.Artifact(artifact_name(run_name, "model"), type=MODEL_TYPE, metadata=dict(metadata or {}))
    if upload:
        artifact.add_file(str(path))
    else:
        artifact.add_reference(path.as_uri())
    return artifact


def _card(export_dir: Path) -> dict[str, Any]:
    path = export_dir / "dataset_card.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def set_artifact(export_dir: str | Path, *, metadata: Mapping[str, Any] | None = None) -> Any:
    """``<name>-set`` for an exported folder, named after the training run in its dataset card (else the
    folder). A checksummed reference: sets can be large, and the digest still names the exact files."""
    import wandb

    root = Path(export_dir).resolve()
    card = _card(root)
    run_name = (card.get("config") or {}).get("name") or root.name
    facts = {key: card[key] for key in ("num_images", "config_hash", "checkpoint_sha256") if key in card}
    artifact = wandb.Artifact(artifact_name(run_name, "set"), type=SET_TYPE,
                              metadata={**facts, "path": str(root), **(metadata or {})})
    artifact.add_reference(root.as_uri())
    return artifact


def describe(artifact: Any) -> dict[str, str]:
    return {"name": artifact.name, "type": artifact.type, "digest": artifact.digest}


def use(run: Any, artifacts: Sequence[Any]) -> list[dict[str, str]]:
    """Declare what this run read: linked online, recorded in the run config (``inputs``) in both modes."""
    inputs = [describe(a) for a in artifacts]
    run.config.update({"inputs": inputs}, allow_val_change=True)
    if run.settings.mode not in ("offline", "dryrun"):
        for artifact in artifacts:
            run.use_artifact(artifact)
    return inputs


def log_artifact(run: Any, artifact: Any) -> dict[str, str]:
    run.log_artifact(artifact, aliases=["latest"])
    return describe(artifact)


# ---------------------------------------------------------------- the runs of export and sampling


def _sections(cfg: DictConfig, *names: str) -> dict[str, Any]:
    return {name: OmegaConf.to_container(cfg[name], resolve=True) for name in names}


def log_export(cfg: DictConfig, checkpoint: str | Path, export_dir: str | Path) -> dict[str, str]:
    """The export's run: it uses the model artifact of ``checkpoint`` and logs the finished set."""
    with open_run(cfg, name=f"{cfg.name}-export", job_type="export", directory=cfg.run_dir,
                  config=_sections(cfg, "sampling", "export")) as run:
        inputs = use(run, [model_artifact(checkpoint, run_name=cfg.name)])
        return log_artifact(run, set_artifact(export_dir, metadata={"inputs": inputs}))


def log_grid(cfg: DictConfig, checkpoint: str | Path, grid: str | Path, class_names: Sequence[str]) -> None:
    """A preview grid as an image of a run that uses the model artifact of ``checkpoint``."""
    import wandb

    with open_run(cfg, name=f"{cfg.name}-sample", job_type="sample", directory=cfg.run_dir,
                  config=_sections(cfg, "sampling")) as run:
        use(run, [model_artifact(checkpoint, run_name=cfg.name)])
        run.log({"samples": wandb.Image(str(grid), caption=f"rows: {', '.join(class_names)}")})
