"""QServe W4A8 weight formats: RTN quantisation, packing, scale layouts.

Independent PyTorch implementation of the formats described in
shared/design/qserve-compat.md (section numbers below refer to it) and the
quantisation of shared/design/qoq-algorithm.md (sections 2-4).

All functions work on CPU tensors and are deterministic: every step is an IEEE
fp32 operation (division, subtraction, round-half-to-even) followed, where a
stored value is fp16, by one round-to-nearest-even conversion to fp16.
"""

from __future__ import annotations

import torch

PROTECTIVE_RANGE = 119  # qoq-algorithm.md section 2: LQ / paper value, safe for pre-scale zero
GROUP_SIZE = 128        # qserve-compat.md section 4.2: hard-coded G = 128 in the kernel


# --------------------------------------------------------------------------------------------
# Quantisation (RTN)
# --------------------------------------------------------------------------------------------

def quantize_per_channel(w: torch.Tensor) -> dict:
    """Per-output-channel asymmetric uint4 with an integer zero point (LQ "zint4").

    w: fp16 [N, K].  Formulas (fp32 arithmetic, RN-even rounding):
      s  = fp16((max_k w - min_k w) / 15);  s := 1 where s == 0
      z  = clamp(round(-min_k w / s), 0, 15)                    (integer)
      Q  = clamp(round(w / s) + z, 0, 15)
      s1_szeros = fp16(z * s)                                    (qserve-compat 4.1)
      fake-quant weight (LMQuant model.pt) = fp16((Q - z) * s)
    """
    assert w.dtype == torch.float16 and w.dim() == 2
    wf = w.float()
    wmax = wf.amax(dim=1)
    wmin = wf.amin(dim=1)
    s = ((wmax - wmin) / 15.0).half()
    s = torch.where(s == 0, torch.ones_like(s), s)
    sf = s.float()
    z = torch.round(-wmin / sf).clamp(0, 15)
    q = (torch.round(wf / sf[:, None]) + z[:, None]).clamp(0, 15)
    szeros = (z * sf).half()
    fake = ((q - z[:, None]) * sf[:, None]).half()
    return {
        "codes": q.to(torch.uint8),           # [N, K] 0..15
        "s1_scales": s,                       # fp16 [N]
        "zeros": z.to(torch.uint8),           # [N] 0..15
        "s1_szeros": szeros,                  # fp16 [N]
        "fake": fake,                         # fp16 [N, K]
    }


def quantize_g128(w: torch.Tensor, protective_range: int = PROTECTIVE_RANGE,
                  group_size: int = GROUP_SIZE) -> dict:
    """Progressive two-level group quantisation (qoq-algorithm.md section 2, LQ pre-scale variant,
    which is what QServe's own converter consumes).

    w: fp16 [N, K], K % group_size == 0.  P = protective_range (119).
      level 1: s1 = fp16(max_k |w| / P); s1 := 1 where s1 == 0;  X = clamp(w / s1, -P, P)  (not rounded)
      level 2, per group of 128 input channels of X:
        s2 = round((max X - min X) / 15);  s2 := 1 where s2 == 0       (integer, 1..16)
        z  = clamp(round(-min X / s2), 0, 15)                          (integer)
        Q  = clamp(round(X / s2) + z, 0, 15)
        w8 = (Q - z) * s2   in [-128, 127]  (asserted)
      fake-quant weight (LMQuant model.pt) = fp16(s1 * w8)
    """
    assert w.dtype == torch.float16 and w.dim() == 2
    n, k = w.shape
    assert k % group_size == 0
    p = float(protective_range)
    wf = w.float()
    s1 = (wf.abs().amax(dim=1) / p).half()
    s1 = torch.where(s1 == 0, torch.ones_like(s1), s1)
    s1f = s1.float()
    x = (wf / s1f[:, None]).clamp(-p, p)
    g = k // group_size
    xg = x.view(n, g, group_size)
    vmax = xg.amax(dim=2)
    vmin = xg.amin(dim=2)
    s2 = torch.round((vmax - vmin) / 15.0).clamp(-127, 127)
    s2 = torch.where(s2 == 0, torch.ones_like(s2), s2)
    z = torch.round(-vmin / s2).clamp(0, 15)
    q = (torch.round(xg / s2[:, :, None]) + z[:, :, None]).clamp(0, 15)
    w8 = (q - z[:, :, None]) * s2[:, :, None]
    assert float(w8.min()) >= -128 and float(w8.max()) <= 127, "level-1 int8 range violated"
    assert float((q * s2[:, :, None]).max()) <= 255, "Q*s2 > 255 would carry across bytes"
    fake = (w8.view(n, k) * s1f[:, None]).half()
    return {
        "codes": q.view(n, k).to(torch.uint8),   # [N, K] 0..15
        "s1_scales": s1,                         # fp16 [N]
        "s2": s2.to(torch.int16),                # [N, G] 1..16 (logical layout)
        "zeros": z.to(torch.int16),              # [N, G] 0..15 (logical layout)
        "w8": w8.view(n, k).to(torch.int16),     # [N, K] -128..127
        "fake": fake,                            # fp16 [N, K]
    }


