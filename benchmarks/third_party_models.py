"""Third-party separation models (asteroid 0.7.0) through `compress ptq`, `compress export` and `compress run`.

What it does: builds five models from the ``asteroid`` package as shipped (ConvTasNet, DPRNNTasNet, DPTNet,
SuDORMRFNet, DCUNet with ``fix_length_mode="pad"``), in small configurations that run fast on CPU, with random
weights (seeded), 16 kHz. ``make_<name>`` builds a model exactly as asteroid ships it; ``make_<name>_glndims``
and ``make_<name>_patched`` build the same model (same weights, same output within 5e-8) with the smallest
changes, on the instance only, that get it further through the toolkit (see PATCHES and the functions
``_patch_*``); asteroid itself is not modified. For each model the driver saves its state dict, then runs, each
in its own process, with a time limit and with ``--threads 1``:

    compress ptq STATE --model-factory benchmarks.third_party_models:make_<name> --data demo --calib-batches 4 \
        --out WORK/<name>.pt
    compress export WORK/<name>.pt --target onnx   --chunk-seconds C --out WORK/<name>.onnx
    compress run WORK/<name>.onnx DEMO.wav WORK/<name>.onnx.wav
    compress export WORK/<name>.pt --target tflite --chunk-seconds C --out WORK/<name>.tflite
    compress run WORK/<name>.tflite DEMO.wav WORK/<name>.tflite.wav

(DEMO.wav: the first demo test clip, written as 16-bit WAV into WORK) and records per step: ok, or the exact
one-line error (plus the lines indented under it); for the exports the verification line (max LSB, SNR) and the
"float compute ops" line; the substitutions quantize() logged; the wall time of each step; and which ops that
need a substitution the model's torch.export program holds. Logs of every command stay in WORK. Results go to
benchmarks/results/third_party/asteroid.json and .md (rendered from the JSON with the root-cause NOTES below).

How to run it (from the repository root, virtual environment active):

    PYTHONPATH=/tmp/astpkgs:$PWD python -m benchmarks.third_party_models [--models conv_tasnet,dcunet_patched] \
        [--work /tmp/tp] [--chunk-seconds 0.5] [--step-timeout 1800]
    PYTHONPATH=/tmp/astpkgs:$PWD python -m benchmarks.third_party_models --render-only

All thirteen variants take about an hour on one CPU core, most of it the DPRNN and DPTNet exports (unrolled
LSTMs: ONNX ~23 min each, TFLite ~4.5 min each).

It needs ``asteroid`` (0.7.0) and ``asteroid_filterbanks`` (0.4.0) importable, e.g. unpacked from their wheels
(``pip download asteroid==0.7.0 asteroid-filterbanks==0.4.0 --no-deps -d /tmp/astwheels``, unzip into
/tmp/astpkgs) and put on PYTHONPATH; ``pip install asteroid`` would pull in dependencies that replace the pinned
torch. Nothing else is needed and nothing is stubbed: importing ``asteroid.models`` pulls in torch, numpy, scipy,
soundfile, requests, huggingface_hub and packaging, all already in the toolkit's environment, plus
asteroid_filterbanks; these models do not use torchaudio (asteroid imports pytorch_lightning only in
``serialize()``, and neither package imports torchaudio). ``compress`` runs in subprocesses that inherit
PYTHONPATH, so the factories resolve there too.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

SAMPLE_RATE = 16000
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "third_party"

# name -> (factory kwargs as shown in the table, asteroid class name)
CONFIGS: dict[str, dict] = {
    "conv_tasnet": dict(n_src=2, n_blocks=2, n_repeats=2, bn_chan=32, hid_chan=64, skip_chan=32,
                        n_filters=64, kernel_size=16, stride=8, norm_type="gLN", sample_rate=SAMPLE_RATE),
    "dprnn_tasnet": dict(n_src=2, n_filters=32, kernel_size=16, stride=8, bn_chan=32, hid_size=32,
                         chunk_size=50, hop_size=25, n_repeats=2, rnn_type="LSTM", bidirectional=True,
                         norm_type="gLN", sample_rate=SAMPLE_RATE),
    "dptnet": dict(n_src=2, n_filters=32, kernel_size=16, stride=8, n_heads=2, ff_hid=32, chunk_size=50,
                   hop_size=25, n_repeats=2, norm_type="gLN", sample_rate=SAMPLE_RATE),
    "sudormrf": dict(n_src=2, bn_chan=32, num_blocks=2, upsampling_depth=2, n_filters=64, kernel_size=21,
                     sample_rate=SAMPLE_RATE),
    "dcunet": dict(architecture="DCUNet-10", stft_n_filters=256, stft_kernel_size=256, stft_stride=64,
                   fix_length_mode="pad", sample_rate=SAMPLE_RATE),
}
CLASSES = {"conv_tasnet": "ConvTasNet", "dprnn_tasnet": "DPRNNTasNet", "dptnet": "DPTNet",
           "sudormrf": "SuDORMRFNet", "dcunet": "DCUNet"}


def _build(name: str) -> torch.nn.Module:
    import asteroid.models as am

    torch.manual_seed(0)
    model = getattr(am, CLASSES[name])(**CONFIGS[name])
    return model.eval()


def make_conv_tasnet() -> torch.nn.Module:
    """asteroid ConvTasNet: free filterbank, 2 repeats x 2 blocks of TCN with gLN, sigmoid masks, 2 sources."""
    return _build("conv_tasnet")


def make_dprnn_tasnet() -> torch.nn.Module:
    """asteroid DPRNNTasNet: 2 dual-path blocks of bidirectional LSTMs (intra/inter chunk), gLN, 2 sources."""
    return _build("dprnn_tasnet")


def make_dptnet() -> torch.nn.Module:
    """asteroid DPTNet: 2 dual-path transformer blocks (MultiheadAttention + LSTM feed-forward), gLN, 2 sources."""
    return _build("dptnet")


def make_sudormrf() -> torch.nn.Module:
    """asteroid SuDORMRFNet: 2 U-ConvBlocks of depth 2, GlobLN, softmax masks, 2 sources."""
    return _build("sudormrf")


def make_dcunet() -> torch.nn.Module:
    """asteroid DCUNet-10 (complex U-Net on a 256-point STFT filterbank), fix_length_mode='pad', 1 source."""
    return _build("dcunet")


# --- the same models with the smallest source changes that make them traceable --------------------------------
# asteroid as shipped computes some shapes from tensor values or Python ints of symbolic sizes, which
# torch.export cannot trace for every length (see benchmarks/results/third_party/asteroid.md). These factories
# build the same model (same class, config, weights; output within 5e-8 of the original on [2, 8000]) and
# replace, on the instance only, the functions that do it by equivalents that take their numbers from x.shape.
# Name suffixes: "_glndims" only the gLN dims change (shows the next refusal), "_patched" everything needed.


def _patch_glob_ln(model: torch.nn.Module, as_group_norm: bool) -> torch.nn.Module:
    """GlobLN (gLN) normalizes over dims ``torch.arange(1, len(x.shape)).tolist()`` (asteroid/masknn/norms.py:21):
    a tensor turned into Python ints, unbacked symbols under torch.export. ``as_group_norm=False``: the same
    z_norm with dims from ``x.dim()`` (mean + torch.var); True: ``F.group_norm(x, 1, gamma, beta, eps)``, the
    same function (one group = all channels and frames of an item, per-channel affine), as one op."""
    from asteroid.masknn import norms

    def dims_forward(self, x, EPS: float = 1e-8):
        return self.apply_gain_and_bias(norms.z_norm(x, list(range(1, x.dim())), EPS))

    def group_norm_forward(self, x, EPS: float = 1e-8):
        return torch.nn.functional.group_norm(x, 1, self.gamma, self.beta, EPS)

    for m in model.modules():
        if isinstance(m, norms.GlobLN):
            m.forward = types.MethodType(group_norm_forward if as_group_norm else dims_forward, m)
    return model


def _patch_dcunet_pad(model: torch.nn.Module) -> torch.nn.Module:
    """DCUMaskNet.fix_input_dims passes the encoder stride product as a tensor (``torch.from_numpy``,
    asteroid/masknn/convolutional.py:546) and ``int()``s it (line 556-557); its "pad" branch is a Python ``if``
    on ``(T - 1) % time_prod`` (line 563-564), which torch.export specializes to the example length. Same
    padding from Python ints, branch-free (a pad of 0 where the length already fits)."""
    masker = model.masker
    freq_prod, time_prod = (int(v) for v in masker.encoders_stride_product)
    assert masker.fix_length_mode == "pad"

    def fix_input_dims(x):
        if (x.shape[1] - 1) % freq_prod:
            raise TypeError(f"frequency bins - 1 must be divisible by {freq_prod}, got {x.shape}")
        return torch.nn.functional.pad(x, [0, (-(x.shape[2] - 1)) % time_prod])

    masker.fix_input_dims = fix_input_dims
    return model


def _patch_sudormrf(model: torch.nn.Module) -> torch.nn.Module:
    """SuDORMRFNet's ``_Padder`` pads with ``pad`` (asteroid/models/sudormrf.py:182-192), which takes
    ``int(x.shape[-1]) % lcm`` and branches on it: ``int()`` of a symbolic size makes torch.export specialize the
    traced length to the example's. The same zero padding, branch-free: ``F.pad(x, [0, (-T) % lcm])``."""
    padder = model.encoder

    def forward(x):
        return padder.encoder(torch.nn.functional.pad(x, [0, (-x.shape[-1]) % padder.lcm]))

    padder.forward = forward
    return model


