"""The generic training loop, used for float training and for QAT.

``train`` runs Adam on ``loss_fn(model(mixture), sources)`` for a fixed number
of optimizer steps, validates and writes a resumable state file
(``out_dir/train_state.pt``) on a schedule, and continues bit-for-bit from that
file with ``resume=True``.

Determinism: the data order of epoch ``e`` is a permutation drawn from a
generator seeded with ``(seed, epoch)`` alone, so a resumed run only has to skip
the batches already done in the current epoch. The RNG states of torch, numpy
and ``random`` are saved in the state file and restored on resume.

Under ``torchrun`` (``WORLD_SIZE > 1``) each process takes a contiguous slice
of every global batch of ``batch_size * world_size`` items, so the run sees the
same batches as one process with that larger batch size.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from compressor.errors import TrainingError
from compressor.losses import with_source_axis
from compressor.module_mode import set_training
from compressor.training import distributed
from compressor.training.config import TrainConfig

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
STATE_VERSION = 1
# Config keys that may differ between the saved state and a resumed run.
RESUMABLE_KEYS = frozenset({"steps"})

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CheckpointCallback = Callable[[int, nn.Module], None]


@dataclass
class TrainResult:
    """What ``train`` returns.

    step:            the last optimizer step done (== config.steps).
    train_loss:      the (all-process mean) training loss of that last step.
    best_valid_loss: lowest validation loss seen (None without a valid_set).
    last_valid_loss: the most recent validation loss.
    history:         list of dicts, one per logging / validation step, with
                     ``step``, ``epoch``, ``lr`` and ``train_loss`` and/or ``valid_loss``.
    state_path:      path of ``train_state.pt``.
    epoch:           the epoch the next step would be in.
    """

    step: int
    train_loss: float | None
    best_valid_loss: float | None
    last_valid_loss: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    state_path: Path = Path(STATE_FILE)
    epoch: int = 0


# --------------------------------------------------------------------- helpers


def _mix_seed(*parts: int) -> int:
    """Deterministic 63-bit seed from integers (no Python hash randomisation)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9
        value &= 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


def epoch_permutation(num_items: int, seed: int, epoch: int) -> list[int]:
    """The shuffled item order of one epoch, a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(_mix_seed(seed, epoch))
    return torch.randperm(num_items, generator=generator).tolist()


def epoch_batches(
    num_items: int, seed: int, epoch: int, batch_size: int, world_size: int = 1, rank: int = 0
) -> list[list[int]]:
    """This process's item indices of every (global) batch of an epoch.

    Global batch ``k`` is ``perm[k*G:(k+1)*G]`` with ``G = batch_size * world_size``
    (the incomplete last batch is dropped); rank ``r`` takes its slice
    ``[r*batch_size:(r+1)*batch_size]``.
    """
    global_batch = batch_size * world_size
    perm = epoch_permutation(num_items, seed, epoch)
    out = []
    for k in range(num_items // global_batch):
        start = k * global_batch + rank * batch_size
        out.append(perm[start : start + batch_size])
    return out


def _collate(items: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        mixture = torch.stack([torch.as_tensor(item["mixture"]) for item in items])
        sources = torch.stack([torch.as_tensor(item["sources"]) for item in items])
    except KeyError as exc:
        raise TrainingError(
            f"dataset items must be dicts with 'mixture' and 'sources', missing {exc}"
        ) from None
    except (RuntimeError, TypeError) as exc:
        ids = [str(item.get("id", "?")) for item in items]
        raise TrainingError(
            f"cannot batch training items {ids}: {exc} (items of one batch must have the "
            "same length; set segment_seconds on the training set)"
        ) from None
    return mixture, sources


def _identity(item: Any) -> Any:
    return item


def _resolve_device(config: TrainConfig) -> torch.device:
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        logger.warning("device 'cuda' requested but CUDA is not available; training on CPU")
    if config.device in ("auto", "cuda") and cuda:
        if distributed.launched_distributed():
            return torch.device("cuda", distributed.local_rank())
        return torch.device("cuda")
    return torch.device("cpu")


def _rng_state() -> dict[str, Any]:
    """All global RNG states, as tensors / plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning("CUDA device count changed since the checkpoint; CUDA RNG not restored")
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate(
        (py_state["version"], tuple(int(x) for x in py_state["state"].tolist()), py_state["gauss_next"])
    )


