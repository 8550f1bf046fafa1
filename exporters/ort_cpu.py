"""Whether onnxruntime's int8 MAC kernels are exact on this CPU (standard library only).

On an x86 CPU without VNNI, onnxruntime's u8 x s8 convolutions and matmuls add pairs of products in int16
(VPMADDUBSW), which saturates once |w1| + |w2| > 128: with 8-bit weights (per-channel symmetric, so every channel
has a code of +-127) on large input codes, 24-99 LSB off the simulation were measured on an AVX2 machine. 7-bit
weights (within +-63: 255 * 126 fits int16) cannot saturate; ARM and VNNI CPUs have exact kernels. The packed device runner copies this
file beside itself (benchmarks/pack.py), so it imports nothing of the project.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

_EXACT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_products_saturate() -> bool:
    """True on an x86 CPU without VNNI (read from /proc/cpuinfo; False where it cannot be read)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return "avx2" in flags and not flags.intersection(_EXACT_FLAGS)


def weights_may_saturate(quant_config: Mapping[str, Any] | None) -> bool:
    """From a file's recorded quantization config: are any of its weights wider than 7 bits (unknown: True)?"""
    if not quant_config:
        return True
    widths = [quant_config.get("weight_bits", 8)]
    widths += [rule.get("weight_bits") for rule in quant_config.get("overrides", []) or []
               if isinstance(rule, Mapping) and rule.get("weight_bits") is not None]
    return max(widths) > 7


def int8_kernels_exact(quant_config: Mapping[str, Any] | None) -> bool:
    """Whether onnxruntime's fused int8 kernels compute a file with this recorded quantization config exactly on
    this CPU (where not, the sessions run its QDQ ops in float: exact, slower)."""
    return not (int8_products_saturate() and weights_may_saturate(quant_config))