def make_conv_tasnet_glndims() -> torch.nn.Module:
    """make_conv_tasnet with gLN's dims from x.dim() only."""
    return _patch_glob_ln(_build("conv_tasnet"), as_group_norm=False)


def make_dprnn_tasnet_glndims() -> torch.nn.Module:
    """make_dprnn_tasnet with gLN's dims from x.dim() only."""
    return _patch_glob_ln(_build("dprnn_tasnet"), as_group_norm=False)


def make_dptnet_glndims() -> torch.nn.Module:
    """make_dptnet with gLN's dims from x.dim() only."""
    return _patch_glob_ln(_build("dptnet"), as_group_norm=False)


def make_conv_tasnet_patched() -> torch.nn.Module:
    """make_conv_tasnet with gLN as F.group_norm(x, 1, ...)."""
    return _patch_glob_ln(_build("conv_tasnet"), as_group_norm=True)


def make_dprnn_tasnet_patched() -> torch.nn.Module:
    """make_dprnn_tasnet with gLN as F.group_norm(x, 1, ...)."""
    return _patch_glob_ln(_build("dprnn_tasnet"), as_group_norm=True)


def make_dptnet_patched() -> torch.nn.Module:
    """make_dptnet with gLN as F.group_norm(x, 1, ...)."""
    return _patch_glob_ln(_build("dptnet"), as_group_norm=True)


