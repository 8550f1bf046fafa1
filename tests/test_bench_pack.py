"""compress bench --pack: the folder runs in a fresh venv that holds only numpy and one runtime.

The venv is made with ``python -m venv --without-pip`` and gets, through a
``.pth`` file, links to exactly the distributions ``pip install numpy
onnxruntime`` would install (the runtime's declared requirements, followed
recursively, taken from this environment): no registry needed, and neither
torch nor this project is importable there, which the test checks.
"""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement

from compressor.cli.main import main

CHUNK = 1600


def _closure(names: list[str]) -> list[metadata.Distribution]:
    """The distributions pip would install for ``names`` (their non-extra requirements, recursively)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        req = Requirement(todo.pop())
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        dist = metadata.distribution(req.name)
        seen[key] = dist
        for text in dist.requires or []:
            dep = Requirement(text)
            if dep.marker is None or dep.marker.evaluate({"extra": ""}):
                todo.append(dep.name)
    return list(seen.values())


def _isolated_python(root: Path, packages: list[str]) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    libs = root / "libs"
    libs.mkdir()
    for dist in _closure(packages):
        for file in dist.files or []:
            top = file.parts[0]
            source = Path(dist.locate_file(top))
            if top.endswith(".pth") or top == ".." or not source.exists() or (libs / top).exists():
                continue
            (libs / top).symlink_to(source)
    site = next((root / "venv" / "lib").glob("python3*/site-packages"))
    (site / "runtime_only.pth").write_text(str(libs) + "\n")
    return root / "venv" / "bin" / "python"


def _pack(folder: Path, target: str) -> Path:
    import torch

    from benchmarks.peers.float_files import float_onnx, float_tflite
    from compressor.zoo import build_model
    from tests.conftest import TINY_TASNET

    torch.manual_seed(0)
    build = float_onnx if target == "onnx" else float_tflite
    model_file = build(build_model("conv_tasnet", TINY_TASNET), CHUNK, folder / f"tiny.{target}")
    result = CliRunner().invoke(main, ["bench", str(model_file), "--pack", str(folder / "device"), "--pack-clips", "3"])
    assert result.exit_code == 0, result.output
    return folder / "device"


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return _pack(tmp_path_factory.mktemp("pack"), "onnx")


def test_pack_folder_holds_what_the_device_needs(packed):
    assert {p.name for p in packed.iterdir()} >= {"tiny.onnx", "runner.py", "io_codec.py", "chunking.py", "clips", "model_info.json",
                                                   "README.txt"}
    clips = json.loads((packed / "clips" / "clips.json").read_text())
    assert len(clips) == 3 and len({c["id"] for c in clips}) == 3
    assert all((packed / "clips" / c["noisy"]).is_file() and (packed / "clips" / c["clean"]).is_file() for c in clips)
    assert json.loads((packed / "model_info.json").read_text())["bops"]["macs"] > 0


def _run_packed(folder: Path, model: str, venv_root: Path, packages: list[str]) -> dict:
    python = _isolated_python(venv_root, packages)
    no_torch = subprocess.run([str(python), "-I", "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0, "torch must not be importable in the device venv"
    done = subprocess.run([str(python), "-I", "runner.py", model, "--clips", "clips", "--threads", "1",
                           "--runs", "3", "--warmup", "1", "--json", "result.json"],
                          cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == json.loads((folder / "result.json").read_text())
    entry = printed[0]
    assert entry["name"] == model and entry["latency_ms"]["median"] > 0 and entry["peak_rss_mb"] > 0
    assert entry["bops"]["macs"] > 0 and entry["quality"]["count"]["all"] == 3
    assert isinstance(entry["quality"]["si_snr"]["all"], float) and entry["quality"]["pesq"] is None
    return entry


def test_packed_runner_runs_with_only_numpy_and_onnxruntime(packed, tmp_path):
    entry = _run_packed(packed, "tiny.onnx", tmp_path, ["onnxruntime", "numpy"])
    assert entry["runtime"].startswith("onnxruntime")


@pytest.mark.slow
def test_packed_tflite_runs_with_only_numpy_and_ai_edge_litert(tmp_path):
    folder = _pack(tmp_path / "pack", "tflite")
    entry = _run_packed(folder, "tiny.tflite", tmp_path / "venv_root", ["ai-edge-litert", "numpy"])
    assert entry["runtime"].startswith("litert")
