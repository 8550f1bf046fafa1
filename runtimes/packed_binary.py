"""Bit-packed reference runtime for int8 x int1 models (binary activation maps).

An int8 file carries each 0/1 activation in a whole byte; this runtime
stores every binary map packed, 32 channels per uint32 word, and computes
the binary convolutions with AND + popcount on those words: the int8
weights are split into their eight two's-complement bit-planes, each packed
the same way, so for one output channel and one kernel tap

    sum_c b_c * w_c = sum_j coef_j * popcount(B & W_j),  coef = 1, 2, ..., 64, -128.

The output codes equal the int8 .tflite file's on LiteRT's default CPU path
(XNNPACK; every conv, the MEAN and the dense layers run there). Step by step,
``rne`` meaning round to nearest, ties to even, and every scale product float32:

* conv (conv1 on the int8 spectrogram, conv2..4 on the packed maps, whose
  real values are 0/1: scale 1, zero-point -128): int32
  ``acc = sum w * (x - zp_in) + bias``, ``y = rne(f32(acc) * m_c)`` with
  ``m_c = f32(f32(s_in * s_w[c]) / s_out)``, XNNPACK's per-channel requantization
  scale. The Heaviside bit is ``y >= 0``: the file's GREATER_EQUAL of the conv's
  int8 code against 0 is ``code >= zp_out``, and clamping to [-128, 127] never
  flips that sign.
* 2x2 max pooling of a binary map: an OR of words.
* global mean (MEAN over H, W of the NCHW map, n positions: XNNPACK's reduce
  operator, not its global average pooling). XNNPACK sums the raw int8 codes,
  ``acc = sum(code) = count + n * zp_in`` (count: the number of ones), and
  subtracts the input zero-point in float, not in the integers:
  ``q = rne(f32(f32(acc) * m) + b)``, clamped, with
  ``m = f32(f32(s_in / s_out) * f32(1 / n))`` and ``b = f32(zp_out - f32(f32(n * zp_in) * m))``.
  For the bam head (zp_in = -128, n = 56 * 15 = 840, s_out = f32(1/255))
  ``acc * m`` is about -32640, where float32 keeps only 9 fractional bits, so
  a mean within about 2^-10 of a .5 becomes an exact tie (rounded to even),
  e.g. count = 420: 127.499992 -> 127.5 -> 128. Both details matter: the earlier form
  ``rne(count * f32(1 / (s_out * n)) + zp_out)`` (the global-average-pooling
  scale, 1 ulp lower, on the zero-point-free count) was 1 LSB off the file on
  3 of 120 test clips.
* dense: ``acc = W @ (q - zp_in) + bias``, ``rne(f32(acc) * m_c) + zp_out``
  (``m_c`` as for the convs), clamped to [zp_out, 127] after a ReLU, else
  [-128, 127].

TFLite's builtin kernels (fixed-point multipliers) and onnxruntime (the QDQ
file's ReduceMean runs in float: ``rne(f32(f32(count / n) / s_out)) + zp_out``) round
some of those ties differently, so either can differ from this runtime by
1 LSB on a clip that hits one.

Convolutions run in blocks of output rows, so the int32 accumulators stay
small; ``last_memory`` reports the activation bytes held and the tracemalloc
peak of one inference (numpy allocations are traced).

Built from a quantized checkpoint of the bam recipe (``from_quantized``):
a DNSMOS-style stack conv -> Heaviside -> [maxpool] x 4, global mean, dense head.
"""
from __future__ import annotations

import tracemalloc
from dataclasses import dataclass, field

import numpy as np

from compressor.errors import RuntimeLoadError

COEF = np.array([1, 2, 4, 8, 16, 32, 64, -128], np.int64)  # two's-complement bit-plane weights
MAP_QPARAMS = (1.0, -128)  # the binary maps' grid in the int8 file: real value 0 or 1
ROW_BLOCK = 1  # output rows per step: the int32 scratch stays one row of one layer


# --- requantization as XNNPACK's int8 kernels do it (LiteRT's default CPU path) ---
# fp32: the int32 accumulator times a float32 scale, rounded half to even. TFLite's
# builtin kernels use fixed-point multipliers instead and round ties differently.

def requant_scale(s_in: float, s_w: np.ndarray, s_out: float) -> np.ndarray:
    """float32 s_in * s_w / s_out, in float32 arithmetic."""
    return (np.float32(s_in) * np.asarray(s_w, np.float32) / np.float32(s_out)).astype(np.float32)


