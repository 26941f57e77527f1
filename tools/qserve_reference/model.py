"""Float32 Llama forward with optional QServe-style fake quantisation (W4A8, KV4/KV8).

No dependency on transformers. The FP path reproduces HuggingFace's LlamaForCausalLM in float32
(RMSNorm, NeoX RoPE, GQA, SwiGLU) and is checked against golden_logits.safetensors.

Quantised path semantics (see docs/reference-generator.md):
* W4: integer codes unpacked from the zoo checkpoint (qweight / s1 / s1_szeros or s2), GEMM done
  exactly in the integer domain (float64 matmul of integer-valued tensors), epilogue in fp32 as the
  QServe kernels do (qserve-compat.md 4.1 / 4.2).
* A8: per-token symmetric int8 of every linear layer's input (qserve-compat.md 5.2).
* KV4 / KV8: asymmetric per (token, KV head) after RoPE (qserve-compat.md 6.2 / 6.3); position t
  attends to the dequantised K/V of positions < t and to its own un-quantised K/V (decode semantics,
  qserve-compat.md 6.4 / 7.3).
* Norms: true RMSNorm (HF semantics), NOT QServe's mean-subtracting LayerNorm (qserve-compat.md 5.1).
* Rounding points (QuantOpts.numerics == "qserve", the default; generator version 3): QServe's
  activations are fp16 between kernels and the int8 codes depend on those roundings, so every value
  QServe stores in an fp16 buffer is rounded to fp16 here, where QServe rounds it (qserve-compat.md
  sections in brackets): the embedding rows (5.4); every linear output (the GEMM epilogue, 4.1/4.2);
  the fused norm + quant takes amax from the fp16-rounded normalised row and quantises the fp32 one, its
  sums use QServe's block-reduction order and the per-channel a_sum is fp16 (5.1, 5.5); the standalone
  quant's a_sum is fp16 of fp32 partials (5.2); SiLU and SiLU*up (5.3); q and k after RoPE (7.1); K/V
  into the KV quantiser and the dequantised K/V (6.2/6.3); the current token's own K/V (fp16 from the
  QKV buffer, 7.3); the attention probabilities, the P*V cross-group partials and the attention output
  (7.3); the residual stream after every add (5.4); the final RMSNorm (5.4) and the logits (lm_head
  writes fp16). With QuantOpts.attention == "qserve-kernel" (the default, head_dim 128 only, the only
  size QServe's decode kernel has) attention follows the decode kernel's structure (7.3): fp16 partial
  q.k dots per 8-channel thread, fp32 butterflies, softmax with rcp(sum + 1e-6) and fp16 probabilities,
  P*V per 16 time groups with fp32 FMA and an fp16 halving tree; "fp32" is fp32 attention with only its
  output rounded. Not emulated (no bit-exact CPU equivalent): fast-math exp/sin/cos/rsqrt/rcp (exact
  functions are used), and FlashAttention-2's internals for prefill (this reference has no prefill).
  With numerics == "fp32" (generator version 1) everything is fp32 between kernels; an implementation
  with QServe's rounding points cannot match that (A8 rounding flips cascade; position-0 logits 0.040
  rel L2 apart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from qformats import unpack_qweight, kernel_dequant_g128

LINEARS = [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
           ("self_attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj")]

F32_INV_127 = torch.tensor(1.0 / 127.0, dtype=torch.float32).item()   # fl32(1/127)


@dataclass
class Config:
    hidden: int
    inter: int
    n_layers: int
    n_heads: int
    n_kv: int
    head_dim: int
    vocab: int
    eps: float
    theta: float

    @staticmethod
    def from_json(cfg: dict) -> "Config":
        theta = cfg.get("rope_theta")
        if theta is None:
            theta = (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        return Config(cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
                      cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
                      hd, cfg["vocab_size"], float(cfg["rms_norm_eps"]), float(theta))


# --------------------------------------------------------------------------------------------
# Activation / KV quantisers
# --------------------------------------------------------------------------------------------

def block_sum(x: torch.Tensor, block: int, fma_square: bool = False) -> torch.Tensor:
    """QServe's block reduction (qserve-compat.md 5.5) of x [..., K] in fp32: thread t sums
    x[t], x[t+B], ... sequentially (fma_square: acc = fma(x, x, acc), emulated in float64), then each
    warp XOR-butterflies (16, 8, 4, 2, 1), lane 0 of every warp publishes, the first warp butterflies
    the warp totals (absent lanes add 0)."""
    K = x.shape[-1]
    per = -(-K // block)
    xp = torch.nn.functional.pad(x.float(), (0, per * block - K)).reshape(*x.shape[:-1], per, block)
    acc = torch.zeros(*x.shape[:-1], block, dtype=torch.float32, device=x.device)
    for j in range(per):
        if fma_square:
            d = xp[..., j, :].double()
            acc = (acc.double() + d * d).float()
        else:
            acc = acc + xp[..., j, :]
    warps = -(-block // 32)

    def butterfly(v):                      # v [..., 32] -> lane 0's total
        m = 32
        while m > 1:
            m //= 2
            v = v[..., :m] + v[..., m:2 * m]
        return v[..., 0]

    acc = torch.nn.functional.pad(acc, (0, warps * 32 - block)).reshape(*x.shape[:-1], warps, 32)
    tot = butterfly(acc)
    return butterfly(torch.nn.functional.pad(tot, (0, 32 - warps)))


def fp16r(x: torch.Tensor) -> torch.Tensor:
    """One RN rounding of an fp32 tensor to fp16, kept as fp32."""
    assert x.dtype == torch.float32
    return x.half().float()


def fp16r64(x: torch.Tensor) -> torch.Tensor:
    """One RN rounding of a float64 tensor to fp16, returned as fp32. torch's double -> half
    conversion goes through float and can round twice (1 + 2^-11 + 2^-40 becomes 1.0, not
    1 + 2^-10), so an exact fp16 FMA (one rounding of q*s + Z) needs this instead of .half()."""
    x = x.double()
    a = x.abs()
    _, e = torch.frexp(a)                                # a = m * 2^e, m in [0.5, 1)
    ulp = torch.clamp(e - 11, min=-24)                   # 11 significant bits; subnormal step 2^-24
    v = torch.ldexp(torch.round(torch.ldexp(a, -ulp)), ulp)   # exact scaling, round half to even
    v = torch.where(v >= 65520.0, torch.full_like(v, float("inf")), v)
    return torch.where(torch.isnan(x), x, torch.copysign(v, x)).float()


def exp32(x: torch.Tensor) -> torch.Tensor:
    """exp of fp32 values, correctly rounded to fp32 (float64 exp, one rounding). QServe uses the
    fast-math __expf; no CPU library reproduces it, so both this reference and the engine use the
    correctly rounded value (an implementation-defined fp32 exp differs by an ulp now and then, and
    one such difference cascades through the A8 codes like the noise-floor perturbation)."""
    return torch.exp(x.double()).float()


def sqrt32(x: torch.Tensor) -> torch.Tensor:
    """IEEE (correctly rounded) fp32 sqrt, as CUDA's sqrtf without fast-math and C++'s std::sqrt.
    torch's fp32 CPU sqrt is not correctly rounded (sqrt(2.3149485588) gives 1.52149558, the
    nearest float is 1.52149546); the float64 sqrt rounded to fp32 is (53 >= 2 * 24 + 2 bits)."""
    return torch.sqrt(x.double()).float()


def fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """fp32 fma(a, b, c) with one rounding: the product of two fp32 values is exact in float64 and
    the float64 sum is exact unless the exponents are > 29 apart (then the fp32 result is the same)."""
    return (a.double() * b.double() + c.double()).float()


def quant_act_qserve(x: torch.Tensor, with_sum: bool):
    """Standalone per-token quant (qserve-compat.md 5.2) of x [M, K] as QServe: same codes and scale
    as quant_act; a_sum = fp16(block_sum(x)) with blockDim = min(K, 1024)."""
    xq, a_scale, _ = quant_act(x)
    a_sum = fp16r(block_sum(x, min(x.shape[-1], 1024))) if with_sum else None
    return xq, a_scale, a_sum


def norm_quant_qserve(x: torch.Tensor, w: torch.Tensor, eps: float, with_sum: bool):
    """Fused true-RMSNorm + per-token quant (qserve-compat.md 5.1 without the mean; our
    NormKind::kRmsNorm): B = 32*ceil(min(H,1024)/32); S2 = block_sum(fma(x, x, acc));
    rho = 1/sqrt(S2/H + eps); u = (x*rho)*w; v = fp16(u); amax = max(fp16(1e-6), max|v|);
    xq = clamp(round(u*(127*(1/amax)))); a_scale = fp16(amax*fl32(1/127));
    a_sum = fp16(block_sum of per-thread fp16 running sums of v). x [M, H] fp32."""
    H = x.shape[-1]
    B = 32 * (-(-min(H, 1024) // 32))
    s2 = block_sum(x, B, fma_square=True)
    rho = 1.0 / sqrt32(s2 / H + eps)
    u = (x * rho[:, None]) * w
    v = fp16r(u)
    amax = torch.clamp(v.abs().amax(dim=-1), min=float(torch.tensor(1e-6).half().float()))
    inv = 127.0 * (1.0 / amax)
    xq = torch.round(u * inv[:, None]).clamp(-128, 127)
    a_scale = (amax * F32_INV_127).half().float()
    a_sum = None
    if with_sum:
        per = -(-H // B)
        vp = torch.nn.functional.pad(v, (0, per * B - H)).reshape(x.shape[0], per, B)
        ts = torch.zeros(x.shape[0], B, dtype=torch.float32, device=x.device)
        for j in range(per):
            ts = fp16r(ts + vp[:, j, :])      # fp16 + fp16 -> one rounding (exact sum in fp32 here)
        a_sum = fp16r(block_sum(ts, B))
    return xq, a_scale, a_sum


def quant_act(x: torch.Tensor):
    """Per-token symmetric int8 (qserve-compat.md 5.2), fp32 emulation:
    amax = max|x|; xq = clamp(round(x * (127 * (1/amax))), -128, 127); a_scale = fp16(amax * fl32(1/127));
    a_sum = sum(x) (the un-quantised activations, used by the per-channel epilogue). amax == 0 -> xq = 0,
    a_scale = 0."""
    amax = x.abs().amax(dim=-1)
    nz = amax > 0
    inv = torch.where(nz, 127.0 * (1.0 / torch.where(nz, amax, torch.ones_like(amax))), torch.zeros_like(amax))
    xq = torch.round(x * inv[..., None]).clamp(-128, 127)
    a_scale = (amax * F32_INV_127).half().float()
    a_sum = x.sum(dim=-1)
    return xq, a_scale, a_sum


@dataclass
class KVStats:
    tokens_heads: int = 0
    wrapped: int = 0          # KV4 values that rounded to 16 and wrapped to 0 (QServe semantics)
    saturated: int = 0        # values clamped by the unsigned-8-bit saturation
    degenerate: int = 0       # (token, head) vectors with max == min (left un-quantised)

    def as_dict(self):
        return dict(tokens_heads=self.tokens_heads, kv4_wrapped_values=self.wrapped,
                    u8_saturated_values=self.saturated, degenerate_vectors=self.degenerate)


def quant_kv(x: torch.Tensor, bits: int, stats: KVStats | None = None, wrap: bool = True,
             fp16_io: bool = False) -> torch.Tensor:
    """Quantise-dequantise one K or V tensor [..., D] per (token, head) (qserve-compat.md 6.2/6.3):
      s = fp16((mx - mn) * fl32(1/qmax)); z = fp16((-qmax * mn) * (1 / (mx - mn)))   (z not rounded)
      q = sat_u8(round(x * (1/s) + z)); KV4 keeps q & 0xF (16 wraps to 0) unless wrap=False (clamp 15)
      KV4: x^ = q * s + Z with Z = fp16(-(s * z));  KV8: x^ = s * (q - z)   (fp32, not rounded to fp16)
    """
    qmax = 15.0 if bits == 4 else 255.0
    if fp16_io:                      # QServe: fp16 K/V in, fp16 dequantised values out (6.2/6.3)
        x = fp16r(x)
    mx = x.amax(dim=-1, keepdim=True)
    mn = x.amin(dim=-1, keepdim=True)
    rng = mx - mn
    degen = rng == 0
    rng_safe = torch.where(degen, torch.ones_like(rng), rng)
    s = (rng * torch.tensor(1.0 / qmax, dtype=torch.float32).item()).half().float()
    z = ((-qmax * mn) * (1.0 / rng_safe)).half().float()
    s_safe = torch.where(degen | (s == 0), torch.ones_like(s), s)
    if fp16_io:                      # fma(x, 1/s, z): one rounding (float64 products are exact)
        q = torch.round((x.double() * (1.0 / s_safe).double() + z.double()).float())
    else:
        q = torch.round(x * (1.0 / s_safe) + z)
    sat = (q < 0) | (q > 255)
    q = q.clamp(0, 255)
    if bits == 4:
        over = q > 15
        if wrap:
            q = torch.remainder(q, 16)
        else:
            q = q.clamp(max=15)
        Z = (-(s * z)).half().float()
        xh = fp16r64(q.double() * s.double() + Z.double()) if fp16_io else q * s + Z
    else:
        over = torch.zeros_like(sat)
        xh = s * (q - z)
        if fp16_io:
            xh = fp16r(xh)
    bad = degen | (s == 0)
    xh = torch.where(bad, x, xh)
    if stats is not None:
        stats.tokens_heads += int(mx.numel())
        stats.wrapped += int((over & ~bad).sum())
        stats.saturated += int((sat & ~bad).sum())
        stats.degenerate += int(bad.sum())
    return xh


def butterfly_sum(v: torch.Tensor) -> torch.Tensor:
    """XOR-butterfly sum over the last dim (a power of two, the lanes of a warp or a sub-warp):
    lane 0 ends with ((v0 + v_{n/2}) + ...) in fp32 (qserve-compat.md 5.5)."""
    m = v.shape[-1]
    while m > 1:
        m //= 2
        v = v[..., :m] + v[..., m:2 * m]
    return v[..., 0]


def decode_attention_qserve(q, k_own, v_own, k_hat, v_hat, kv_bits: int) -> torch.Tensor:
    """Attention of every position t as one QServe decode step (qserve-compat.md 7.3, head_dim 128,
    256 threads): keys/values of positions < t from the dequantised cache (k_hat, v_hat), position t's
    own un-quantised fp16 K/V (k_own, v_own). All inputs [B, Hq, T, 128] fp16 values (KV already
    repeated for GQA). Returns the fp16 output [B, Hq, T, 128].
      own score: 32 threads x 4 channels, per thread acc = q0*k0 then fma(q_c, k_c, acc) in fp32, XOR
        butterfly over 32 lanes, times fl32(1/sqrt(128));
      cached score: 16 threads x 8 channels; per thread two fp16 lanes, each fp16(q*k) then three fp16
        FMAs (KV4 lanes: channels 0-3 and 4-7; KV8: even and odd channels, as the kernel's half2
        pairs fall), the lanes added in fp16, then fp32 butterfly over 16 lanes, times the scale;
      softmax: m = max, e = exp(s - m) (exact exp, QServe __expf), sum = 256-thread block sum,
        p = fp16(e * (1 / (sum + 1e-6)));
      P*V: group g = t mod 16 accumulates out = fma(p_t, v_t, out) in fp32 over its times in increasing
        order (the own value in the group of t); halving tree 16 -> 1 where the upper half's partial is
        rounded to fp16 before the lower half adds it in fp32; output fp16."""
    B, H, T, D = q.shape
    assert D == 128, "QServe's decode kernel exists for head_dim 128 only"
    scale = torch.tensor(1.0 / math.sqrt(D), dtype=torch.float32).item()   # fl32(1/sqrt(D)), host
    dev = q.device
    # own key: thread j owns channels 4j..4j+3
    qo = q.reshape(B, H, T, 32, 4)
    ko = k_own.reshape(B, H, T, 32, 4)
    acc = qo[..., 0] * ko[..., 0]
    for c in range(1, 4):
        acc = fma32(qo[..., c], ko[..., c], acc)
    own = butterfly_sum(acc) * scale                                       # [B,H,T]
    # cached keys: thread i owns channels 8i..8i+7, two fp16 lanes of 4 channels each
    def lanes(x):                     # [..., 128] -> [..., 16 threads, 2 lanes, 4 steps]
        x = x.reshape(*x.shape[:-1], 16, 8)
        if kv_bits == 4:
            return x.reshape(*x.shape[:-1], 2, 4)                          # lane = c // 4, step = c % 4
        return x.reshape(*x.shape[:-1], 4, 2).transpose(-1, -2)           # lane = c % 2, step = c // 2
    ql = lanes(q).double()[:, :, :, None]                                  # [B,H,T,1,16,2,4]
    kl = lanes(k_hat).double()[:, :, None]                                 # [B,H,1,T,16,2,4]
    lane = fp16r64(ql[..., 0] * kl[..., 0])
    for c in range(1, 4):
        lane = fp16r64(ql[..., c] * kl[..., c] + lane.double())
    part = fp16r64(lane[..., 0].double() + lane[..., 1].double())          # [B,H,T,T,16]
    sc = butterfly_sum(part) * scale                                       # [B,H,T(query),T(key)]
    eye = torch.eye(T, dtype=torch.bool, device=dev)
    causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
    sc = torch.where(eye, own[..., :, None].expand_as(sc), sc)
    sc = sc.masked_fill(~causal, float("-inf"))
    m = sc.amax(dim=-1, keepdim=True)
    e = exp32(sc - m)                                                      # masked -> 0
    total = block_sum(e, 256)                                              # thread t holds e_t
    r = 1.0 / (total + torch.tensor(1e-6, dtype=torch.float32).item())
    p = fp16r(e * r[..., None])                                            # [B,H,T,T]
    # value of key j for query t: the own v for j == t, else the dequantised one
    vfull = torch.where(eye[:, :, None], v_own[:, :, :, None, :].expand(B, H, T, T, D),
                        v_hat[:, :, None, :, :].expand(B, H, T, T, D))
    out = torch.zeros(B, H, T, 16, D, dtype=torch.float32, device=dev)
    for c0 in range(0, T, 16):
        n = min(16, T - c0)
        out[..., :n, :] = fma32(p[..., c0:c0 + n, None], vfull[..., c0:c0 + n, :], out[..., :n, :])
    active = 16
    while active > 1:
        mid = active // 2
        out[..., :mid, :] = out[..., :mid, :] + fp16r(out[..., mid:active, :].contiguous())
        active = mid
    return fp16r(out[..., 0, :].contiguous())


# --------------------------------------------------------------------------------------------
# Linear layers
# --------------------------------------------------------------------------------------------

class FPLinear:
    def __init__(self, w: torch.Tensor):
        self.w = w.float()

    def __call__(self, x):
        return x @ self.w.t()


class W4A8Linear:
    """mode 'per-channel': acc = sum_k xq*Q;  y = a_scale * (acc * s1) - s1_szeros * a_sum
       mode 'g128':        acc = sum_k xq*w8; y = acc * (s1 * a_scale)
    pc_zero 'asum' uses the un-quantised activation sum (QServe kernel, qserve-compat.md 4.1);
    'quantized' uses a_scale * sum(xq) (i.e. exactly x^ @ W^T with W^ = s1*Q - s1_szeros).
    act_quant False gives W4A16 (for ablations): y = x @ W^T, W^ dequantised in fp32."""

    def __init__(self, mode, wint, s1, szeros=None, act_quant=True, pc_zero="asum", numerics="qserve"):
        self.mode = mode
        self.numerics = numerics
        self.wint_t = wint.to(torch.float64).t().contiguous()   # integer-valued, exact in fp64
        self.s1 = s1.float()
        self.szeros = None if szeros is None else szeros.float()
        self.act_quant = act_quant
        self.pc_zero = pc_zero
        if mode == "per-channel":
            self.w_deq = (wint.float() * self.s1[:, None] - self.szeros[:, None])
        else:
            self.w_deq = wint.float() * self.s1[:, None]

    def __call__(self, x, pre=None):
        """x [..., K] fp32; pre: (xq, a_scale, a_sum) from the fused norm + quant (then x is unused
        and must be the normed input's shape [..., K])."""
        if not self.act_quant:
            return x @ self.w_deq.t()
        shp = x.shape
        x2 = x.reshape(-1, shp[-1])
        if pre is not None:
            xq, a_scale, a_sum = pre
        elif self.numerics == "qserve":
            xq, a_scale, a_sum = quant_act_qserve(x2, self.mode == "per-channel")
        else:
            xq, a_scale, a_sum = quant_act(x2)
        acc = (xq.double() @ self.wint_t).float()       # exact: |acc| < 2^31, integers
        if self.mode == "per-channel":
            if self.pc_zero == "asum":
                zsum = a_sum
            else:
                zsum = a_scale * xq.sum(dim=-1)
            t1 = acc * self.s1[None, :]
            t2 = self.szeros[None, :] * zsum[:, None]
            if self.numerics == "qserve":    # fma(a_scale, t1, -t2), one rounding (4.1)
                y = (a_scale[:, None].double() * t1.double() - t2.double()).float()
            else:
                y = a_scale[:, None] * t1 - t2
        else:
            y = acc * (self.s1[None, :] * a_scale[:, None])
        if self.numerics == "qserve":
            y = fp16r(y)                     # the GEMM writes fp16
        return y.reshape(*shp[:-1], -1)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

@dataclass
class QuantOpts:
    kv_bits: int | None = None     # None, 4 or 8
    kv4_wrap: bool = True
    numerics: str = "qserve"       # "qserve": QServe's fp16 rounding points (v3); "fp32": version 1
    attention: str = "qserve-kernel"   # with numerics "qserve" and KV quantised: QServe's decode
                                       # kernel structure (7.3, head_dim 128) or "fp32"


class Llama:
    def __init__(self, cfg: Config, tensors: dict, linears: dict, device, qopts: QuantOpts | None = None):
        """tensors: non-linear weights (HF names, any float dtype); linears: name -> callable."""
        self.cfg = cfg
        self.dev = device
        self.q = qopts or QuantOpts()
        f = lambda n: tensors[n].float().to(device)
        self.embed = f("model.embed_tokens.weight")
        self.lm_head = f("lm_head.weight")
        self.norm = f("model.norm.weight")
        self.ln1 = [f(f"model.layers.{i}.input_layernorm.weight") for i in range(cfg.n_layers)]
        self.ln2 = [f(f"model.layers.{i}.post_attention_layernorm.weight") for i in range(cfg.n_layers)]
        self.lin = linears
        self.kv_stats = KVStats()
        d = cfg.head_dim
        self.inv_freq = (1.0 / (cfg.theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))).to(device)

    def rms(self, x, w):
        var = x.pow(2).mean(-1, keepdim=True)
        return w * (x * torch.rsqrt(var + self.cfg.eps))

    def norm_linears(self, h, w, names):
        """[lin(norm(h)) for lin in names]. With QServe numerics and quantised linears the int8 input
        comes from the fused norm + quant (norm_quant_qserve); otherwise fp32 RMSNorm then each linear."""
        lins = [self.lin[n] for n in names]
        if self.q.numerics == "qserve" and all(isinstance(l, W4A8Linear) and l.act_quant for l in lins):
            h2 = h.reshape(-1, h.shape[-1])
            pre = norm_quant_qserve(h2, w, self.cfg.eps, any(l.mode == "per-channel" for l in lins))
            return [l(h2, pre).reshape(*h.shape[:-1], -1) for l in lins]
        x = self.rms(h, w)
        return [l(x) for l in lins]

    def silu_mul(self, g, u):
        if self.q.numerics == "qserve":      # 5.3: fp16 silu = g / (1 + exp(-g)), fp16 product
            return fp16r(fp16r(g / (1.0 + exp32(-g))) * u)
        return torch.nn.functional.silu(g) * u

    def final_norm_qserve(self, x):
        """True RMSNorm as QServe's rms_norm kernel (5.4): blockDim = min(H, 1024); S = block sum of
        per-thread sequential x^2 (FMA); rho = 1/sqrt(S/H + eps); out = fp16(fp16(x*rho) * gamma)."""
        H = x.shape[-1]
        x2 = x.reshape(-1, H)
        s = block_sum(x2, min(H, 1024), fma_square=True)
        rho = 1.0 / sqrt32(s / H + self.cfg.eps)
        return fp16r(fp16r(x2 * rho[:, None]) * self.norm).reshape(x.shape)

    def rope_qserve(self, x, T):
        """NeoX RoPE as QServe writes it (7.1) with exact functions: inv_j = fl32(theta^(-2j/D)) and
        cos/sin = fl32(cos/sin(fl32(p * inv_j))) from float64 (QServe: ex2/lg2/sin/cos approximations,
        not reproducible on a CPU); x'_j = fma(cos, x_j, -(sin * x_{j+D/2})),
        x'_{j+D/2} = fma(cos, x_{j+D/2}, sin * x_j); rounded to fp16. x [B, H, T, D]."""
        D = x.shape[-1]
        inv = torch.pow(torch.tensor(self.cfg.theta, dtype=torch.float64),
                        -torch.arange(0, D, 2, dtype=torch.float64) / D).float()
        ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]           # [T, D/2] fp32
        c = torch.cos(ang.double()).float().to(self.dev)
        s = torch.sin(ang.double()).float().to(self.dev)
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        y1 = fma32(c, x1, -(s * x2))
        y2 = fma32(c, x2, s * x1)
        return fp16r(torch.cat([y1, y2], dim=-1))

    def rope(self, T):
        pos = torch.arange(T, device=self.dev, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()

    @staticmethod
    def rot_half(x):
        h = x.shape[-1] // 2
        return torch.cat([-x[..., h:], x[..., :h]], dim=-1)

    def attention(self, q, k, v):
        """q [B,Hq,T,D], k/v [B,Hkv,T,D] post-RoPE fp32 (fp16 values with numerics "qserve")."""
        cfg = self.cfg
        B, Hq, T, D = q.shape
        rep = Hq // cfg.n_kv
        scale = 1.0 / math.sqrt(D)
        kr = k.repeat_interleave(rep, dim=1)
        vr = v.repeat_interleave(rep, dim=1)
        causal = torch.ones(T, T, dtype=torch.bool, device=self.dev).tril()
        if self.q.kv_bits is None:
            sc = (q @ kr.transpose(-1, -2)) * scale
            sc = sc.masked_fill(~causal, float("-inf"))
            p = torch.softmax(sc, dim=-1)
            return p @ vr
        f16 = self.q.numerics == "qserve"
        kh = quant_kv(k, self.q.kv_bits, self.kv_stats, self.q.kv4_wrap, f16).repeat_interleave(rep, dim=1)
        vh = quant_kv(v, self.q.kv_bits, self.kv_stats, self.q.kv4_wrap, f16).repeat_interleave(rep, dim=1)
        if f16 and self.q.attention == "qserve-kernel" and D == 128:
            return decode_attention_qserve(q, kr, vr, kh, vh, self.q.kv_bits)
        eye = torch.eye(T, dtype=torch.bool, device=self.dev)
        sc = (q @ kh.transpose(-1, -2)) * scale             # past keys: dequantised
        own = (q * kr).sum(-1) * scale                      # own key: un-quantised
        sc = torch.where(eye, own[..., :, None].expand_as(sc), sc)
        sc = sc.masked_fill(~causal, float("-inf"))
        p = torch.softmax(sc, dim=-1)
        p_own = p.diagonal(dim1=-2, dim2=-1)
        p_past = p.masked_fill(eye, 0.0)
        out = p_past @ vh + p_own[..., None] * vr
        return fp16r(out) if f16 else out

    def forward(self, ids: torch.Tensor, return_hidden: bool = False, embed_noise: float = 0.0,
                noise_seed: int = 0):
        """ids int64 [B, T] -> logits fp32 [B, T, V] (and, with return_hidden, the residual stream
        [B, L+1, T, H]: after the embedding and after every layer). embed_noise > 0 multiplies the
        embedding rows by (1 + embed_noise * N(0,1)) (seeded) to measure the chaotic sensitivity."""
        cfg = self.cfg
        B, T = ids.shape
        D = cfg.head_dim
        qs = self.q.numerics == "qserve"
        h = self.embed[ids.to(self.dev)]
        if qs:
            h = fp16r(h)
        if embed_noise:
            # After the fp16 rounding, which would otherwise undo a 1e-6 perturbation: the first
            # norm sees it, the first residual add rounds most of it away (noise-floor section).
            gen = torch.Generator(device="cpu").manual_seed(noise_seed)
            h = h * (1 + embed_noise * torch.randn(h.shape, generator=gen).to(self.dev))
        hidden = [h]
        cos, sin = self.rope(T)
        for i in range(cfg.n_layers):
            L = lambda name: self.lin[f"model.layers.{i}.{name}"]
            pfx = f"model.layers.{i}."
            q, k, v = self.norm_linears(h, self.ln1[i], [pfx + "self_attn.q_proj", pfx + "self_attn.k_proj",
                                                         pfx + "self_attn.v_proj"])
            q = q.view(B, T, cfg.n_heads, D).transpose(1, 2)
            k = k.view(B, T, cfg.n_kv, D).transpose(1, 2)
            v = v.view(B, T, cfg.n_kv, D).transpose(1, 2)
            if qs:                           # RoPE writes fp16 (7.1)
                q, k = self.rope_qserve(q, T), self.rope_qserve(k, T)
            else:
                q = q * cos + self.rot_half(q) * sin
                k = k * cos + self.rot_half(k) * sin
            a = self.attention(q, k, v).transpose(1, 2).reshape(B, T, cfg.n_heads * D)
            h = h + L("self_attn.o_proj")(a)
            if qs:                           # fp16 residual add (5.4)
                h = fp16r(h)
            g, u = self.norm_linears(h, self.ln2[i], [pfx + "mlp.gate_proj", pfx + "mlp.up_proj"])
            h = h + L("mlp.down_proj")(self.silu_mul(g, u))
            if qs:
                h = fp16r(h)
            hidden.append(h)
        if qs:                               # fp16 RMSNorm, lm_head writes fp16 (5.4)
            logits = fp16r(self.final_norm_qserve(h) @ self.lm_head.t())
        else:
            logits = self.rms(h, self.norm) @ self.lm_head.t()
        if return_hidden:
            return logits, torch.stack(hidden, dim=1)
        return logits


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------

def build_fp(cfg: Config, sd: dict, device, qopts=None) -> Llama:
    """The unquantised model, HF's float32 forward (numerics "fp32": no fp16 rounding anywhere)."""
    qopts = qopts or QuantOpts(numerics="fp32")
    lin = {}
    for i in range(cfg.n_layers):
        for blk, name in LINEARS:
            p = f"model.layers.{i}.{blk}.{name}"
            lin[p] = FPLinear(sd[p + ".weight"].to(device))
    return Llama(cfg, sd, lin, device, qopts)


def build_from_zoo(cfg: Config, zoo: dict, scheme: str, device, qopts=None, act_quant=True,
                   pc_zero="asum") -> Llama:
    numerics = (qopts or QuantOpts()).numerics
    """Build the fake-quant model from a zoo-format state dict (unpacks qweight, un-permutes s2)."""
    lin = {}
    for i in range(cfg.n_layers):
        for blk, name in LINEARS:
            p = f"model.layers.{i}.{blk}.{name}"
            codes = unpack_qweight(zoo[p + ".qweight"])
            s1 = zoo[p + ".s1_scales"]
            if scheme == "per-channel":
                lin[p] = W4A8Linear("per-channel", codes.to(device), s1.to(device),
                                    zoo[p + ".s1_szeros"].to(device), act_quant, pc_zero, numerics)
            else:
                w8 = kernel_dequant_g128(codes, zoo[p + ".s2_scales"], zoo[p + ".s2_zeros"])
                lin[p] = W4A8Linear("g128", w8.to(device), s1.to(device), None, act_quant,
                                    numerics=numerics)
    return Llama(cfg, zoo, lin, device, qopts)
