"""Data-parallel training when launched by `torchrun` (or `srun` + `torchrun`), else one process.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `setup` reads them, joins
the process group (NCCL between GPUs, gloo on CPU) and pins each process to GPU LOCAL_RANK. Only
rank 0 writes files and logs; metrics are summed over ranks before they are averaged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sitscli.engine.device import resolve_device


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False   # True when `setup` created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_spec: str) -> DistContext:
    """One process (the device from `device_spec`), or this process's place in a torchrun job."""
    if not launched_by_torchrun():
        return DistContext(0, 1, 0, resolve_device(device_spec))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec)
    if device.type == "cuda":  # one GPU per process, whatever cuda:N was asked for
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return DistContext(rank, world, local_rank, device, owns)


@contextlib.contextmanager
def process_group(device_spec: str, ctx: DistContext | None = None) -> Iterator[DistContext | None]:
    """`ctx` when the caller has one, else this torchrun job's place for the block (joined at its
    start, left at its end), else None (one process)."""
    if ctx is not None or not launched_by_torchrun():
        yield ctx
        return
    ctx = setup(device_spec)
    try:
        yield ctx
    finally:
        teardown(ctx)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP-wrap for a distributed run (rank 0's weights are broadcast to all), else unchanged.

    A model that may leave some of its parameters out of a step (`partial_steps` True: a multi-sensor
    model fed a subset of its sensors, a pretext that decodes only the masked modalities) makes DDP
    look for them each step (find_unused_parameters), which costs a graph traversal."""
    if not ctx.distributed:
        return model
    partial = any(getattr(m, "partial_steps", False) for m in model.modules())
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                   find_unused_parameters=partial)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def sum_over_ranks(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise sum of a 1-D tensor over all ranks (identity in one process)."""
    if ctx.distributed:
        values = values.to(ctx.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when it is true on one (so all ranks stop at the same step)."""
    if not ctx.distributed:
        return flag
    return bool(sum_over_ranks(torch.tensor([float(flag)]), ctx).item() > 0)


def gather(obj, ctx: DistContext, *, to_main: bool = False) -> list:
    """Every rank's `obj` (picklable) on every rank, in rank order; with `to_main`, on rank 0 only
    (the other ranks get [], and nothing is sent back to them: for large objects such as map blocks)."""
    if not ctx.distributed:
        return [obj]
    if to_main:
        out = [None] * ctx.world_size if ctx.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out or []
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out