# --------------------------------------------------------------------------------------------
# Packing of 4-bit codes (qserve-compat.md section 3.1)
# --------------------------------------------------------------------------------------------

def pack_qweight(codes: torch.Tensor) -> torch.Tensor:
    """Converter form: reshape Q to (N/32, 2[b], 2[c], 8[d], K/32, 2[f], 4[g], 4[h]), permute to
    (a, e, d, g, f, c, h, b), byte = (Q_{b=1} << 4) | Q_{b=0}.  Returns int8 [N, K/2]."""
    n, k = codes.shape
    assert n % 32 == 0 and k % 32 == 0
    assert int(codes.max()) <= 15
    t = codes.to(torch.int32).reshape(n // 32, 2, 2, 8, k // 32, 2, 4, 4)
    t = t.permute(0, 4, 3, 6, 5, 2, 7, 1).reshape(-1, 2)
    byte = t[:, 0] | (t[:, 1] << 4)
    return byte.to(torch.uint8).view(torch.int8).reshape(n, k // 2).contiguous()


def byte_offset_closed_form(n: torch.Tensor, k: torch.Tensor, K: int):
    """Closed form L(n, k) and nibble b of section 3.1 (independent of pack_qweight)."""
    a, r = n // 32, n % 32
    b, r = r // 16, r % 16
    c, d = r // 8, r % 8
    e, r = k // 32, k % 32
    f, r = r // 16, r % 16
    g, h = r // 4, r % 4
    L = 16 * K * a + 512 * e + 64 * d + 16 * g + 8 * f + 4 * c + h
    return L, b


def pack_qweight_closed_form(codes: torch.Tensor) -> torch.Tensor:
    n_, k_ = codes.shape
    nn_, kk_ = torch.meshgrid(torch.arange(n_), torch.arange(k_), indexing="ij")
    L, b = byte_offset_closed_form(nn_.reshape(-1), kk_.reshape(-1), k_)
    out = torch.zeros(n_ * k_ // 2, dtype=torch.int32)
    val = (codes.reshape(-1).to(torch.int64) << (4 * b)).to(torch.int32)
    out.index_add_(0, L, val)
    assert int(out.max()) <= 255
    return out.to(torch.uint8).view(torch.int8).reshape(n_, k_ // 2)


def unpack_qweight(packed: torch.Tensor) -> torch.Tensor:
    """Inverse mapping of section 3.1 (byte -> (k, n_low, n_high)). packed: int8 [N, K/2]."""
    n_, kh = packed.shape
    k_ = 2 * kh
    flat = packed.reshape(-1).view(torch.uint8).to(torch.int64)
    L = torch.arange(flat.numel())
    a = L // (16 * k_)
    u = L % (16 * k_)
    e = u // 512
    v = u % 512
    d = v // 64
    g = (v // 16) % 4
    f = (v // 8) % 2
    c = (v // 4) % 2
    h = v % 4
    kk = 32 * e + 16 * f + 4 * g + h
    n_lo = 32 * a + 8 * c + d
    n_hi = n_lo + 16
    out = torch.full((n_, k_), -1, dtype=torch.int64)
    out[n_lo, kk] = flat & 0xF
    out[n_hi, kk] = flat >> 4
    assert int(out.min()) >= 0
    return out.to(torch.uint8)


# --------------------------------------------------------------------------------------------
# g128 level-2 scale / zero layout (qserve-compat.md sections 2.2, 3.3, 4.2)
# --------------------------------------------------------------------------------------------

def permute_group_columns(x_ng: torch.Tensor) -> torch.Tensor:
    """Logical [N, G] -> stored [G, N] with stored[G][32a + 4d + j] = x[32a + 8j + d][G]."""
    n, g = x_ng.shape
    assert n % 32 == 0
    t = x_ng.t().reshape(g, n // 32, 4, 8)          # (G, a, j, d): n = 32a + 8j + d
    return t.permute(0, 1, 3, 2).reshape(g, n).contiguous()  # (G, a, d, j): col = 32a + 4d + j


def unpermute_group_columns(stored_gn: torch.Tensor) -> torch.Tensor:
    """Stored [G, N] -> logical [N, G]."""
    g, n = stored_gn.shape
    t = stored_gn.reshape(g, n // 32, 8, 4)          # (G, a, d, j)
    return t.permute(0, 1, 3, 2).reshape(g, n).t().contiguous()


def to_int8_wrap(x: torch.Tensor) -> torch.Tensor:
    """Two's-complement byte of an integer tensor (mod 256)."""
    return torch.remainder(x.to(torch.int32), 256).to(torch.uint8).view(torch.int8)


def g128_stored_tensors(qz: dict) -> dict:
    """s2_scales = s2 (int8), s2_zeros = int8_wrap(-z * s2), both [K/128, N] column-permuted."""
    s2 = qz["s2"].to(torch.int32)
    z = qz["zeros"].to(torch.int32)
    return {
        "s2_scales": permute_group_columns(to_int8_wrap(s2)),
        "s2_zeros": permute_group_columns(to_int8_wrap(-z * s2)),
    }


def kernel_dequant_g128(codes: torch.Tensor, s2_scales: torch.Tensor, s2_zeros: torch.Tensor,
                        group_size: int = GROUP_SIZE) -> torch.Tensor:
    """Kernel view (section 4.2): w8 = int8((Q * s2 + uint8(s2_zeros)) mod 256), from the stored
    (permuted) tensors. Returns int16 [N, K]."""
    n, k = codes.shape
    s2 = unpermute_group_columns(s2_scales).view(torch.uint8).to(torch.int32)   # [N, G]
    zb = unpermute_group_columns(s2_zeros).view(torch.uint8).to(torch.int32)     # [N, G]
    q = codes.to(torch.int32).view(n, k // group_size, group_size)
    prod = q * s2[:, :, None]
    assert int(prod.max()) <= 255
    byte = torch.remainder(prod + zb[:, :, None], 256)
    w8 = torch.where(byte >= 128, byte - 256, byte)
    return w8.view(n, k).to(torch.int16)


# --------------------------------------------------------------------------------------------
# Converter emulation: recover integer codes from an LMQuant dump (qoq-algorithm.md section 4)
# --------------------------------------------------------------------------------------------

def codes_from_lmquant_per_channel(fake: torch.Tensor, scale0: torch.Tensor, zero: torch.Tensor):
    """QServe converter, per-channel: Q = round(W_fake / s1) + zero (zero +8 if any negative)."""
    s1 = scale0.reshape(-1).float()
    z = zero.reshape(-1).float()
    if float(z.min()) < 0:
        z = z + 8
    q = torch.round(fake.float() / s1[:, None]) + z[:, None]
    assert float(q.min()) >= 0 and float(q.max()) <= 15
    return q.to(torch.uint8), z.to(torch.uint8)


def codes_from_lmquant_g128(fake: torch.Tensor, scale0: torch.Tensor, scale1: torch.Tensor,
                            zero: torch.Tensor, group_size: int = GROUP_SIZE):
    """QServe converter, g128: w8 = round(W_fake / s1) in [-128,127]; Q = w8 / s2 + zero in [0,15]."""
    n, k = fake.shape
    g = k // group_size
    s1 = scale0.reshape(n).float()
    s2 = scale1.reshape(n, g).float()
    z = zero.reshape(n, g).float()
    if float(z.min()) < 0:
        z = z + 8
    w8 = torch.round(fake.float() / s1[:, None])
    assert float(w8.min()) >= -128 and float(w8.max()) <= 127
    qf = w8.view(n, g, group_size) / s2[:, :, None] + z[:, :, None]
    q = torch.round(qf)
    assert torch.equal(q, qf), "w8 / s2 not an integer"
    assert float(q.min()) >= 0 and float(q.max()) <= 15
    return q.view(n, k).to(torch.uint8), s2.to(torch.int16), z.to(torch.int16)
