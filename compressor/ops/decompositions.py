"""Exact rewrites applied right after tracing, before quantizers are planned.

Each function takes an op's ATen arguments and computes the same values with
ops that have int8 kernels, so the simulation quantizes the same
intermediate tensors the files will hold (a SiLU becomes x * sigmoid(x), and
the sigmoid's output gets the runtimes' fixed 1/256 grid). No-ops in eval
mode (detach, dropout, a cast to the same dtype, a lifted constant) become
the tensor itself. The op registry names each record's function
(``OpRecord.decompose``); ``torch.export``'s ``run_decompositions`` applies
them, keeping each node's source line and module path.
"""
from __future__ import annotations

import math
from typing import Any

import torch

aten = torch.ops.aten


def same_tensor(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """detach, lift_fresh_copy, eval-mode dropout, a float cast to the same dtype: the input itself."""
    return x


def to_dtype(x: torch.Tensor, dtype: torch.dtype, *args: Any, **kwargs: Any) -> torch.Tensor:
    if dtype != x.dtype:
        # a real conversion (float16, int): no int8 form; keep the op so quantize() refuses it by name
        return aten._to_copy.default(x, dtype=dtype)
    return x


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def elu(x: torch.Tensor, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0) -> torch.Tensor:
    # multiplications by 1 left out: each would be one more quantized tensor in the simulation
    negative = torch.exp(x * input_scale if input_scale != 1 else x) - 1
    if alpha * scale != 1:
        negative = negative * (alpha * scale)
    return torch.where(x > 0, x * scale if scale != 1 else x, negative)


def log10(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x) * (1 / math.log(10))


def log1p(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x + 1)


def softmax(x: torch.Tensor, dim: int, dtype: Any = None) -> torch.Tensor:
    """Softmax over the last axis (LiteRT's int8 SOFTMAX); another axis is moved there and back."""
    last = x.dim() - 1
    dim = dim % x.dim()
    if dim == last:
        return aten._softmax.default(x, last, False)
    return aten._softmax.default(x.transpose(dim, last), last, False).transpose(dim, last)


def log_softmax(x: torch.Tensor, dim: int, *args: Any) -> torch.Tensor:
    """x - max - log(sum(exp(x - max))) over ``dim``: REDUCE_MAX, SUB, EXP, SUM, LOG, each on its own grid.

    (aten.log_softmax.int's dtype / aten._log_softmax's half_to_float: float stays float.) LiteRT lowers
    log_softmax to these same ops, but in float. log(softmax(x)) would floor every log-probability at
    log(1/256) = -5.5 (softmax's fixed grid): on random logits (8 and 64 classes) its simulation has
    3-43 dB SQNR against the exact log_softmax of the same int8 logits (3 dB when they are peaky), this
    form 43-52 dB, 3-6 dB below the exact values rounded to an 8-bit output grid.
    """
    shifted = x - x.amax(dim, keepdim=True)
    return shifted - torch.log(torch.exp(shifted).sum(dim, keepdim=True))


def broadcast_to(x: torch.Tensor, size: Any) -> torch.Tensor:
    return x.expand(size)


def _static_ratio(out: Any, size: Any) -> int | None:
    """out / size when it is the same integer for every input length (sizes may be symbolic), else None."""
    if isinstance(out, int) and isinstance(size, int):
        return out // size if size > 0 and out % size == 0 else None
    import sympy

    def expr(v: Any) -> Any:
        return v.node.expr if isinstance(v, torch.SymInt) else sympy.Integer(int(v))

    ratio = sympy.simplify(expr(out) / expr(size))
    return int(ratio) if ratio.is_Integer else None


def _integer_factors(x: torch.Tensor, output_size: Any, scale_factors: Any) -> list[int] | None:
    """Each spatial axis's upsampling factor when all are integers >= 1 (for every input length), else None."""
    if scale_factors is not None:
        if any(float(f) != int(f) or f < 1 for f in scale_factors):
            return None
        return [int(f) for f in scale_factors]
    factors = [_static_ratio(o, i) for o, i in zip(output_size, x.shape[2:])]
    return None if any(f is None or f < 1 for f in factors) else factors


def _output_size(x: torch.Tensor, output_size: Any, scale_factors: Any) -> list[Any]:
    """torch's output size of an upsampling (for the refused .default form)."""
    if output_size is not None:
        return list(output_size)
    return [torch.sym_int(torch.sym_float(n) * float(f)) for n, f in zip(x.shape[2:], scale_factors)]


def upsample_nearest(x: torch.Tensor, output_size: Any, scale_factors: Any) -> torch.Tensor:
    """Nearest upsampling by integer factors: each sample repeated (data movement only)."""
    axes = x.dim() - 2
    factors = _integer_factors(x, output_size, scale_factors)
    if factors is None:  # kept as the .default op, which the registry refuses with what to do instead
        size = _output_size(x, output_size, scale_factors)
        scales = [None] * axes if scale_factors is None else list(scale_factors)
        op = aten.upsample_nearest1d.default if axes == 1 else aten.upsample_nearest2d.default
        return op(x, size, *scales)
    out = x
    for axis, factor in zip(range(2, 2 + axes), factors):
        if factor == 1:
            continue
        shape = list(out.shape)
        out = out.unsqueeze(axis + 1).expand(*shape[: axis + 1], factor, *shape[axis + 1:])
        out = out.flatten(axis, axis + 1)
    return out


def _linear_upsample_axis(x: torch.Tensor, axis: int, factor: int) -> torch.Tensor:
    """Linear upsampling along one axis by an integer factor, align_corners=False.

    Output sample l * factor + r reads source position l + d_r, d_r = (2r + 1 - factor) / (2 * factor):
    a fixed 2-tap mix (1 - |d_r|) * x[l] + |d_r| * x[l -/+ 1] with the edge sample repeated (torch clamps
    the source index there). Each weight's product is computed once and shifted for the phases that use it;
    the phases are interleaved by a stack on a new axis and a reshape.
    """
    if factor == 1:
        return x
    products: dict[float, torch.Tensor] = {}

    def times(w: float) -> torch.Tensor:
        if w not in products:
            products[w] = x * w
        return products[w]

    def shifted(t: torch.Tensor, step: int) -> torch.Tensor:  # t[l + step], the edge sample repeated
        if step < 0:
            return torch.cat([t.narrow(axis, 0, 1), aten.slice.Tensor(t, axis, 0, -1)], axis)
        return torch.cat([aten.slice.Tensor(t, axis, 1), aten.slice.Tensor(t, axis, -1)], axis)

    phases = []
    for r in range(factor):
        offset = (2 * r + 1 - factor) / (2 * factor)
        if offset == 0:
            phases.append(x)
            continue
        w = abs(offset)
        phases.append(times(1 - w) + shifted(times(w), 1 if offset > 0 else -1))
    return torch.stack(phases, axis + 1).flatten(axis, axis + 1)


def upsample_linear(x: torch.Tensor, output_size: Any, align_corners: bool, scale_factors: Any) -> torch.Tensor:
    """Linear (1-D) and bilinear (2-D) upsampling by integer factors, align_corners=False: per output phase a
    2-tap mix of a sample and its neighbour, the phases interleaved; bilinear is the linear form along H,
    then along W."""
    factors = _integer_factors(x, output_size, scale_factors)
    if factors is None or align_corners:  # kept as the .default op, which the registry refuses
        size = _output_size(x, output_size, scale_factors)
        scales = [None] * len(size) if scale_factors is None else list(scale_factors)
        op = aten.upsample_linear1d.default if x.dim() == 3 else aten.upsample_bilinear2d.default
        return op(x, size, align_corners, *scales)
    if x.dim() > 3:  # [B, C, H, W] -> [B * C, H, W]: fewer dims for the stacks and reshapes of the files
        out = x.flatten(0, 1)
        for axis, factor in zip(range(1, out.dim()), factors):
            out = _linear_upsample_axis(out, axis, factor)
        return out.unflatten(0, x.shape[:2])
    out = x
    for axis, factor in zip(range(2, x.dim()), factors):
        out = _linear_upsample_axis(out, axis, factor)
    return out


def _pad_axis(x: torch.Tensor, axis: int, before: int, after: int) -> torch.Tensor:
    """Zeros before and after along one axis (one constant pad)."""
    if before == 0 and after == 0:
        return x
    pads = [0, 0] * (x.dim() - 1 - axis) + [before, after]
    return aten.constant_pad_nd.default(x, pads, 0.0)


def _block_padding(length: Any, kernel: int, stride: int, dilation: int) -> Any:
    """Zeros ``_frames`` needs after a padded axis of ``length`` samples: up to a multiple of its block size.

    Padding (not cropping to the samples the frames use) keeps every shape a multiple of the input's, so
    torch.export adds no guard on the input length (a crop's size relation to the input depends on the
    length modulo the stride).
    """
    g = math.gcd(kernel, stride) if dilation == 1 and not (kernel == 1 and stride == 1) else 1
    return 0 if g == 1 else (length + g - 1) // g * g - length


def _frames(x: torch.Tensor, axis: int, kernel: int, stride: int, dilation: int, frames: Any) -> torch.Tensor:
    """im2col along one padded axis (+ ``_block_padding`` zeros) into ``frames`` frames:
    [..., N, ...] -> [..., kernel, L, ...], [k, l] = x[l * stride + k * dilation].

    Dilation 1: with g = gcd(kernel, stride) the axis is cut into blocks of g samples; frame l's kernel/g
    blocks are blocks l * stride/g + j, so kernel/g strided slices over the block index give all frames
    (kernel 100, stride 50: 2 slices). Dilation > 1: one strided slice per kernel element.
    """
    if kernel == 1 and stride == 1:
        return x.unsqueeze(axis)
    g = math.gcd(kernel, stride) if dilation == 1 else 1
    if g == 1:
        span = (frames - 1) * stride + 1
        parts = [aten.slice.Tensor(x, axis, k * dilation, k * dilation + span, stride) for k in range(kernel)]
        return torch.stack(parts, axis)
    step = stride // g
    x = x.unflatten(axis, (x.shape[axis] // g, g))  # [..., blocks, g, ...]
    span = (frames - 1) * step + 1
    parts = [aten.slice.Tensor(x, axis, j, j + span, step) for j in range(kernel // g)]  # [..., L, g, ...]
    framed = torch.stack(parts, axis) if len(parts) > 1 else parts[0].unsqueeze(axis)  # [..., kernel/g, L, g, ...]
    return framed.transpose(axis + 1, axis + 2).flatten(axis, axis + 1)


def _overlap_add(x: torch.Tensor, axis: int, kernel: int, stride: int, dilation: int) -> torch.Tensor:
    """col2im along one axis: [..., kernel, L, ...] -> [..., N, ...], N = L * stride + (kernel - 1) * dilation
    (>= the padded length), sample l * stride + k * dilation summing every [k, l] that lands on it.

    Grouped as in ``_frames``: the kernel/g pieces of g samples (g = gcd(kernel, stride), dilation 1; else
    g = 1 and kernel pieces) are zero-stuffed to one stride per frame (a pad), shifted into place (a pad)
    and summed: kernel/g - 1 adds.
    """
    if kernel == 1 and stride == 1:
        return x.squeeze(axis)
    g = math.gcd(kernel, stride) if dilation == 1 else 1
    offset = g if dilation == 1 else dilation  # between consecutive pieces
    pieces = kernel // g
    if g > 1:
        x = x.unflatten(axis, (pieces, g)).transpose(axis + 1, axis + 2)  # [..., pieces, L, g, ...]
    else:
        x = x.unsqueeze(axis + 2)  # [..., kernel, L, 1, ...]
    x = _pad_axis(x, axis + 2, 0, stride - g).flatten(axis + 1, axis + 2)  # [..., pieces, L * stride, ...]
    last = (pieces - 1) * offset + g - 1  # the right pad of the first piece
    out = None
    for j, piece in enumerate(x.unbind(axis) if pieces > 1 else [x.squeeze(axis)]):
        piece = _pad_axis(piece, axis, j * offset, last - j * offset)
        out = piece if out is None else out + piece
    return out


def _pairs(v: Any) -> tuple[int, int]:
    v = list(v)
    return (int(v[0]), int(v[-1]))


def _num_frames(size: Any, kernel: int, dilation: int, padding: int, stride: int) -> Any:
    """Frames along one axis, spelled as the shape torch's im2col gives its output (the length of an arange):
    a model's own code computes shapes from that expression when traced, and torch.export cannot prove
    other spellings of it equal, so it would add guards on the input's shape."""
    return (size + 2 * padding - dilation * (kernel - 1) + stride - 1) // stride


def im2col(x: torch.Tensor, kernel_size: Any, dilation: Any, padding: Any, stride: Any) -> torch.Tensor:
    """F.unfold: [B, C, H, W] -> [B, C * kh * kw, Lh * Lw] with slices, stacks and reshapes (see ``_frames``)."""
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = (_pairs(v) for v in (kernel_size, dilation, padding, stride))
    batched = x.dim() == 4
    if not batched:
        x = x.unsqueeze(0)
    b, c, height, width = x.shape
    lh, lw = _num_frames(height, kh, dh, ph, sh), _num_frames(width, kw, dw, pw, sw)
    height, width = height + 2 * ph, width + 2 * pw
    extra_h, extra_w = _block_padding(height, kh, sh, dh), _block_padding(width, kw, sw, dw)
    if ph or pw or extra_h or extra_w:
        x = aten.constant_pad_nd.default(x, [pw, pw + extra_w, ph, ph + extra_h], 0.0)
    x = x.flatten(0, 1)  # [B * C, Hp, Wp]
    if kw == 1 and sw == 1 and isinstance(width, int) and width == 1:  # a 1-D signal [B, C, T, 1]
        out = _frames(x.squeeze(2), 1, kh, sh, dh, lh)  # [BC, kh, Lh]
    else:
        out = _frames(x, 1, kh, sh, dh, lh)  # [BC, kh, Lh, Wp]
        if not (kw == 1 and sw == 1):  # framed along W as [BC * kh * Lh, Wp]: LiteRT takes at most 5-D (PAD)
            lead = out.shape[:3]
            out = _frames(out.flatten(0, 2), 1, kw, sw, dw, lw).unflatten(0, lead)  # [BC, kh, Lh, kw, Lw]
            out = out.permute(0, 1, 3, 2, 4)  # [BC, kh, kw, Lh, Lw]
    out = out.reshape(b, c * kh * kw, lh * lw)
    return out if batched else out.squeeze(0)


def col2im(x: torch.Tensor, output_size: Any, kernel_size: Any, dilation: Any, padding: Any,
           stride: Any) -> torch.Tensor:
    """F.fold (overlap-add): [B, C * kh * kw, Lh * Lw] -> [B, C, H, W] with pads and adds (see ``_overlap_add``)."""
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = (_pairs(v) for v in (kernel_size, dilation, padding, stride))
    height, width = list(output_size)
    batched = x.dim() == 3
    if not batched:
        x = x.unsqueeze(0)
    b = x.shape[0]
    c = x.shape[1] // (kh * kw)
    lh, lw = _num_frames(height, kh, dh, ph, sh), _num_frames(width, kw, dw, pw, sw)
    # Lh * Lw is the input's length: one of them taken from it, so that torch.export sees one expression for
    # the number of frames, not two equal ones it cannot prove equal (it would guard on the input's shape)
    if isinstance(lw, int):
        lh = x.shape[2] // lw
    elif isinstance(lh, int):
        lw = x.shape[2] // lh
    if kw == 1 and sw == 1:  # nothing overlaps along W: [B * C, kh, Lh, Lw]
        out = x.reshape(b * c, kh, lh, lw)
        if isinstance(lw, int) and lw == 1:  # a 1-D signal
            out = _overlap_add(out.squeeze(3), 1, kh, sh, dh).unsqueeze(2)  # [BC, Nh, 1]
        else:
            out = _overlap_add(out, 1, kh, sh, dh)  # [BC, Nh, Lw]
    else:
        out = x.reshape(b * c, kh, kw, lh, lw).permute(0, 1, 3, 2, 4)  # [BC, kh, Lh, kw, Lw]
        # summed along W as [BC * kh * Lh, kw, Lw]: LiteRT takes at most 5-D (PAD)
        out = _overlap_add(out.flatten(0, 2), 1, kw, sw, dw).unflatten(0, (b * c, kh, lh))  # [BC, kh, Lh, Nw]
        out = _overlap_add(out, 1, kh, sh, dh)  # [BC, Nh, Nw]
    out = aten.slice.Tensor(out, 1, ph, ph + height)
    if not (kw == 1 and sw == 1 and pw == 0):  # else the width is already W
        out = aten.slice.Tensor(out, 2, pw, pw + width)
    # a crop whose size relation to the input depends on the length modulo the stride: made contiguous
    # before the reshape, so that torch.export adds no guard on the input length (an Identity in the files)
    out = aten.clone.default(out, memory_format=torch.contiguous_format).reshape(b, c, height, width)
    return out if batched else out.squeeze(0)


# -- substitutions (QuantConfig.substitutions): norms and attention as ops with int8 kernels -----------------


def _normalize(x: torch.Tensor, dims: list[int], eps: float, gain: torch.Tensor | None = None) -> torch.Tensor:
    """(x - mean) * rsqrt(var + eps) over ``dims`` (the form the project deploys for gLN / cLN): mean, sub,
    (x - m) * (x - m), mean, add eps, rsqrt (its input floored at one LSB by quantize()), mul. A ``gain``
    constant over ``dims`` (GroupNorm's per-channel weight) multiplies the small rsqrt tensor first: one
    rounding less on the full-size tensor."""
    centered = x - x.mean(dim=dims, keepdim=True)
    var = (centered * centered).mean(dim=dims, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    return centered * (rstd if gain is None else rstd * gain)


def _reduced_count(x: torch.Tensor, dim: Any) -> Any:
    """How many elements a reduction over ``dim`` (None or [] = all axes) averages; symbolic on a dynamic axis."""
    axes = range(x.dim()) if dim is None or (isinstance(dim, (list, tuple)) and not dim) else \
        ([dim] if isinstance(dim, int) else list(dim))
    count: Any = 1
    for axis in axes:
        count = count * x.shape[axis]
    return count


def var(x: torch.Tensor, dim: Any = None, unbiased: bool = True, keepdim: bool = False, *,
        correction: Any = None) -> torch.Tensor:
    """torch.var (``aten.var.dim`` and ``aten.var.correction``) as mean, x - m, (x - m) * (x - m), mean; an
    unbiased variance (correction c) times the constant n / (n - c), n the reduced count. When n depends on
    the input length (a dynamic axis) that factor is no constant: refused, with what to write instead."""
    c = (1 if unbiased else 0) if correction is None else correction
    axes = None if dim is None or (isinstance(dim, (list, tuple)) and not dim) else dim
    mean = x.mean() if axes is None else x.mean(dim=axes, keepdim=True)
    centered = x - mean
    squared = centered * centered
    out = (squared.mean() if axes is None else squared.mean(dim=axes, keepdim=keepdim))
    if c:
        n = _reduced_count(x, dim)
        if not isinstance(n, int):
            from compressor.errors import UnsupportedOpError

            raise UnsupportedOpError(
                f"torch.var/torch.std with correction={c} (unbiased=True, the default) over an axis whose size "
                "varies with the input length: its factor n / (n - 1) is no constant of the model; pass "
                "unbiased=False (correction=0), as norms do, or reduce over fixed-size axes only")
        out = out * (n / (n - c))
    return out


def std(x: torch.Tensor, dim: Any = None, unbiased: bool = True, keepdim: bool = False, *,
        correction: Any = None) -> torch.Tensor:
    """torch.std (``aten.std.dim``, ``aten.std.correction``): sqrt of ``var``."""
    return torch.sqrt(var(x, dim, unbiased, keepdim, correction=correction))


def layer_norm(x: torch.Tensor, normalized_shape: Any, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, cudnn_enable: bool = True) -> torch.Tensor:
    """nn.LayerNorm / F.layer_norm over the last len(normalized_shape) axes, then the elementwise affine."""
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    out = _normalize(x, dims, eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def _channel_affine(out: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """Per-channel (axis 1) weight and bias of a GroupNorm / BatchNorm, broadcast as [C, 1, ...]."""
    shape = [-1] + [1] * (out.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, cudnn_enabled: bool = True) -> torch.Tensor:
    """nn.GroupNorm / F.group_norm on [N, C, *]: one group is the global LN (asteroid's gLN), C groups
    normalize each channel over time; others reshape to [N, G, C/G, *] and back (data movement)."""
    channels = x.shape[1]
    spatial = [1] * (x.dim() - 2)
    gain = None if weight is None else weight.reshape(-1, *spatial)  # [C, 1, ...]
    if num_groups == 1:
        normed = _normalize(x, list(range(1, x.dim())), eps, gain)
    elif num_groups == channels and x.dim() > 2:
        normed = _normalize(x, list(range(2, x.dim())), eps, gain)
    else:
        grouped = x.unflatten(1, (num_groups, channels // num_groups))
        gain = None if weight is None else weight.reshape(num_groups, -1, *spatial)  # [G, C/G, 1, ...]
        normed = _normalize(grouped, list(range(2, grouped.dim())), eps, gain).flatten(1, 2)
    return _channel_affine(normed, None, bias)


# Masked scores are set ATTENTION_MASK_MARGIN below their row's smallest score before the softmax: their
# weight is then at most exp(-20) ~ 2e-9 of the row's largest (float: the same result as -inf), and in int8
# they round to 0 on softmax's 1/256 grid, while the scores' grid widens only by the margin (an additive
# -inf or -1e4 mask would stretch it until the real scores fall into a few steps).
ATTENTION_MASK_MARGIN = 20.0


def _masked(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    fill = aten.amin.default(scores, [-1], True) - ATTENTION_MASK_MARGIN
    return torch.where(keep, scores, fill)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention as softmax((q * scale) @ k^T [+ mask]) @ v, the softmax over the last axis.

    A float mask is added to the scores; a boolean mask and is_causal (top-left aligned, as torch) set the
    masked scores ``ATTENTION_MASK_MARGIN`` below their row's smallest (see ``_masked``).
    """
    if dropout_p:
        from compressor.errors import UnsupportedOpError

        raise UnsupportedOpError(
            f"scaled_dot_product_attention with dropout_p={dropout_p}: F.scaled_dot_product_attention applies "
            "dropout even in eval mode; pass dropout_p=0.0 when not training (e.g. self.dropout if self.training "
            "else 0.0)")
    if enable_gqa and key.shape[-3] != query.shape[-3]:  # each key/value head serves query.heads / key.heads heads
        repeat = query.shape[-3] // key.shape[-3]

        def spread(t: torch.Tensor) -> torch.Tensor:
            shape = list(t.shape)
            return t.unsqueeze(-3).expand(*shape[:-2], repeat, *shape[-2:]).flatten(-4, -3)

        key, value = spread(key), spread(value)
    factor = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query * factor, key.transpose(-2, -1))
    if is_causal:
        rows = torch.arange(query.shape[-2], device=query.device).unsqueeze(-1)
        cols = torch.arange(key.shape[-2], device=query.device)
        scores = _masked(scores, cols <= rows)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = _masked(scores, attn_mask)
        else:
            scores = scores + attn_mask
    weights = aten._softmax.default(scores, scores.dim() - 1, False)
    return torch.matmul(weights, value)


__all__ = ["broadcast_to", "col2im", "elu", "im2col", "log10", "log1p", "log_softmax", "same_tensor", "silu", "softmax",
           "to_dtype", "upsample_linear", "upsample_nearest", "ATTENTION_MASK_MARGIN", "group_norm", "layer_norm",
           "scaled_dot_product_attention", "std", "var"]
