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
* Rounding points (QuantOpts.numerics == "qserve", the default since generator version 2): QServe's
  activations are fp16 between kernels, and the int8 codes depend on those roundings. Every linear
  output is rounded to fp16 (the GEMM epilogue, 4.1/4.2); the fused norm + quant takes amax from the
  fp16-rounded normalised row and quantises the fp32 one (5.1), its sums use QServe's block-reduction
  order (5.5) and the per-channel a_sum is fp16 (fp16 per-thread running sums in the fused norm, 5.1;
  fp32 partials in the standalone quant, 5.2); SiLU and SiLU*up are rounded to fp16 (5.3); K/V are
  rounded to fp16 before the KV quantiser and dequantise to fp16 (6.2/6.3). With numerics == "fp32"
  (generator version 1) all of that is fp32: the A8 codes then differ from QServe's at ~1e-3 of the
  elements, and because A8 rounding flips cascade, such a reference cannot be matched by any QServe-exact
  implementation (measured: position-0 logits 0.040 rel L2 apart, 0.0002 with "qserve").
  The residual stream, the attention output and the current token's own K/V stay fp32 unless
  QuantOpts.fp16_stream (QServe keeps them fp16; our CPU engine, src/model/llama_forward.cpp, keeps
  them fp32, so the default matches the engine).
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
    """One RN rounding to fp16, kept as fp32."""
    return x.half().float()


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
    rho = 1.0 / torch.sqrt(s2 / H + eps)
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
        xh = (q.double() * s.double() + Z.double()).half().float() if fp16_io else q * s + Z
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
    numerics: str = "qserve"       # "qserve": QServe's fp16 rounding points; "fp32": version 1
    fp16_stream: bool = False      # also round the residual, attention output, own K/V to fp16


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
        if self.q.numerics == "qserve":      # 5.3: fp16 silu, fp16 product
            return fp16r(fp16r(torch.nn.functional.silu(g)) * u)
        return torch.nn.functional.silu(g) * u

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
        """q [B,Hq,T,D], k/v [B,Hkv,T,D] post-RoPE fp32."""
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
        if self.q.fp16_stream:
            kr, vr = fp16r(kr), fp16r(vr)
        eye = torch.eye(T, dtype=torch.bool, device=self.dev)
        sc = (q @ kh.transpose(-1, -2)) * scale             # past keys: dequantised
        own = (q * kr).sum(-1) * scale                      # own key: un-quantised
        sc = torch.where(eye, own[..., :, None].expand_as(sc), sc)
        sc = sc.masked_fill(~causal, float("-inf"))
        p = torch.softmax(sc, dim=-1)
        p_own = p.diagonal(dim1=-2, dim2=-1)
        p_past = p.masked_fill(eye, 0.0)
        return p_past @ vh + p_own[..., None] * vr

    def forward(self, ids: torch.Tensor, return_hidden: bool = False, embed_noise: float = 0.0,
                noise_seed: int = 0):
        """ids int64 [B, T] -> logits fp32 [B, T, V] (and, with return_hidden, the residual stream
        [B, L+1, T, H]: after the embedding and after every layer). embed_noise > 0 multiplies the
        embedding rows by (1 + embed_noise * N(0,1)) (seeded) to measure the chaotic sensitivity."""
        cfg = self.cfg
        B, T = ids.shape
        D = cfg.head_dim
        h = self.embed[ids.to(self.dev)]
        if embed_noise:
            gen = torch.Generator(device="cpu").manual_seed(noise_seed)
            h = h * (1 + embed_noise * torch.randn(h.shape, generator=gen).to(self.dev))
        if self.q.fp16_stream:
            h = fp16r(h)
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
            q = q * cos + self.rot_half(q) * sin
            k = k * cos + self.rot_half(k) * sin
            a = self.attention(q, k, v).transpose(1, 2).reshape(B, T, cfg.n_heads * D)
            if self.q.fp16_stream:
                a = fp16r(a)
            h = h + L("self_attn.o_proj")(a)
            if self.q.fp16_stream:
                h = fp16r(h)
            g, u = self.norm_linears(h, self.ln2[i], [pfx + "mlp.gate_proj", pfx + "mlp.up_proj"])
            h = h + L("mlp.down_proj")(self.silu_mul(g, u))
            if self.q.fp16_stream:
                h = fp16r(h)
            hidden.append(h)
        logits = self.rms(h, self.norm) @ self.lm_head.t()
        if return_hidden:
            return logits, torch.stack(hidden, dim=1)
        return logits


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------

def build_fp(cfg: Config, sd: dict, device, qopts=None) -> Llama:
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