def make_sudormrf_patched() -> torch.nn.Module:
    """make_sudormrf with a branch-free pad (_patch_sudormrf)."""
    return _patch_sudormrf(_build("sudormrf"))


def make_dcunet_patched() -> torch.nn.Module:
    """make_dcunet with the pad-mode length fix from Python ints, branch-free (_patch_dcunet_pad)."""
    return _patch_dcunet_pad(_build("dcunet"))


_GLN_DIMS = "gLN dims from x.dim() instead of torch.arange(...).tolist() (asteroid/masknn/norms.py:21)"
_GLN_GN = "gLN as F.group_norm(x, 1, gamma, beta, 1e-8) (same function; replaces asteroid/masknn/norms.py:13-22)"
PATCHES = {
    "conv_tasnet_glndims": _GLN_DIMS, "dprnn_tasnet_glndims": _GLN_DIMS, "dptnet_glndims": _GLN_DIMS,
    "conv_tasnet_patched": _GLN_GN, "dprnn_tasnet_patched": _GLN_GN, "dptnet_patched": _GLN_GN,
    "sudormrf_patched": "pad branch-free from x.shape instead of int(x.shape[-1]) (asteroid/models/sudormrf.py:"
                        "182-192)",
    "dcunet_patched": "pad-mode fix_input_dims from Python ints, branch-free (asteroid/masknn/convolutional.py:"
                      "544-576)",
}
FACTORIES = {"conv_tasnet": make_conv_tasnet, "dprnn_tasnet": make_dprnn_tasnet, "dptnet": make_dptnet,
             "sudormrf": make_sudormrf, "dcunet": make_dcunet,
             "conv_tasnet_glndims": make_conv_tasnet_glndims, "dprnn_tasnet_glndims": make_dprnn_tasnet_glndims,
             "dptnet_glndims": make_dptnet_glndims,
             "conv_tasnet_patched": make_conv_tasnet_patched, "dprnn_tasnet_patched": make_dprnn_tasnet_patched,
             "dptnet_patched": make_dptnet_patched, "sudormrf_patched": make_sudormrf_patched,
             "dcunet_patched": make_dcunet_patched}


def _base(name: str) -> str:
    return name.removesuffix("_patched").removesuffix("_glndims")


# --- driver ---------------------------------------------------------------------------------------------------

def _error_line(text: str) -> str:
    """The one-line error of a failed command: the last 'Error:'/'error:' line, else the last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^(Error:|error:|[\w.]*(Error|Exception|SymNode)\b)", ln):
            return ln
    return lines[-1] if lines else "(no output)"


def _portable(text: str, work: Path) -> str:
    """Output as the results show it: `compress` for this venv's entry point, WORK/ for the --work folder, and
    asteroid's source lines from its package (asteroid/masknn/norms.py:14), not from where it was unpacked."""
    spec = importlib.util.find_spec("asteroid")
    text = text.replace(str(Path(sys.executable).with_name("compress")), "compress").replace(f"{work}/", "WORK/")
    if spec is not None and spec.origin:
        text = text.replace(f"{Path(spec.origin).parent.parent}/", "")
    return text


def _run_step(cmd: list[str], timeout: int, log_path: Path) -> dict:
    """Run one compress command; stdout and stderr stream to LOG.out / LOG.err (readable while it runs)."""
    t0 = time.monotonic()
    out_path, err_path = log_path.with_suffix(".out"), log_path.with_suffix(".err")
    with open(out_path, "w") as fo, open(err_path, "w") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, env=os.environ.copy(), cwd=ROOT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
    out, err = out_path.read_text(), err_path.read_text()
    if rc is None:
        err += f"\ntimeout after {timeout} s"
    seconds = round(time.monotonic() - t0, 1)
    log_path.write_text(f"$ {' '.join(cmd)}\n--- rc {rc}, {seconds} s\n--- stdout\n{out}\n--- stderr\n{err}")
    out_path.unlink()
    err_path.unlink()
    out, err = _portable(out, log_path.parent), _portable(err, log_path.parent)
    text = out + "\n" + err
    step = {"cmd": _portable(" ".join(cmd), log_path.parent), "ok": rc == 0, "seconds": seconds,
            "log": f"WORK/{log_path.name}"}
    if rc != 0:
        step["error"] = f"timeout after {timeout} s" if rc is None else _error_line(err or out)
        lines = (err or out).splitlines()
        if rc is not None and step["error"] in (ln.strip() for ln in lines):  # the indented lines under it
            i = [ln.strip() for ln in lines].index(step["error"])
            detail = [ln.strip() for ln in lines[i + 1:i + 13] if ln.startswith("  ") and ln.strip()]
            if detail:
                step["error_detail"] = detail
    verif = [ln.strip() for ln in text.splitlines() if "parity with the simulation" in ln]
    if verif:
        step["verification"] = verif[-1]
    floats = [ln.strip() for ln in text.splitlines() if "float compute ops" in ln]
    if floats:
        step["float_compute_ops"] = floats[-1]
    subs = [ln.strip() for ln in text.splitlines() if ln.startswith(("INFO compressor", "WARNING compressor")) and
            ("substituted" in ln or "runs only at input lengths" in ln)]
    if subs:
        step["substitutions"] = subs
    said = [ln.strip() for ln in text.splitlines() if ln.startswith(("wrote ", "warning:"))]
    if said:
        step["said"] = said
    return step


