"""Benchmark reports: the JSON document, Markdown tables and the machine they ran on."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from compressor.fileio import write_text_atomic

VERSIONED = ("torch", "onnxruntime", "ai-edge-litert", "litert-torch", "onnx", "numpy", "speechmos", "pesq")


def machine() -> dict[str, Any]:
    """CPU model, cores, OS and the versions of every package that runs or measures a model."""
    from benchmarks.latency import all_threads

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu, "cores_usable": all_threads(), "cores_total": os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version(), "versions": versions}


def fmt(value: Any, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _bits(entry: dict) -> str:
    return ", ".join(f"{n / 1000:.1f}k@{b}" for b, n in entry["param_count_by_bits"].items())


def _latency(entry: dict, threads: int, length: str) -> str:
    for item in entry.get("latency") or []:
        if item["threads"] == threads:
            return f"{item[length]['median']:.1f} / {item[length]['p90']:.1f}"
    return "–"


def models_table(entries: list[dict]) -> str:
    """Size, BOPs, latency, memory: one row per model."""
    threads = sorted({t["threads"] for e in entries for t in (e.get("latency") or [])})
    chunk_s = next((e["latency_ms"]["input_seconds"] for e in entries if e.get("latency_ms")), None)
    head = ["model", "format", "runtime", "file KiB", "params (count@bits)", "GBOPs"]
    head += [f"{length} ms, {t} thr (median / p90)" for t in threads
             for length in ("1 s", f"chunk {fmt(chunk_s, 1)} s")]
    head += ["RTF", "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        bops = e.get("bops") or {}
        cells = [e["name"], e["format"], e.get("runtime") or "–", f"{e['size_bytes'] / 1024:.0f}", _bits(e),
                 fmt(bops.get("gbops"), 1)]
        cells += [_latency(e, t, key) for t in threads for key in ("1s", "chunk")]
        cells += [fmt(e.get("rtf"), 4), fmt(e.get("peak_rss_mb"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    audio = next((e["bops"]["audio_seconds"] for e in entries if e.get("bops")), None)
    return "\n".join(lines) + f"\n\nGBOPs for {audio} s of audio (MACs x weight bits x activation bits).\n"


def quality_table(entries: list[dict]) -> str:
    """Quality by input-SNR bucket and the gap to float."""
    with_quality = [e for e in entries if e.get("quality")]
    if not with_quality:
        return ""
    n = with_quality[0]["quality"]["count"]
    head = ["model", "SI-SNR all", f"low (<2 dB, n={n['low']})", f"mid (2-10, n={n['mid']})",
            f"high (>10, n={n['high']})", "SI-SNRi", "SDR", "STOI", "PESQ-WB", "DNSMOS SIG/BAK/OVRL",
            "ΔSI-SNR all / low / mid / high", "ΔPESQ", "ΔDNSMOS OVRL", "clipped % in / out"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in with_quality:
        q, d = e["quality"], e.get("delta_vs_float")
        s = q["si_snr"]
        deltas = " / ".join(fmt(d["si_snr"][g], 2, True) for g in ("all", "low", "mid", "high")) if d else "–"
        lines.append("| " + " | ".join([
            e["name"], fmt(s["all"]), fmt(s["low"]), fmt(s["mid"]), fmt(s["high"]), fmt(q["si_snri"]), fmt(q["sdr"]),
            fmt(q["stoi"], 3), fmt(q["pesq"]),
            f"{fmt(q['dnsmos_sig'])} / {fmt(q['dnsmos_bak'])} / {fmt(q['dnsmos_ovrl'])}", deltas,
            fmt(d["pesq"], 2, True) if d else "–", fmt(d["dnsmos_ovrl"], 2, True) if d else "–",
            _clipped(e)]) + " |")
    return "\n".join(lines) + "\n"


def _clipped(entry: dict) -> str:
    """Boundary int8 codes at the limits during the quality run, in % (– without an int8 boundary)."""
    c = entry.get("clipping")
    return f"{100 * c['input']:.2f} / {100 * c['output']:.2f}" if c else "–"


def per_layer_table(entry: dict) -> str:
    rows = (entry.get("bops") or {}).get("per_layer")
    if not rows:
        return ""
    lines = [f"#### {entry['name']}: BOPs per layer", "", "| layer | op | MACs | w bits | a bits | GBOPs |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['layer'][-60:]} | {r['op']} | {r['macs']} | {r['weight_bits']} | {r['activation_bits']} | "
              f"{r['bops'] / 1e9:.3f} |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown(entries: list[dict], info: dict) -> str:
    m = info["machine"]
    parts = [
        "# Benchmark", "",
        f"{m['cpu']}, {m['cores_usable']} usable cores; {m['os']}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".", "",
        f"Data: {info['config']['data']}; latency: {info['config']['warmup']} warm-up then "
        f"{info['config']['runs']} timed runs per figure, each model in its own process.", "",
        "## Size, BOPs, latency, memory", "", models_table(entries),
    ]
    quality = quality_table(entries)
    if quality:
        parts += ["## Quality (against the clean references)", "", quality]
    parts += [per_layer_table(e) for e in entries if (e.get("bops") or {}).get("per_layer")]
    return "\n".join(parts).rstrip() + "\n"


def document(entries: list[dict], config: dict) -> dict:
    """The JSON document: machine, config, and one object per model (per-clip rows dropped)."""
    return {"machine": machine(), "config": config,
            "models": [{k: v for k, v in e.items() if k != "rows"} for e in entries]}


def write_reports(entries: list[dict], config: dict, json_path: Path | None, md_path: Path | None) -> dict:
    import json

    doc = document(entries, config)
    if json_path:
        write_text_atomic(json_path, json.dumps(doc, indent=2) + "\n")
    if md_path:
        write_text_atomic(md_path, markdown(entries, doc))
    return doc
