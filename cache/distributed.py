"""Multi-process caching: ``torchrun --nproc-per-node N -m explorer.cli cache ...``.

Each rank caches a contiguous, batch-aligned shard of the prompts into its own study file
``OUT.rank{r}-of-{n}.h5`` (resumable like any study file); after all ranks finish, rank 0
merges the shards into OUT (``store.merge``) and removes them. Shard boundaries fall on
multiples of the batch size, so every batch, and hence every float, is the one a
single-process run computes: the merged file has the same contents.

Only control messages cross processes (batch size, success flags), the data goes through the
files, so the process group is always gloo on CPU tensors, also when the ranks run on GPUs
(nccl would only add a CUDA dependency to four integers). A rank that fails still joins the
next collective with a failure flag, so no rank is left waiting for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from cache.pipeline import CacheConfig, run_cache
from store.errors import InputError
from store.merge import merge_shards, shard_path

# Ranks wait at the end for the slowest one; shards are equal in size but not in cost.
_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True, kw_only=True)
class Rank:
    """This process's place in a torchrun job."""

    rank: int
    """Global rank: which shard this process caches."""
    world: int
    """Number of processes: the number of shards."""
    local_rank: int
    """Rank on this machine: which GPU it uses."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world or self.local_rank < 0:
            raise InputError(f"inconsistent torchrun environment: RANK={self.rank}, WORLD_SIZE={self.world}")


def torchrun_rank() -> Rank | None:
    """This process's rank when started by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    return Rank(rank=int(os.environ.get("RANK", "0")), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: str, local_rank: int) -> str:
    """``auto``/``cuda`` → this rank's own GPU ``cuda:LOCAL_RANK``; anything else unchanged."""
    from cache.presets import resolve_device_name

    name = resolve_device_name(device)
    return f"cuda:{local_rank}" if name == "cuda" else name


def _all_min(value: int) -> int:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def _from_rank0(value: int) -> int:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def _together(step: Callable[[], object], rank: Rank, what: str) -> object:
    """Run ``step`` on every rank; if it fails anywhere, every rank raises (none is left waiting)."""
    result, error = None, None
    try:
        result = step()
    except BaseException as caught:  # KeyboardInterrupt too: the others must not hang
        error = caught
    if _all_min(0 if error is not None else 1) == 0:
        if error is not None:
            raise error
        raise InputError(f"rank {rank.rank}: stopped because another rank failed while {what} (see its error); "
                         "finished shards are kept, rerun the same command with --resume")
    return result


def _is_complete_study(path: Path) -> bool:
    from store import Study

    with Study(path) as study:
        return study.meta.complete


def run_distributed(
    config: CacheConfig, rank: Rank, *, preflight: bool = True, preflight_only: bool = False,
    echo: Callable[[str], None] = print,
) -> Path | None:
    """This rank's part of a sharded cache run; returns OUT on rank 0 once merged, else None."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank.rank, world_size=rank.world, timeout=_TIMEOUT)
    try:
        # Ranks may see different GPUs (and so preset batch sizes); the shard boundaries need one.
        config = replace(config, batch_size=_all_min(config.batch_size))
        device = rank_device(config.device, rank.local_rank)
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        shard = shard_path(config.out, rank.rank, rank.world)
        done = _together(lambda: _prepare(config), rank, "checking the output")
        if _from_rank0(int(bool(done))):  # rank 0 alone may see OUT (no shared filesystem)
            return config.out if rank.rank == 0 else None
        shard_config = replace(config, out=shard, device=device, resume=config.resume and shard.exists())
        if preflight or preflight_only:
            from cache.preflight import run_preflight

            report = _together(lambda: run_preflight(shard_config, n_shards=rank.world), rank, "running the pre-flight check")
            if rank.rank == 0:
                echo(f"{report.table()}\n  ranks       {rank.world} (this table: rank 0, {device})")
            if preflight_only:
                return None

        _together(lambda: run_cache(shard_config, shard=(rank.rank, rank.world), progress=rank.rank == 0), rank, "caching")
        shards = [shard_path(config.out, index, rank.world) for index in range(rank.world)]
        _together(lambda: _merge(config, shards) if rank.rank == 0 else None, rank, "merging")
        return config.out if rank.rank == 0 else None
    finally:
        dist.destroy_process_group()


def _prepare(config: CacheConfig) -> bool:
    """Check OUT as a single-process run would, except that --resume may find only shards;
    True when a resumed OUT is already complete."""
    out = config.out
    if out.exists() and out.is_dir():
        raise InputError(f"{out} is a directory; --out needs a file path such as study.h5")
    if out.exists() and not (config.resume or config.overwrite):
        raise InputError(f"{out} already exists; pass --resume to continue it or --overwrite to replace it")
    if config.resume and out.exists():
        if _is_complete_study(out):
            return True
        raise InputError(f"{out} is an interrupted single-process study; resume it without torchrun")
    return False


def _merge(config: CacheConfig, shards: list[Path]) -> None:
    missing = [path for path in shards if not path.exists()]
    if missing:
        raise InputError(
            f"shard {missing[0]} is not visible from rank 0 (no shared filesystem?); copy all shards to one machine and run "
            f"`refusal-explorer merge {config.out} {' '.join(str(path) for path in shards)}`"
        )
    merge_shards(config.out, shards, overwrite=True)
    for path in shards:
        path.unlink()
