"""Tests of compressor.training: the generic (float / QAT) training loop."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor.errors import ConfigError, TrainingError
from compressor.training import TrainConfig, TrainResult, train
from compressor.training import distributed
from compressor.training.loop import STATE_FILE, epoch_batches

REPO_ROOT = Path(__file__).resolve().parents[1]
SEGMENT = 256


# ----------------------------------------------------------- toy ingredients


class TinyNet(nn.Module):
    """(B, T) -> (B, 2, T) with two small convolutions (and optional dropout)."""

    def __init__(self, dropout: float = 0.1, hidden: int = 8, out_bias: bool = True):
        super().__init__()
        self.inp = nn.Conv1d(1, hidden, 9, padding=4)
        self.drop = nn.Dropout(dropout)
        # SI-SNR ignores an output offset, so the output bias gets ~0 gradients that Adam
        # blows up to full-size steps: fine for training, but not for comparing two runs
        # whose gradients differ by rounding (DDP), hence the switch.
        self.out = nn.Conv1d(hidden, 2, 9, padding=4, bias=out_bias)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.relu(self.inp(mixture.unsqueeze(1)))))


class ToyMixtures(torch.utils.data.Dataset):
    """Smooth (low-pass) source + white-noise source; randomness from (seed, epoch, index).

    ``lengths`` makes items of differing length (like a validation set of whole files).
    """

    def __init__(self, n: int, seed: int = 0, length: int = SEGMENT, lengths=None):
        self.n, self.seed, self.length, self.lengths = n, seed, length, lengths
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(1_000_003 * self.seed + 7919 * self.epoch + index)
        length = self.lengths[index % len(self.lengths)] if self.lengths else self.length
        smooth = torch.randn(length + 16, generator=g)
        smooth = smooth.unfold(0, 17, 1).mean(-1)[:length] * 3.0
        noise = 0.5 * torch.randn(length, generator=g)
        sources = torch.stack([smooth, noise])
        return {"mixture": sources.sum(0), "sources": sources, "snr_db": 0.0, "id": f"item{index}"}


def si_snr(estimate: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    estimate = estimate - estimate.mean(-1, keepdim=True)
    target = target - target.mean(-1, keepdim=True)
    proj = (estimate * target).sum(-1, keepdim=True) / (target.pow(2).sum(-1, keepdim=True) + eps) * target
    noise = estimate - proj
    return 10 * torch.log10(proj.pow(2).sum(-1) / (noise.pow(2).sum(-1) + eps) + eps)


def neg_si_snr_pit(estimates: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Negative SI-SNR with permutation-invariant training, two sources."""
    direct = si_snr(estimates, sources).mean(-1)
    swapped = si_snr(estimates.flip(1), sources).mean(-1)
    return -torch.maximum(direct, swapped).mean()


def make_config(**overrides) -> TrainConfig:
    values = dict(
        steps=20, batch_size=4, lr=1e-2, grad_clip=5.0, checkpoint_every=5,
        validate_every=5, seed=3, log_every=5, device="cpu",
    )
    values.update(overrides)
    return TrainConfig(**values)


def make_model(seed: int = 0, dropout: float = 0.1, out_bias: bool = True) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(dropout=dropout, out_bias=out_bias)


def train_sets():
    # 24 items / batch 4 = 6 batches per epoch: steps 10 and 12 fall mid-epoch.
    return ToyMixtures(24, seed=1), ToyMixtures(6, seed=2, lengths=[200, 256, 300])


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: cheap on a shared machine, and the same in subprocesses."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """The uninterrupted reference run: 20 steps."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run_a")
    train_set, valid_set = train_sets()
    model = make_model()
    result = train(model, train_set, valid_set, neg_si_snr_pit, make_config(), out, progress=False)
    return model, result


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


# -------------------------------------------------------------------- config


def test_config_round_trip_and_validation():
    config = make_config(lr_schedule="cosine", warmup_steps=3, grad_clip=None)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig.from_dict({"steps": 3, "lr": 1e-3})
    for bad in (dict(steps=0), dict(lr=-1.0), dict(lr=float("nan")), dict(batch_size=2.5),
                dict(grad_clip=-1.0), dict(lr_schedule="step"), dict(seed=True), dict(device="tpu")):
        with pytest.raises(ConfigError):
            make_config(**bad)
    assert make_config(lr=1).lr == 1.0 and isinstance(make_config(lr=1).lr, float)


