"""Multi-process training with PyTorch's own launcher:

    torchrun --nproc-per-node N em_unet.py -f config.yaml -t UNET

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`setup` then joins the process group (nccl on
GPUs, gloo on the CPU, chosen automatically). The single-process command is unchanged: without
torchrun every helper here is a no-op for a world of one.

Semantics kept equal to a single process: ``batch_size`` is the GLOBAL batch (each of N ranks takes
batch_size / N); the data order is one permutation per (seed, epoch), dealt out to the ranks so
that global batch k holds the same samples as batch k of a single process; validation is sharded
and the per-slice metrics are gathered before averaging, so the validation numbers are exactly a
single process's. Only rank 0 writes logs, checkpoints and figures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes outputs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched() -> bool:
    """True when started by torchrun (or another launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(use_cuda: bool) -> World:
    """Join the process group when launched by torchrun; returns this process's :class:`World`."""
    if not launched():
        return SINGLE
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return World(rank, size, local_rank)


def teardown(world: World) -> None:
    """Leave the process group (end of the run)."""
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def gather(obj: Any, world: World) -> list:
    """Every rank's ``obj``, in rank order, on every rank (picklable Python objects)."""
    if not world.active:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def share(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Wait until every process of ``world`` gets here (a no-op for a single process)."""
    if world.active:
        dist.barrier()


class EpochShuffle(Sampler):
    """The training order: one permutation of the dataset per (seed, epoch), repeatable and resumable.
    With N ranks it is padded (repeating its first indices) to a multiple of N and dealt out round
    robin, so that rank r gets positions r, r + N, ...: a global batch of B = N x b consecutive
    positions is then exactly the union of the ranks' b-sized batches."""

    def __init__(self, n: int, seed: int, world: World = SINGLE):
        self.n, self.seed, self.world, self.epoch = n, seed, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """The whole (padded) permutation of this epoch."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        pad = (-len(perm)) % self.world.size
        return perm + perm[:pad]

    def __iter__(self):
        return iter(self.order()[self.world.rank::self.world.size])

    def __len__(self) -> int:
        return -(-self.n // self.world.size)


class Shard(Sampler):
    """Validation indices rank, rank + N, ... in order (no padding: every slice is scored once)."""

    def __init__(self, n: int, world: World):
        self.indices = list(range(world.rank, n, world.size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
