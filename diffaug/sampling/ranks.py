"""Which part of an export this process makes.

Sources, first match wins: explicit ``rank``/``world_size`` arguments; a torch.distributed job (an
initialised process group, or the RANK/WORLD_SIZE variables torchrun sets); a SLURM job array
(SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT). A torchrun job inside an array task is one part per
(array task, process): part = task * processes + process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch.distributed as dist

from diffaug.config import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Partition:
    rank: int
    world_size: int
    uses_torch_distributed: bool = False  # parts synchronise with barriers and part 0 finalises
    source: str = "single process"

    @property
    def tag(self) -> str:
        return f"r{self.rank:05d}"


def _int_env(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def _slurm_array(env: Mapping[str, str]) -> tuple[int, int] | None:
    task_id, count = _int_env(env, "SLURM_ARRAY_TASK_ID"), _int_env(env, "SLURM_ARRAY_TASK_COUNT")
    if task_id is None or count is None:
        return None
    first = _int_env(env, "SLURM_ARRAY_TASK_MIN") or 0
    step = _int_env(env, "SLURM_ARRAY_TASK_STEP") or 1
    rank, remainder = divmod(task_id - first, step)
    if remainder or not 0 <= rank < count:
        raise ConfigError(
            f"SLURM array task {task_id} is not part of a contiguous array (min {first}, step {step}, "
            f"count {count}); submit a range like --array=0-{count - 1}, or pass --rank and --world-size"
        )
    return rank, count


def resolve_partition(
    rank: int | None = None, world_size: int | None = None, env: Mapping[str, str] | None = None
) -> Partition:
    env = os.environ if env is None else env
    if (rank is None) != (world_size is None):
        raise ConfigError("give both --rank and --world-size, or neither (then DDP or SLURM decide)")
    if rank is not None and world_size is not None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(
                f"--rank must be in [0, --world-size), got rank={rank}, world_size={world_size}"
            )
        return Partition(rank, world_size, source="explicit --rank/--world-size")

    array = _slurm_array(env)
    dist_rank = dist_world = None
    if dist.is_available() and dist.is_initialized():
        dist_rank, dist_world = dist.get_rank(), dist.get_world_size()
    elif _int_env(env, "WORLD_SIZE") is not None and _int_env(env, "RANK") is not None:
        dist_rank, dist_world = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE")

    if dist_world is not None and dist_world > 1:
        assert dist_rank is not None
        if array is None:
            return Partition(dist_rank, dist_world, True, "torch.distributed")
        task, tasks = array
        return Partition(
            task * dist_world + dist_rank, tasks * dist_world, True, "SLURM array x torch.distributed"
        )
    if array is not None:
        return Partition(array[0], array[1], source="SLURM array")
    return Partition(0, 1)


def init_distributed_if_launched(partition: Partition) -> bool:
    """Join the torchrun process group when launched by torchrun but not yet joined; True if joined here.

    Export only needs barriers, which gloo provides on every machine, so gloo is used even on GPUs.
    """
    if not partition.uses_torch_distributed or dist.is_initialized():
        return False
    dist.init_process_group(backend="gloo")
    log.info("joined torch.distributed group: rank %d of %d", dist.get_rank(), dist.get_world_size())
    return True