def _demo_wav(work: Path) -> Path:
    """One demo test clip (flac in the repository) written as 16-bit WAV."""
    import soundfile as sf

    src = sorted((ROOT / "examples" / "demo_data" / "test" / "noisy").iterdir())[0]
    wav = work / (src.stem + ".wav")
    if not wav.exists():
        data, sr = sf.read(src)
        sf.write(wav, data, sr, subtype="PCM_16")
    return wav


def briefly_trained(model: torch.nn.Module, steps: int, seed: int = 0) -> tuple[torch.nn.Module, float]:
    """``model`` after ``steps`` Adam steps (lr 1e-3, batches of 4 one-second demo crops) of negative SI-SNR with
    PIT, against [speech, noise] for a 2-source model (the mixture minus the speech) or the speech for one source;
    and the SI-SNR (dB) of the last 20 steps. Untrained separators amplify 1-LSB differences between runtimes
    layer after layer (an output 27-35 dB below the input), which trained ones do not; a few hundred steps give
    weights of the trained kind."""
    from compressor.data import open_dataset
    from compressor.losses import neg_si_snr_loss

    data = open_dataset("demo", segment_seconds=1.0)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        items = [data[int(i)] for i in torch.randint(len(data), (4,), generator=generator)]
        mixture = torch.stack([it["mixture"] for it in items])
        speech = torch.stack([it["sources"][0] for it in items])
        estimates = model(mixture)
        estimates = estimates if estimates.dim() == 3 else estimates.unsqueeze(1)
        references = torch.stack([speech, mixture - speech], 1)[:, :estimates.shape[1]]
        loss = neg_si_snr_loss(estimates, references)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(float(loss))
    model.eval()
    return model, -sum(losses[-20:]) / len(losses[-20:])