def requantize(acc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """round(acc * scale) in float32 (before the zero-point is added)."""
    return np.rint(acc.astype(np.float32) * scale).astype(np.int64)


def mean_scale(s_in: float, s_out: float, n: int) -> np.float32:
    """XNNPACK's mean scale: f32(s_in / s_out) times f32(1 / n), in float32."""
    return np.float32(np.float32(s_in) / np.float32(s_out)) * (np.float32(1) / np.float32(n))


def requantize_mean(sums: np.ndarray, n: int, in_qparams: tuple[float, int],
                    out_qparams: tuple[float, int]) -> np.ndarray:
    """int8 codes of the mean over n elements as XNNPACK's MEAN computes them.

    ``sums``: per output the integer sum of (code - zp_in) (for a binary map, the number of
    ones). XNNPACK accumulates the raw codes, sum + n * zp_in, converts that to float32, scales
    it and adds the float32 bias zp_out - n * zp_in * scale, then rounds half to even.
    """
    (s_in, zp_in), (s_out, zp_out) = in_qparams, out_qparams
    m = mean_scale(s_in, s_out, n)
    acc = np.asarray(sums).astype(np.int64) + n * zp_in  # int32 in XNNPACK: |acc| <= 128 n
    bias = np.float32(zp_out) - np.float32(np.float32(n * zp_in) * m)
    return np.clip(np.rint(acc.astype(np.float32) * m + bias), -128, 127).astype(np.int64)


def _col(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((-1,) + (1,) * (ndim - 1))


# --- the program: integer weights and qparams, no torch ---

@dataclass
class IntLayer:
    """One conv/dense layer as the int8 file holds it."""

    weight: np.ndarray  # int8 codes, (out, ...)
    bias: np.ndarray  # int32 codes
    in_qparams: tuple[float, int]
    out_qparams: tuple[float, int]
    w_scales: np.ndarray  # per output channel
    relu: bool = False
    planes: np.ndarray | None = None  # binary-input convs: (out, 3, 3, 8) uint32 packed weight bit-planes

    def scale(self) -> np.ndarray:
        return requant_scale(self.in_qparams[0], self.w_scales, self.out_qparams[0])


@dataclass
class PackedProgram:
    input_qparams: tuple[float, int]
    convs: list[IntLayer]
    mean_qparams: tuple[float, int]
    dense: list[IntLayer]
    frontend: dict = field(default_factory=dict)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(C, H, W) 0/1 -> (H, W, ceil(C/32)) uint32, channel c in bit c % 32 of word c // 32."""
    c = bits.shape[0]
    words = -(-c // 32)
    padded = np.zeros((words * 32,) + bits.shape[1:], np.uint32)
    padded[:c] = bits
    shifts = (np.uint32(1) << np.arange(32, dtype=np.uint32)).reshape(1, 32, 1, 1)
    grouped = padded.reshape(words, 32, *bits.shape[1:]) * shifts
    return np.bitwise_or.reduce(grouped, axis=1).transpose(1, 2, 0).copy()


def unpack_bits(packed: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of ``pack_bits``: (H, W, words) -> (C, H, W) uint8."""
    shifts = np.arange(32, dtype=np.uint32)
    bits = (packed[..., None] >> shifts) & 1  # (H, W, words, 32)
    return bits.reshape(*packed.shape[:2], -1).transpose(2, 0, 1)[:channels].astype(np.uint8)


def weight_planes(weight: np.ndarray) -> np.ndarray:
    """int8 (out, cin, 3, 3) -> (out, 3, 3, words, 8) packed bit-planes over cin."""
    u = weight.astype(np.int8).view(np.uint8)
    planes = [(u >> j) & 1 for j in range(8)]  # each (out, cin, 3, 3)
    packed = [pack_bits(p.transpose(1, 0, 2, 3).reshape(u.shape[1], u.shape[0], 9)) for p in planes]
    # pack_bits gives (out, 9, words); stack the planes last
    return np.stack(packed, axis=-1).reshape(u.shape[0], 3, 3, -1, 8)


class PackedBinaryRuntime:
    """Run a bam int8 x int1 program on (frames, mels) features; binary maps stay packed."""

    name = "packed-binary (numpy)"

    def __init__(self, program: PackedProgram, row_block: int = ROW_BLOCK) -> None:
        self.program = program
        self.row_block = row_block
        self.last_memory: dict[str, int] = {}
        self.last_popcounts = 0

    # conv1: int8 spectrogram x int8 weights -> bits
    def _conv_int8(self, x: np.ndarray, layer: IntLayer) -> np.ndarray:
        h, w = x.shape
        xp = np.pad(x.astype(np.int32) - layer.in_qparams[1], 1)
        wt = layer.weight.astype(np.int32).reshape(layer.weight.shape[0], 9)
        scale = _col(layer.scale(), 3)
        packed = np.zeros((h, w, -(-layer.weight.shape[0] // 32)), np.uint32)
        for r0 in range(0, h, self.row_block):
            r1 = min(h, r0 + self.row_block)
            acc = np.zeros((wt.shape[0], r1 - r0, w), np.int64)
            for k in range(9):
                dy, dx = divmod(k, 3)
                acc += _col(wt[:, k], 3) * xp[None, r0 + dy:r1 + dy, dx:dx + w]
            acc += _col(layer.bias.astype(np.int64), 3)
            packed[r0:r1] = pack_bits(requantize(acc, scale) >= 0)  # the pre-activation's sign: H(x)
        return packed

    # conv2..4: packed bits x int8 weights via AND + popcount over bit-planes -> bits
    def _conv_binary(self, packed: np.ndarray, layer: IntLayer) -> np.ndarray:
        h, w, _ = packed.shape
        out = layer.weight.shape[0]
        pp = np.pad(packed, ((1, 1), (1, 1), (0, 0)))  # zero words: the binary map's padding is 0
        planes = layer.planes  # (out, 3, 3, words, 8)
        scale = _col(layer.scale(), 3)
        result = np.zeros((h, w, -(-out // 32)), np.uint32)
        for r0 in range(0, h, self.row_block):
            r1 = min(h, r0 + self.row_block)
            acc = np.zeros((out, r1 - r0, w), np.int64)
            for k in range(9):
                dy, dx = divmod(k, 3)
                window = pp[r0 + dy:r1 + dy, dx:dx + w]  # (rows, w, words)
                anded = window[None, :, :, :, None] & planes[:, dy, dx][:, None, None]  # (out, rows, w, words, 8)
                counts = np.bitwise_count(anded).sum(axis=3, dtype=np.int64)  # (out, rows, w, 8)
                acc += counts @ COEF
                self.last_popcounts += anded.size
            acc += _col(layer.bias.astype(np.int64), 3)
            result[r0:r1] = pack_bits(requantize(acc, scale) >= 0)
        return result

    @staticmethod
    def _maxpool(packed: np.ndarray) -> np.ndarray:
        h, w = packed.shape[0] // 2 * 2, packed.shape[1] // 2 * 2
        p = packed[:h, :w]
        return p[0::2, 0::2] | p[1::2, 0::2] | p[0::2, 1::2] | p[1::2, 1::2]

    def _mean(self, counts: np.ndarray, n: int) -> np.ndarray:
        """Global mean of binary maps: per channel the number of ones over n positions, requantized."""
        return requantize_mean(counts, n, MAP_QPARAMS, self.program.mean_qparams)

    def _dense(self, codes: np.ndarray, layer: IntLayer) -> np.ndarray:
        acc = layer.weight.astype(np.int64) @ (codes.astype(np.int64) - layer.in_qparams[1]) + layer.bias
        q = requantize(acc, layer.scale()) + layer.out_qparams[1]
        lo = layer.out_qparams[1] if layer.relu else -128
        return np.clip(q, lo, 127)

    def run_codes(self, codes: np.ndarray) -> np.ndarray:
        """int8 input codes (frames, mels) -> int8 output code(s); records memory and popcounts."""
        p = self.program
        self.last_popcounts = 0
        held: dict[str, int] = {"input": codes.astype(np.int8).nbytes}
        tracemalloc.start()
        try:
            x = self._conv_int8(codes.reshape(codes.shape[-2:]).astype(np.int8), p.convs[0])
            held["conv1"] = x.nbytes
            for k, layer in enumerate(p.convs[1:], start=2):
                x = self._maxpool(x)
                held[f"pool{k - 1}"] = x.nbytes
                x = self._conv_binary(x, layer)
                held[f"conv{k}"] = x.nbytes
            channels = p.convs[-1].weight.shape[0]
            counts = unpack_bits(x, channels).reshape(channels, -1).sum(axis=1)
            q = self._mean(counts, x.shape[0] * x.shape[1])
            held["mean"] = channels
            for k, layer in enumerate(p.dense, start=1):
                q = self._dense(q, layer)
                held[f"fc{k}"] = q.size
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        self.last_memory = {"held_bytes": sum(held.values()), "tracemalloc_peak_bytes": peak, **held}
        return q.astype(np.int8).reshape(1, -1)

    def predict(self, features: np.ndarray) -> float:
        """Float features (frames, mels) -> the predicted score (dequantized)."""
        s_in, zp_in = self.program.input_qparams
        codes = np.clip(np.rint(features.astype(np.float32) * (np.float32(1) / np.float32(s_in))) + zp_in, -128, 127)
        out = self.run_codes(codes.astype(np.int8))
        s_out, zp_out = self.program.dense[-1].out_qparams
        return float((int(out.reshape(-1)[0]) - zp_out) * s_out)


def from_quantized(qmodel) -> PackedBinaryRuntime:  # noqa: ANN001 - a compressor QuantizedModel
    """The program of a bam quantized model (conv/Heaviside stack + mean + dense head)."""
    from runtimes.packed_program import extract_program

    program = extract_program(qmodel)
    if len(program.convs) < 2:
        raise RuntimeLoadError("the packed runtime needs a model with binary activation maps (bam recipe)")
    return PackedBinaryRuntime(program)