def _seed_everything(seed: int, rank: int) -> None:
    torch.manual_seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    random.seed(seed + rank)


def _build_optimizer(
    model: nn.Module, config: TrainConfig, param_groups: Iterable[Mapping[str, Any]] | None
) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    seen: set[int] = set()
    groups: list[dict[str, Any]] = []
    for index, group in enumerate(param_groups or []):
        if not isinstance(group, Mapping) or "params" not in group:
            raise TrainingError(f"param_groups[{index}] must be a dict with a 'params' entry")
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        kept = []
        for p in params:
            if id(p) in seen:
                raise TrainingError(f"a parameter appears twice in param_groups (group {index})")
            seen.add(id(p))
            if p.requires_grad:
                kept.append(p)
        if kept:
            group["params"] = kept
            groups.append(group)
    rest = [p for p in trainable if id(p) not in seen]
    if rest:
        groups.insert(0, {"params": rest})
    all_params = [p for g in groups for p in g["params"]]
    if not all_params:
        raise TrainingError("the model has no trainable parameters")
    optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return optimizer, all_params


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
    steps, warmup, cosine = config.steps, config.warmup_steps, config.lr_schedule == "cosine"

    def factor(step: int) -> float:
        # `step` = optimizer steps already done; the factor applies to the next one.
        if warmup and step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        raise TrainingError(f"cannot read training state {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise TrainingError(f"{path} is not a training state file of this version")
    return state


def _check_resume(state: Mapping[str, Any], config: TrainConfig, path: Path, world: int) -> None:
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise TrainingError(f"{path} holds no training config")
    current = config.to_dict()
    missing = object()
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_KEYS:
            continue
        old, new = saved.get(key, missing), current.get(key, missing)
        if old != new:
            old_s = "<absent>" if old is missing else repr(old)
            new_s = "<absent>" if new is missing else repr(new)
            raise TrainingError(
                f"cannot resume from {path}: config key '{key}' differs "
                f"(saved {old_s}, now {new_s}); only 'steps' may change on resume"
            )
    if state["step"] > config.steps:
        raise TrainingError(
            f"cannot resume from {path}: it is at step {state['step']}, "
            f"past config.steps={config.steps}"
        )
    if state.get("world_size", 1) != world:
        raise TrainingError(
            f"cannot resume from {path}: it was written by {state.get('world_size', 1)} "
            f"process(es), this run has {world} (the global batch would change)"
        )


@torch.no_grad()
def _validate(
    model: nn.Module,
    valid_set: Dataset,
    loss_fn: LossFn,
    device: torch.device,
    batch_size: int,
    num_workers: int,
) -> float | None:
    """Mean loss per item over valid_set (sharded over processes, then summed).

    Consecutive items of equal shape are batched up to ``batch_size``; items
    of differing length go through one at a time.
    """
    rank, world = distributed.rank(), distributed.world_size()
    indices = list(range(rank, len(valid_set), world))
    loader = DataLoader(
        Subset(valid_set, indices),
        batch_size=None,
        collate_fn=_identity,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )
    total = torch.zeros(2, dtype=torch.float64)
    pending: list[Mapping[str, Any]] = []

    def flush() -> None:
        if not pending:
            return
        mixture, sources = _collate(pending)
        estimates = with_source_axis(model(mixture.to(device)))
        loss = loss_fn(estimates, sources.to(device))
        total[0] += float(loss.detach().double().mean()) * len(pending)
        total[1] += len(pending)
        pending.clear()

    for item in loader:
        if pending and (
            len(pending) >= batch_size
            or tuple(torch.as_tensor(item["mixture"]).shape) != tuple(torch.as_tensor(pending[0]["mixture"]).shape)
            or tuple(torch.as_tensor(item["sources"]).shape) != tuple(torch.as_tensor(pending[0]["sources"]).shape)
        ):
            flush()
        pending.append(item)
    flush()
    if distributed.is_distributed():
        reduced = total.to(device) if device.type == "cuda" else total
        distributed.all_reduce_sum(reduced)
        total = reduced.cpu()
    if total[1] == 0:
        return None
    return float(total[0] / total[1])


# ------------------------------------------------------------------ the loop


def train(
    model: nn.Module,
    train_set: Dataset,
    valid_set: Dataset | None,
    loss_fn: LossFn,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    param_groups: Iterable[Mapping[str, Any]] | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` for ``config.steps`` Adam steps; see the module docstring.

    model:         maps mixtures (B, T) to estimates (B, S, T); moved to the
                   training device in place. May be an exported GraphModule.
    train_set:     items ``{"mixture": (T,), "sources": (S, T), ...}`` of fixed
                   length; ``set_epoch(epoch)`` is called when it exists.
    valid_set:     same item format (lengths may vary), or None.
    loss_fn:       ``loss_fn(estimates, sources) -> scalar`` to minimise.
    out_dir:       where ``train_state.pt`` is written (rank 0 only).
    resume:        continue from ``out_dir/train_state.pt`` (fresh start with a
                   log message when it does not exist). Only ``steps`` may
                   differ from the saved config.
    param_groups:  optional Adam parameter groups (dicts with ``params`` and
                   e.g. their own ``lr``); parameters not in any group form a
                   default group with ``config.lr``.
    on_checkpoint: ``on_checkpoint(step, model)``, called on rank 0 after each
                   state file write, with the unwrapped model.
    progress:      show a tqdm progress bar (rank 0 only).

    Raises TrainingError on a non-finite loss (naming the step; the last
    state file is left intact), a bad resume state or unusable data.
    """
    out_dir = Path(out_dir)
    device = _resolve_device(config)
    owns_group = distributed.setup(device.type)
    prev_deterministic = torch.are_deterministic_algorithms_enabled()
    prev_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        return _train(
            model, train_set, valid_set, loss_fn, config, out_dir, device,
            resume=resume, param_groups=param_groups, on_checkpoint=on_checkpoint,
            progress=progress,
        )
    finally:
        torch.use_deterministic_algorithms(prev_deterministic, warn_only=prev_warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev_cudnn
        if owns_group:
            distributed.cleanup()


def _train(
    model: nn.Module,
    train_set: Dataset,
    valid_set: Dataset | None,
    loss_fn: LossFn,
    config: TrainConfig,
    out_dir: Path,
    device: torch.device,
    *,
    resume: bool,
    param_groups: Iterable[Mapping[str, Any]] | None,
    on_checkpoint: CheckpointCallback | None,
    progress: bool,
) -> TrainResult:
    from tqdm import tqdm

    rank, world = distributed.rank(), distributed.world_size()
    is_main = rank == 0
    state_path = out_dir / STATE_FILE
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    model = distributed.unwrap(model)
    model.to(device)
    optimizer, params = _build_optimizer(model, config, param_groups)
    lr_factor = _lr_factor(config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lr_factor)

    step, epoch, position = 0, 0, 0
    history: list[dict[str, Any]] = []
    best_valid: float | None = None
    last_valid: float | None = None
    last_train: float | None = None
    window_sum, window_count = 0.0, 0

    state = None
    if resume:
        if state_path.exists():
            state = _load_state(state_path)
            _check_resume(state, config, state_path, world)
        else:
            logger.info("resume requested but %s does not exist; starting a fresh run", state_path)
    elif is_main and state_path.exists():
        logger.info("starting a fresh run; %s will be overwritten", state_path)

    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise TrainingError(f"cannot resume from {state_path}: {exc}") from exc
        # Re-derive the learning rates (the schedule may depend on an extended `steps`).
        lrs = [base * lr_factor(scheduler.last_epoch) for base in scheduler.base_lrs]
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = list(lrs)  # noqa: SLF001 - keep get_last_lr() consistent
        step, epoch, position = int(state["step"]), int(state["epoch"]), int(state["position"])
        history = list(state["history"])
        best_valid, last_valid = state["best_valid_loss"], state["last_valid_loss"]
        last_train = state["last_train_loss"]
        window_sum, window_count = float(state["window"][0]), int(state["window"][1])
        rng_states = state["rng"]
        _set_rng_state(rng_states[rank % len(rng_states)])
        if is_main:
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", state_path, step, epoch, position)
    else:
        _seed_everything(config.seed, rank)

    def result() -> TrainResult:
        return TrainResult(
            step=step, train_loss=last_train, best_valid_loss=best_valid,
            last_valid_loss=last_valid, history=history, state_path=state_path, epoch=epoch,
        )

    if step >= config.steps:
        return result()

    num_items = len(train_set)
    batches_per_epoch = num_items // (config.batch_size * world)
    if batches_per_epoch == 0:
        raise TrainingError(
            f"the training set has {num_items} items, fewer than one global batch of "
            f"{config.batch_size * world} (batch_size {config.batch_size} x {world} process(es))"
        )
    if position >= batches_per_epoch:
        raise TrainingError(
            f"cannot resume from {state_path}: it is at batch {position} of epoch {epoch}, "
            f"but an epoch now has {batches_per_epoch} batches (did the training set change?)"
        )

    train_model: nn.Module = model
    if distributed.is_distributed():
        # Models may hold parameters that no output depends on (Conv-TasNet's
        # last residual conv); DDP must not wait for their gradients.
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )

    def write_state() -> None:
        rng_states = distributed.all_gather_object(_rng_state())  # also syncs the processes
        if is_main:
            payload = {
                "version": STATE_VERSION,
                "step": step,
                "epoch": epoch,
                "position": position,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "best_valid_loss": best_valid,
                "last_valid_loss": last_valid,
                "last_train_loss": last_train,
                "window": [window_sum, window_count],
                "rng": rng_states,
                "world_size": world,
                "config": config.to_dict(),
            }
            tmp = state_path.with_name(f".{state_path.name}.{os.getpid()}.tmp")
            try:
                with open(tmp, "wb") as f:
                    torch.save(payload, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, state_path)
            finally:
                if tmp.exists():
                    tmp.unlink()
            if on_checkpoint is not None:
                on_checkpoint(step, model)
                set_training(train_model, True)
        distributed.barrier()

    bar = tqdm(
        total=config.steps, initial=step, desc="train", dynamic_ncols=True,
        disable=not (progress and is_main),
    )
    try:
        while step < config.steps:
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            batches = epoch_batches(num_items, config.seed, epoch, config.batch_size, world, rank)
            loader = DataLoader(
                train_set,
                batch_sampler=batches[position:],
                collate_fn=_collate,
                num_workers=config.num_workers,
                pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(_mix_seed(config.seed, epoch, rank)),
            )
            set_training(train_model, True)
            for mixture, sources in loader:
                mixture = mixture.to(device, non_blocking=True)
                sources = sources.to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(with_source_axis(train_model(mixture)), sources)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                    raise TrainingError(f"loss_fn must return a scalar tensor, got {shape}")
                loss = loss.reshape(())
                loss.backward()
                reduced = loss.detach().double().reshape(1).clone()
                distributed.all_reduce_sum(reduced)
                loss_value = float(reduced.item()) / world
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"non-finite training loss ({loss_value}) at step {step + 1}; "
                        f"the last state file {state_path} is intact"
                    )
                if config.clip_enabled:
                    norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                    if not torch.isfinite(norm):
                        raise TrainingError(
                            f"non-finite gradient norm at step {step + 1}; "
                            f"the last state file {state_path} is intact"
                        )
                optimizer.step()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()

                step += 1
                position += 1
                if position == batches_per_epoch:
                    epoch, position = epoch + 1, 0
                last_train = loss_value
                window_sum += loss_value
                window_count += 1
                final = step == config.steps

                entry: dict[str, Any] = {}
                if step % config.log_every == 0 or final:
                    entry["train_loss"] = window_sum / window_count
                    window_sum, window_count = 0.0, 0
                if valid_set is not None and (
                    final or (config.validate_every and step % config.validate_every == 0)
                ):
                    set_training(train_model, False)
                    last_valid = _validate(
                        model, valid_set, loss_fn, device, config.batch_size, config.num_workers
                    )
                    set_training(train_model, True)
                    if last_valid is not None:
                        entry["valid_loss"] = last_valid
                        if best_valid is None or last_valid < best_valid:
                            best_valid = last_valid
                if entry:
                    entry = {"step": step, "epoch": epoch, "lr": lr, **entry}
                    history.append(entry)
                    if is_main:
                        logger.info(
                            "step %d/%d  %s", step, config.steps,
                            "  ".join(f"{k} {v:.5g}" for k, v in entry.items() if k.endswith("loss")),
                        )
                postfix = {"loss": f"{loss_value:.4f}"}
                if last_valid is not None:
                    postfix["valid"] = f"{last_valid:.4f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)

                if step % config.checkpoint_every == 0 or final:
                    write_state()
                if final:
                    break
    finally:
        bar.close()
    return result()
