"""Small helpers around torch.distributed for runs launched with torchrun.

Without torchrun (or with ``WORLD_SIZE=1``) every helper degrades to the
single-process answer, so the training loop can call them unconditionally.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def launched_distributed() -> bool:
    """True when the environment asks for more than one process (torchrun)."""
    return _env_int("WORLD_SIZE", 1) > 1


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else _env_int("RANK", 0)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else _env_int("WORLD_SIZE", 1)


def is_main_process() -> bool:
    return rank() == 0


def setup(device_type: str = "cpu") -> bool:
    """Initialise the default process group when launched with torchrun.

    Uses NCCL for CUDA and gloo otherwise. Returns True when this call created
    the group (and so :func:`cleanup` should destroy it), False when there was
    nothing to do (single process, or the caller initialised it already).
    """
    if not launched_distributed() or not dist.is_available() or is_initialized():
        return False
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend)
    return True


def cleanup() -> None:
    """Destroy the default process group if one is running."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over all processes (no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model