def test_epoch_batches_shard_the_global_batch():
    single = epoch_batches(20, seed=5, epoch=2, batch_size=4)
    ranks = [epoch_batches(20, seed=5, epoch=2, batch_size=2, world_size=2, rank=r) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == single
    assert epoch_batches(20, 5, 2, 4) == single and epoch_batches(20, 5, 3, 4) != single


# ---------------------------------------------------------------- training


def test_loss_decreases(tmp_path):
    train_set, valid_set = train_sets()
    model = make_model(dropout=0.0)
    config = make_config(steps=60, validate_every=60, log_every=10, checkpoint_every=60)
    result = train(model, train_set, valid_set, neg_si_snr_pit, config, tmp_path, progress=False)
    assert isinstance(result, TrainResult)
    assert result.step == 60 and result.state_path == tmp_path / STATE_FILE
    losses = [h["train_loss"] for h in result.history if "train_loss" in h]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 3.0, losses  # at least 3 dB of SI-SNR gained
    assert result.last_valid_loss is not None and result.last_valid_loss < -5.0
    assert result.best_valid_loss == result.last_valid_loss


def test_state_file_loads_with_weights_only(run_a):
    _, result = run_a
    state = torch.load(result.state_path, weights_only=True)
    assert state["step"] == 20 and state["epoch"] == 3 and state["position"] == 2
    assert state["config"] == make_config().to_dict()
    assert set(state["rng"][0]) >= {"torch", "numpy", "python"}
    assert isinstance(state["optimizer"]["state"], dict) and "last_epoch" in state["scheduler"]
    assert [h["step"] for h in state["history"]] == [5, 10, 15, 20]
    assert all("valid_loss" in h and "train_loss" in h for h in state["history"])
    assert not list(result.state_path.parent.glob("*.tmp"))


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from tests.test_training import make_config, make_model, neg_si_snr_pit, train_sets
    from compressor.training import train

    calls = 0
    def loss_fn(estimates, sources):
        global calls
        loss = neg_si_snr_pit(estimates, sources)
        if torch.is_grad_enabled():  # a training forward (validation runs under no_grad)
            calls += 1
            if calls == 12:
                os.kill(os.getpid(), signal.SIGKILL)
        return loss

    train_set, valid_set = train_sets()
    train(make_model(), train_set, valid_set, loss_fn, make_config(), sys.argv[1], progress=False)
    """
)


def test_resume_after_kill_is_bitwise_identical(run_a, tmp_path):
    model_a, result_a = run_a
    out = tmp_path / "run_b"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(out)], cwd=REPO_ROOT, env=_subprocess_env(),
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 10 and state["epoch"] == 1 and state["position"] == 4

    train_set, valid_set = train_sets()
    model_b = make_model(seed=123)  # other initial weights: the state file must override them
    result_b = train(model_b, train_set, valid_set, neg_si_snr_pit, make_config(), out,
                     resume=True, progress=False)
    assert result_b.step == 20
    _assert_same_weights(model_a.state_dict(), model_b.state_dict())
    assert result_b.history == result_a.history
    assert result_b.train_loss == result_a.train_loss
    final_a = torch.load(result_a.state_path, weights_only=True)
    final_b = torch.load(result_b.state_path, weights_only=True)
    assert torch.equal(final_a["rng"][0]["torch"], final_b["rng"][0]["torch"])


def test_extend_steps_on_resume(run_a, tmp_path):
    model_a, _ = run_a
    train_set, valid_set = train_sets()
    model = make_model()
    first = train(model, train_set, valid_set, neg_si_snr_pit, make_config(steps=10), tmp_path,
                  progress=False)
    assert first.step == 10
    model = make_model(seed=7)
    result = train(model, train_set, valid_set, neg_si_snr_pit, make_config(steps=20), tmp_path,
                   resume=True, progress=False)
    assert result.step == 20
    _assert_same_weights(model_a.state_dict(), model.state_dict())
    # Resuming a finished run does nothing.
    again = train(model, train_set, valid_set, neg_si_snr_pit, make_config(steps=20), tmp_path,
                  resume=True, progress=False)
    assert again.step == 20 and again.history == result.history


def test_changed_config_on_resume_raises(tmp_path):
    train_set, valid_set = train_sets()
    train(make_model(), train_set, None, neg_si_snr_pit, make_config(steps=5), tmp_path,
          progress=False)
    with pytest.raises(TrainingError, match="'lr'"):
        train(make_model(), train_set, None, neg_si_snr_pit, make_config(steps=10, lr=1e-3),
              tmp_path, resume=True, progress=False)
    with pytest.raises(TrainingError, match="step 5"):
        train(make_model(), train_set, None, neg_si_snr_pit, make_config(steps=3), tmp_path,
              resume=True, progress=False)


def test_resume_without_state_starts_fresh(tmp_path, caplog):
    train_set, _ = train_sets()
    with caplog.at_level(logging.INFO, logger="compressor.training"):
        result = train(make_model(), train_set, None, neg_si_snr_pit,
                       make_config(steps=3, validate_every=0), tmp_path, resume=True,
                       progress=False)
    assert result.step == 3 and result.best_valid_loss is None
    assert "starting a fresh run" in caplog.text


def test_non_finite_loss_raises_and_keeps_checkpoint(tmp_path):
    train_set, _ = train_sets()
    calls = 0

    def loss_fn(estimates, sources):
        nonlocal calls
        calls += 1
        loss = neg_si_snr_pit(estimates, sources)
        return loss * float("nan") if calls == 7 else loss

    with pytest.raises(TrainingError, match="step 7"):
        train(make_model(), train_set, None, loss_fn, make_config(), tmp_path, progress=False)
    assert torch.load(tmp_path / STATE_FILE, weights_only=True)["step"] == 5


def test_param_groups_and_on_checkpoint(tmp_path):
    train_set, _ = train_sets()
    model = make_model()
    seen = []

    def on_checkpoint(step, m):
        assert m is model
        m.eval()  # the loop must put the model back into training mode
        seen.append(step)

    config = make_config(steps=12, lr_schedule="cosine", warmup_steps=2)
    train(model, train_set, None, neg_si_snr_pit, config, tmp_path, progress=False,
          param_groups=[{"params": model.out.parameters(), "lr": 1e-3}],
          on_checkpoint=on_checkpoint)
    assert seen == [5, 10, 12]
    groups = torch.load(tmp_path / STATE_FILE, weights_only=True)["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [1e-2, 1e-3]
    assert len(groups[0]["params"]) == 2 and len(groups[1]["params"]) == 2
    assert groups[1]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 10 / 10)))


def test_exported_module_trains(tmp_path):
    train_set, valid_set = train_sets()
    auto = torch.export.Dim.AUTO
    model = torch.export.export(
        make_model(dropout=0.0), (torch.randn(2, SEGMENT),),
        dynamic_shapes={"mixture": {0: auto, 1: auto}},
    ).module()
    with pytest.raises(NotImplementedError):
        model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, train_set, valid_set, neg_si_snr_pit, make_config(steps=4), tmp_path,
                   progress=False)
    assert result.step == 4 and result.last_valid_loss is not None
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_distributed_helpers_single_process():
    assert not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1
    model = nn.Linear(2, 2)
    assert distributed.unwrap(model) is model
    assert distributed.setup("cpu") is False


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from tests.test_training import ToyMixtures, make_config, make_model, neg_si_snr_pit
    from compressor.training import train

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])

    def on_checkpoint(step, model):
        (out / f"callback_rank{rank}_step{step}").touch()

    result = train(
        make_model(dropout=0.0, out_bias=False), ToyMixtures(16, seed=1), ToyMixtures(5, seed=2, lengths=[200, 256]),
        neg_si_snr_pit, make_config(steps=6, batch_size=2, checkpoint_every=3, validate_every=3),
        out, on_checkpoint=on_checkpoint, progress=True,
    )
    assert not torch.distributed.is_initialized()
    print(f"rank {rank} valid {result.last_valid_loss!r}", flush=True)
    """
)