def run_model(name: str, work: Path, chunk_seconds: float, timeout: int, calib_batches: int, threads: int,
              targets: tuple[str, ...] = ("onnx", "tflite"), weight_bits: int = 8, train_steps: int = 0) -> dict:
    compress = str(Path(sys.executable).with_name("compress"))
    factory = f"benchmarks.third_party_models:make_{name}"
    model = FACTORIES[name]()
    trained_si_snr = None
    if train_steps:
        started = time.time()
        model, trained_si_snr = briefly_trained(model, train_steps)
        print(f"  trained {train_steps} steps in {time.time() - started:.0f} s: SI-SNR {trained_si_snr:.2f} dB",
              flush=True)
    state = work / f"{name}_float.pt"
    torch.save(model.state_dict(), state)
    n_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        y = model(torch.randn(2, SAMPLE_RATE // 2))
    record: dict = {"model": name, "class": f"asteroid.models.{CLASSES[_base(name)]}",
                    "config": CONFIGS[_base(name)], "patch": PATCHES.get(name),
                    "parameters": n_params, "float_output_shape_for_[2,8000]": list(y.shape), "steps": {},
                    "weight_bits": weight_bits, "train_steps": train_steps, "trained_si_snr_db": trained_si_snr}
    qpath = work / f"{name}.pt"
    steps = record["steps"]
    steps["ptq"] = _run_step([compress, "ptq", str(state), "--model-factory", factory, "--data", "demo",
                              "--calib-batches", str(calib_batches), "--weight-bits", str(weight_bits),
                              "--out", str(qpath), "--threads", str(threads), "-v"],
                             timeout, work / f"{name}.ptq.log")
    wav = _demo_wav(work)
    for target in targets:
        out = work / f"{name}.{target}"
        if not steps["ptq"]["ok"]:
            steps[f"export_{target}"] = {"ok": False, "skipped": "ptq failed"}
            steps[f"run_{target}"] = {"ok": False, "skipped": "ptq failed"}
            continue
        steps[f"export_{target}"] = _run_step(
            [compress, "export", str(qpath), "--target", target, "--chunk-seconds", str(chunk_seconds),
             "--out", str(out), "--report", str(work / f"{name}.{target}.report.json"), "--threads", str(threads), "-v"],
            timeout, work / f"{name}.export_{target}.log")
        if not steps[f"export_{target}"]["ok"]:
            steps[f"run_{target}"] = {"ok": False, "skipped": f"{target} export failed"}
            continue
        steps[f"run_{target}"] = _run_step([compress, "run", str(out), str(wav), str(work / f"{name}.{target}.wav"),
                                            "--threads", str(threads)],
                                           timeout, work / f"{name}.run_{target}.log")
    return record


_NOTABLE = ("im2col", "col2im", "lstm_scan", "gru_scan", "group_norm", "layer_norm", "batch_norm", "softmax",
            "scaled_dot_product", "view_as_complex", "view_as_real", "atan2", "var.", "conv_transpose")


def traced_ops(name: str) -> dict:
    """Counts of the ops that need a substitution or decomposition, in the model's torch.export program after the
    recurrent and norm-idiom swaps (what quantize() traces, before its decompositions), on a [4, 32000] example."""
    from compressor.quant.substitution import substitute_norm_idioms
    from compressor.recurrent.substitute import substitute_recurrent
    from torch.export import Dim

    example = torch.randn(4, 32000)
    model = substitute_norm_idioms(substitute_recurrent(FACTORIES[name]()), [example])
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # torch prints the partial graph of a failed trace
            program = torch.export.export(model, (example,),
                                          dynamic_shapes=({0: Dim.AUTO, 1: Dim.AUTO},))
    except Exception as exc:  # torch raises many types
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"}
    counts: dict[str, int] = {}
    for node in program.graph.nodes:
        target = str(node.target)
        if node.op == "call_function" and any(k in target for k in _NOTABLE):
            counts[target] = counts.get(target, 0) + 1
    return counts


# --- results as Markdown -------------------------------------------------------------------------------------

TITLES = {"conv_tasnet": "ConvTasNet", "dprnn_tasnet": "DPRNNTasNet", "dptnet": "DPTNet",
          "sudormrf": "SuDORMRFNet", "dcunet": "DCUNet"}
# Reading of each failure's root cause (written after looking at the logs; file:line in asteroid 0.7.0).
NOTES = {
    "conv_tasnet": "Goes through since quantize()'s \"norm_idiom\" substitution (compressor/quant/substitution.py "
                   "`substitute_norm_idioms`): before tracing it probes each leaf module of the model's own code "
                   "that has a per-channel gain and shift on random inputs of the shapes it is given (several "
                   "lengths, non-zero mean, small variance), finds that asteroid's GlobLN computes "
                   "GroupNorm(1, C, eps=1e-8) (relative difference ~4e-16) and swaps it, so gLN's code is never "
                   "traced; the GroupNorm is then the \"norm\" substitution's, and the traced program has the "
                   "`patched` row's ops. Before (and still with \"norm_idiom\" left out of "
                   "QuantConfig.substitutions) ptq failed with `error: torch.export could not trace ConvTasNet: a "
                   "data-dependent value (computed from tensor values) decides a shape or a branch at "
                   "asteroid/masknn/norms.py:14: mean = x.mean(dim=dims, keepdim=True) — ...`: "
                   "asteroid/masknn/norms.py:21 `dims: List[int] = torch.arange(1, len(x.shape)).tolist()` (gLN, "
                   "`_glob_norm`) reads the reduction dims out of a tensor, so torch.export gets unbacked ints "
                   "u0, u1. Earlier in this session the CLI printed torch's whole traceback instead "
                   "(`GuardOnDataDependentSymNode: Could not extract specialized integer from data-dependent "
                   "expression u0`), from the float-program export in compressor/cli/quantize_cmds.py `arch_of` -> "
                   "checkpoint.py `ArchSpec.from_program`, outside `explain_export_failure`; fixed since "
                   "(commit ca9b352).",
    "dprnn_tasnet": "As ConvTasNet: its 5 GlobLN (the bottleneck norm and every intra/inter norm, on 4-D "
                    "[batch, chan, chunk, chunks] inputs) become GroupNorm(1, C) by the norm_idiom substitution "
                    "(before: the same data-dependent error at asteroid/masknn/norms.py:14). Its ONNX export took "
                    "~23 min before onnxscript's SlicesSplit rewrite was skipped, 10 min since.",
    "dptnet": "As ConvTasNet: its 9 GlobLN (the input norm and the norms of every transformer layer) become "
              "GroupNorm(1, C) by the norm_idiom substitution (before: the same data-dependent error at "
              "asteroid/masknn/norms.py:14). With random weights its TFLite file was refused at the end-to-end "
              "check: every op within 1 LSB of the simulation, the output at 22.7 dB SNR against the 25 dB floor. "
              "Three ops computed differently within that 1 LSB, and a random DPTNet amplifies such differences "
              "(flipping 0.1 % of all int8 codes by 1 LSB costs it 21.4 dB SNR, the briefly trained one 31.5 dB): "
              "the mask relu(reshape(tanh * sigmoid)), which the simulation rounded twice and the converter "
              "fuses into one rounding (fixed: quantize() moves a ReLU next to its producer, "
              "QuantConfig.relu_before_moves); the one-slope PReLU after the overlap-add, whose input grid comes "
              "through a reshape and so missed the exact LEAKY_RELU grids (fixed: leaky_grid.py looks through "
              "moves); and the 8 attention BATCH_MATMULs, which LiteRT runs on its builtin kernels with "
              "fixed-point requantization that rounds twice (not fixed: the simulation cannot round like that and "
              "like onnxruntime at once). After the two fixes the random model reads 24.4 dB (still refused); "
              "this row is the same model trained 200 steps on the demo data (`--train-steps 200`), whose file "
              "verifies.",
    "sudormrf": "Goes through as shipped since quantize() traces a length-specializing model a second time "
                "with TorchDynamo (compressor/quant/length_multiple.py): asteroid/models/sudormrf.py:184 "
                "`values_to_pad = int(x.shape[-1]) % lcm` then `if values_to_pad:` (in `pad`, called by "
                "`_Padder.forward`) makes torch.export's default (non-strict) tracing fix the time axis to the 2 s "
                "calibration crop; strict tracing keeps it symbolic and asks for `t = 20*_t`, so the program is "
                "exported at multiples of lcm = 20 samples, and other lengths are zero-padded to the next "
                "multiple and cropped back, which is what `pad` and the model's own crop do (checked against "
                "the model at a length that is not a multiple). Before, ptq stopped with the one-line error "
                "naming that line (and before that, export failed on torch's raw `Guard failed: "
                "wav.size()[1] == 32000`). Run with `--weight-bits 7`: with 8-bit weights its ONNX file is "
                "exact, but onnxruntime's int8 convolutions saturate on this CPU (AVX2 without VNNI; the "
                "encoder's random filterbank reached 99 LSB), where sessions now run such a file with QDQ "
                "fusion off. The `patched` row (branch-free pad) is from an earlier run.",
    "dcunet": "asteroid/masknn/convolutional.py:546 `torch.from_numpy(self.encoders_stride_product)` hands the "
              "(constant) stride product to `_fix_dcu_input_dims` as a tensor, and line 556 "
              "`int(encoders_stride_product[0])` reads it back: a data-dependent int under torch.export. Not "
              "reached: the pad branch `if time_remainder:` (line 563-564) makes torch.export specialize to the "
              "example length's branch (a program traced on 2 s crops has the guard "
              "`(-4 + wav.size()[1] // 64) % 16 == 0`, which 0.5 s chunks fail).",
    "conv_tasnet_glndims": "Result from before torch.var had an int8 form; not rerun. With gLN's dims from "
                           "x.dim(), gLN is asteroid's `z_norm` (norms.py:13-16): `x.mean` and "
                           "`torch.var(x, dim, unbiased=False)`; quantize() had no int8 form for aten.var.dim. "
                           "Now aten.var.dim/.correction and aten.std are decomposed (compressor/ops/"
                           "decompositions.py `var`/`std`: mean, x - m, (x - m) * (x - m), mean; an unbiased "
                           "variance times the constant n / (n - 1), refused when n depends on the length): "
                           "with \"norm_idiom\" switched off quantize() takes this model (float simulation within "
                           "4e-8 of the model), and with it on this GlobLN is swapped for GroupNorm(1, C) like the "
                           "shipped one.",
    "dprnn_tasnet_glndims": "As conv_tasnet_glndims (not rerun): aten.var.dim from gLN's z_norm "
                            "(asteroid/masknn/norms.py:15), decomposed now.",
    "dptnet_glndims": "As conv_tasnet_glndims (not rerun): aten.var.dim from gLN's z_norm "
                      "(asteroid/masknn/norms.py:15), decomposed now (quantize() without \"norm_idiom\" takes "
                      "this model: float simulation within 2e-8).",
    "dptnet_patched": "TFLite: verification refuses the file. The 12 ops it lists (of 101) are all in the unrolled "
                      "LSTMs of the transformer layers' feed-forward (asteroid/masknn/attention.py: "
                      "`ImprovedTransformedLayer.recurrent`, nn.LSTM(32, 32, bidirectional, batch_first)); looked "
                      "up with exporters.lowering.lower on the checkpoint: `stack` of the 50 per-frame h of an "
                      "intra-chunk LSTM (5 and 9 LSB off given the file's own inputs) and the mul/add of the c/h "
                      "update on [chunks, 32] (2-5 LSB). The report calls them '(top level)': the unrolled cell's "
                      "ops carry no module path. With `--tolerance-lsb 16` every op passes, but the output drifts "
                      "to 21.8 dB SNR (max 9 LSB) against the 25 dB floor on litert, so nothing is written either "
                      "(export took 257 s). The ONNX file of the same checkpoint passes (ops within 1 LSB, max 3 "
                      "LSB, 46.9 dB), and DPRNNTasNet's LSTMs of the same shape pass on TFLite: the toolkit's "
                      "TFLite form of these unrolled LSTMs does not compute what its simulation computes.",
    "dcunet_patched": "DCUNet's mask net is complex-valued (asteroid/complex_nn.py: ComplexConv2d/"
                      "ComplexConvTranspose2d via `x.real`/`x.imag` and `torch_complex_from_reim`, OnReIm "
                      "BatchNorm) and bounds its mask with BDT (complex_nn.py:171 `bound_complex_mask`: "
                      "magnitude/phase via atan2, then cos/sin). quantize() refuses view_as_complex x30, view_as_real "
                      "x80, atan2, cos, sin (and 9 cat/pad/mul/unsqueeze on complex tensors). Its hint (\"compute the "
                      "STFT before the model\") does not apply here: the STFT is already a real conv1d filterbank; "
                      "the complex arithmetic is inside the U-Net. Making it int8 needs the U-Net rewritten on "
                      "stacked real/imaginary channels (and the BDT bound without atan2/cos/sin: "
                      "tanh(|M|) * M / |M|).",
}


def _code(text: str) -> str:
    """A Markdown code span that may hold backticks; table pipes escaped."""
    return "`` " + text.replace("|", "\\|") + " ``"


def _cfg(config: dict) -> str:
    skip = {"sample_rate"}
    return ", ".join(f"{k}={v}" for k, v in config.items() if k not in skip)


def _step_cell(step: dict) -> str:
    if step.get("skipped"):
        return f"— ({step['skipped']})"
    t = f" ({step['seconds']:.0f} s)" if "seconds" in step else ""
    if not step["ok"]:
        return f"**fails**{t}: {_code(step.get('error', '?'))}"
    bits = []
    if step.get("float_compute_ops"):
        bits.append(step["float_compute_ops"].replace("float compute ops: ", "") + " float ops")
    v = step.get("verification", "")
    m = re.search(r"every op within (\d+) LSB.*end to end on (\w+): max (\d+) LSB, mean ([\d.]+) LSB, SNR ([\d.]+) dB", v)
    if m:
        bits.append(f"ops ≤ {m[1]} LSB, end to end ({m[2]}) max {m[3]} LSB, SNR {m[5]} dB")
    said = [x for x in step.get("said", []) if x.startswith("wrote ") and "real-time" in x]
    if said:
        m = re.search(r"([\d.]+ s of audio in [\d.]+ s on \w+)", said[0])
        bits.append(m[1] if m else said[0])
    if any(x.startswith("warning:") for x in step.get("said", [])):
        bits.append("clipping warning")
    return "ok" + t + (": " + "; ".join(bits) if bits else "")


def _needed(rec: dict) -> str:
    parts = []
    if rec.get("patch"):
        parts.append("patch: " + rec["patch"])
    subs = " ".join(rec["steps"].get("ptq", {}).get("substitutions", []))
    m = re.search(r"substituted (\d+) recurrent layer\(s\)[^:]*: (.*?)(?= INFO|$)", subs)
    if m:
        kinds = sorted(set(re.findall(r"\((LSTM|GRU)\)", m[2])))
        parts.append(f"{m[1]} {'/'.join(kinds)} substituted (input Linear + scan)")
    for m in re.finditer(r"substituted (\d+) norm_idiom module\(s\) \([^)]*\): ([\w.]+) -> (GroupNorm\(\w, C\)|"
                         r"ChannelNorm\(C\))", subs):
        parts.append(f"{m[1]} {m[2].rsplit('.', 1)[-1]} swapped for {m[3]} (norm_idiom)")
    m = re.search(r"runs only at input lengths that are a multiple of (\d+) samples", subs)
    if m:
        parts.append(f"traced strictly (TorchDynamo) at multiples of {m[1]} samples, other lengths zero-padded")
    m = re.search(r"substituted (\d+) norm op\(s\)", subs)
    if m:
        parts.append(f"{m[1]} GroupNorm decomposed")
    m = re.search(r"substituted (\d+) attention op\(s\)", subs)
    if m:
        parts.append(f"{m[1]} attention decomposed")
    m = re.search(r"substituted (\d+) batchnorm op\(s\) \(per-channel", subs)
    if m:
        parts.append(f"{m[1]} BatchNorm as per-channel mul+add")
    ops = rec.get("traced_ops") or {}
    if "error" not in ops:
        if any("im2col" in k for k in ops) or any("col2im" in k for k in ops):
            parts.append("unfold/fold decomposed" if rec["steps"].get("ptq", {}).get("ok") else "has unfold/fold")
        if any("softmax" in k for k in ops) and "dptnet" in rec["model"]:
            parts.append("nn.MultiheadAttention traces to linear/bmm/softmax (no SDPA)")
    return "; ".join(parts) or "nothing"


def render_md(results: dict) -> str:
    order = [n for n in FACTORIES if n in results]
    lines = [
        "# asteroid 0.7.0 models through ptq, export and run",
        "",
        "Generated by `benchmarks/third_party_models.py` (see its docstring; asteroid on PYTHONPATH). Models built "
        "from `asteroid.models` as shipped, small configs, random weights (seed 0), 16 kHz. Per model: "
        "`compress ptq STATE --model-factory benchmarks.third_party_models:make_<name> --data demo "
        "--calib-batches 4`, `compress export --target onnx|tflite --chunk-seconds 0.5` (verified), "
        "`compress run` on one demo clip (3.2 s). Rows `+ gLN dims` / `patched` are the same model, weights and "
        "output (max difference <= 5e-8) with the smallest source changes listed in the column 'needed', made "
        "on the instance in the factory; asteroid itself is unchanged. Every command ran with `--threads 1` on a "
        "shared 2-core CPU machine, so times are indicative. No model needs torchaudio (asteroid imports it "
        "nowhere on these models' paths). Since quantize() swaps hand-written norms for the standard norm they "
        "compute (the \"norm_idiom\" substitution) and decomposes torch.var/torch.std, the as-shipped ConvTasNet, "
        "DPRNNTasNet, DPTNet and SuDORMRFNet rows were run again (DPRNNTasNet and DPTNet last, both targets, on a "
        "2-core machine running both at once and a third job). The `+ gLN dims` rows are from before "
        "(see their notes). The ConvTasNet, DPTNet and SuDORMRFNet (as shipped) rows are from a later run on an "
        "x86 machine with AVX2 and no VNNI (the earlier rows: AVX-512 VNNI): there onnxruntime runs a file with "
        "8-bit weights with its QDQ fusion off (its int8 MAC kernels saturate; exact, slower). There LiteRT's "
        "XNNPACK int8 MEAN saturated on gLN's long means (code 127 where the exact mean is 13), which read as "
        "end-to-end drift (ConvTasNet 24.2 dB, each op within 1 LSB); since TFLite files sum long means in an int8 "
        "matmul (exporters/lowering.py lower_long_means) ConvTasNet's file reads max 0 LSB end to end (ConvTasNet "
        "row: run again after that change). DPTNet's drift had other causes (see its root cause); its row is the "
        "model trained 200 steps.",
        "",
        "| model | config | needed | ptq | onnx export | tflite export | run (onnx / tflite) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in order:
        r = results[name]
        st = r["steps"]
        label = TITLES[_base(name)] + (" + gLN dims" if name.endswith("_glndims") else
                                       " patched" if name.endswith("_patched") else " (as shipped)")
        not_run = {"ok": False, "skipped": "not run"}  # a target left out with --targets
        run = " / ".join(_step_cell(st.get(k, not_run)) for k in ("run_onnx", "run_tflite"))
        if all(st.get(k, not_run).get("skipped") for k in ("run_onnx", "run_tflite")) and \
                len({st.get(k, not_run)["skipped"] for k in ("run_onnx", "run_tflite")}) == 1:
            run = "— (" + st.get("run_onnx", not_run)["skipped"] + ")"
        exp = ["not run" if k not in st else "—" if st[k].get("skipped") else _step_cell(st[k])
               for k in ("export_onnx", "export_tflite")]
        bits = ", 7-bit weights (onnxruntime on this CPU)" if r.get("weight_bits") == 7 else ""
        if r.get("train_steps"):
            bits += f", trained {r['train_steps']} steps: SI-SNR {r['trained_si_snr_db']:.1f} dB"
        lines.append(f"| {label} | {_cfg(r['config'])} ({r['parameters']:,} params{bits}) | {_needed(r)} | "
                     f"{_step_cell(st['ptq'])} | {exp[0]} | {exp[1]} | {run} |")
    lines += ["", "## Failures: exact messages and root causes", ""]
    for name in order:
        r = results[name]
        failed = [(k, v) for k, v in r["steps"].items() if not v["ok"] and not v.get("skipped")]
        if not failed and name not in NOTES:
            continue
        lines.append(f"### {name}")
        lines.append("")
        for k, v in failed:
            lines.append(f"- `{k}` ({v['seconds']:.0f} s): {_code(v['error'])}")
            detail = v.get("error_detail", [])
            if detail:
                shown = detail[:4]
                lines += [f"    - {_code(d)}" for d in shown]
                if len(detail) > len(shown):
                    lines.append(f"    - ... ({len(detail) - len(shown)} more of the first 12 lines in the log)")
        if name in NOTES:
            lines.append(f"- root cause: {NOTES[name]}")
        lines.append("")
    lines += ["## Ops in the traced programs", "",
              "torch.export of each factory's model after the recurrent and norm-idiom swaps (before quantize()'s "
              "decompositions), "
              "ops that need a substitution or that the toolkit refuses:", ""]
    for name in order:
        ops = results[name].get("traced_ops")
        if ops is not None:
            shown = ops.get("error") or ", ".join(f"{k.replace('aten.', '')} x{v}" for k, v in sorted(ops.items()))
            lines.append(f"- {name}: {shown or 'none'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(FACTORIES), help="comma list of " + ", ".join(FACTORIES))
    ap.add_argument("--work", type=Path, default=Path("/tmp/tp"))
    ap.add_argument("--chunk-seconds", type=float, default=0.5)
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--step-timeout", type=int, default=1800)
    ap.add_argument("--threads", type=int, default=1, help="--threads of every compress command")
    ap.add_argument("--json", type=Path, default=RESULTS / "asteroid.json",
                    help="results file; models already in it and not run now are kept")
    ap.add_argument("--targets", default="onnx,tflite", help="export targets, in this order")
    ap.add_argument("--train-steps", type=int, default=0,
                    help="train each float model this many steps on the demo data first (0: random weights)")
    ap.add_argument("--weight-bits", type=int, default=8,
                    help="--weight-bits of compress ptq (7: onnxruntime's MAC kernels on x86 without VNNI)")
    ap.add_argument("--render-only", action="store_true", help="only write the Markdown from the JSON")
    ap.add_argument("--traced-ops-only", action="store_true",
                    help="only (re)compute the traced-op counts of --models into the JSON, then render")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    md = args.json.with_suffix(".md")
    if not args.render_only:
        for name in args.models.split(","):
            if args.traced_ops_only:
                if name in results:
                    results[name]["traced_ops"] = traced_ops(name)
                continue
            print(f"== {name}", flush=True)
            rec = run_model(name, args.work, args.chunk_seconds, args.step_timeout, args.calib_batches, args.threads,
                            tuple(args.targets.split(",")), args.weight_bits, args.train_steps)
            rec["chunk_seconds"] = args.chunk_seconds
            rec["traced_ops"] = traced_ops(name)
            results[name] = rec
            for step, r in rec["steps"].items():
                print(f"  {step}: {'ok' if r['ok'] else r.get('error') or r.get('skipped')} "
                      f"({r.get('seconds', '-')} s) {r.get('verification', '')}", flush=True)
            args.json.write_text(json.dumps(results, indent=1) + "\n")
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    md.write_text(render_md(results))
    print(f"wrote {md}")


if __name__ == "__main__":
    main()