def test_ddp_two_processes_match_single_process(tmp_path):
    script = tmp_path / "ddp_train_script.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(out)],
        cwd=REPO_ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "callback_rank0_step3", "callback_rank0_step6", STATE_FILE,
    ]
    ddp_state = torch.load(out / STATE_FILE, weights_only=True)
    assert ddp_state["step"] == 6 and ddp_state["world_size"] == 2 and len(ddp_state["rng"]) == 2

    model = make_model(dropout=0.0, out_bias=False)
    single = train(
        model, ToyMixtures(16, seed=1), ToyMixtures(5, seed=2, lengths=[200, 256]),
        neg_si_snr_pit, make_config(steps=6, batch_size=4, checkpoint_every=3, validate_every=3),
        tmp_path / "single", progress=False,
    )
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ddp_state["model"][key], value, atol=1e-5, rtol=0, msg=key)
    assert ddp_state["last_valid_loss"] == pytest.approx(single.last_valid_loss, abs=1e-4)
    for h_ddp, h_single in zip(ddp_state["history"], single.history, strict=True):
        assert h_ddp.keys() == h_single.keys()
        for key in ("train_loss", "valid_loss"):
            if key in h_ddp:
                assert h_ddp[key] == pytest.approx(h_single[key], abs=1e-4)


def test_data_loader_workers_do_not_change_the_result(tmp_path):
    results = []
    for workers in (0, 2):
        train_set, valid_set = train_sets()
        model = make_model()
        train(model, train_set, valid_set, neg_si_snr_pit, make_config(steps=7, num_workers=workers),
              tmp_path / f"w{workers}", progress=False)
        results.append(model.state_dict())
    _assert_same_weights(*results)
