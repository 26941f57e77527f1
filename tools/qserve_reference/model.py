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


def quant_kv(x: torch.Tensor, bits: int, stats: KVStats | None = None, wrap: bool = True) -> torch.Tensor:
    """Quantise-dequantise one K or V tensor [..., D] per (token, head) (qserve-compat.md 6.2/6.3):
      s = fp16((mx - mn) * fl32(1/qmax)); z = fp16((-qmax * mn) * (1 / (mx - mn)))   (z not rounded)
      q = sat_u8(round(x * (1/s) + z)); KV4 keeps q & 0xF (16 wraps to 0) unless wrap=False (clamp 15)
      KV4: x^ = q * s + Z with Z = fp16(-(s * z));  KV8: x^ = s * (q - z)   (fp32, not rounded to fp16)
    """
    qmax = 15.0 if bits == 4 else 255.0
    mx = x.amax(dim=-1, keepdim=True)
    mn = x.amin(dim=-1, keepdim=True)
    rng = mx - mn
    degen = rng == 0
    rng_safe = torch.where(degen, torch.ones_like(rng), rng)
    s = (rng * torch.tensor(1.0 / qmax, dtype=torch.float32).item()).half().float()
    z = ((-qmax * mn) * (1.0 / rng_safe)).half().float()
    s_safe = torch.where(degen | (s == 0), torch.ones_like(s), s)
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
        xh = q * s + Z
    else:
        over = torch.zeros_like(sat)
        xh = s * (q - z)
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

    def __init__(self, mode, wint, s1, szeros=None, act_quant=True, pc_zero="asum"):
        self.mode = mode
        self.wint_t = wint.to(torch.float64).t().contiguous()   # integer-valued, exact in fp64
        self.s1 = s1.float()
        self.szeros = None if szeros is None else szeros.float()
        self.act_quant = act_quant
        self.pc_zero = pc_zero
        if mode == "per-channel":
            self.w_deq = (wint.float() * self.s1[:, None] - self.szeros[:, None])
        else:
            self.w_deq = wint.float() * self.s1[:, None]

    def __call__(self, x):
        if not self.act_quant:
            return x @ self.w_deq.t()
        shp = x.shape
        x2 = x.reshape(-1, shp[-1])
        xq, a_scale, a_sum = quant_act(x2)
        acc = (xq.double() @ self.wint_t).float()       # exact: |acc| < 2^31, integers
        if self.mode == "per-channel":
            if self.pc_zero == "asum":
                zsum = a_sum
            else:
                zsum = a_scale * xq.sum(dim=-1)
            y = a_scale[:, None] * (acc * self.s1[None, :]) - self.szeros[None, :] * zsum[:, None]
        else:
            y = acc * (self.s1[None, :] * a_scale[:, None])
        return y.reshape(*shp[:-1], -1)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

@dataclass
class QuantOpts:
    kv_bits: int | None = None     # None, 4 or 8
    kv4_wrap: bool = True


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
        kh = quant_kv(k, self.q.kv_bits, self.kv_stats, self.q.kv4_wrap).repeat_interleave(rep, dim=1)
        vh = quant_kv(v, self.q.kv_bits, self.kv_stats, self.q.kv4_wrap).repeat_interleave(rep, dim=1)
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
        hidden = [h]
        cos, sin = self.rope(T)
        for i in range(cfg.n_layers):
            L = lambda name: self.lin[f"model.layers.{i}.{name}"]
            x = self.rms(h, self.ln1[i])
            q = L("self_attn.q_proj")(x).view(B, T, cfg.n_heads, D).transpose(1, 2)
            k = L("self_attn.k_proj")(x).view(B, T, cfg.n_kv, D).transpose(1, 2)
            v = L("self_attn.v_proj")(x).view(B, T, cfg.n_kv, D).transpose(1, 2)
            q = q * cos + self.rot_half(q) * sin
            k = k * cos + self.rot_half(k) * sin
            a = self.attention(q, k, v).transpose(1, 2).reshape(B, T, cfg.n_heads * D)
            h = h + L("self_attn.o_proj")(a)
            x = self.rms(h, self.ln2[i])
            g = L("mlp.gate_proj")(x)
            u = L("mlp.up_proj")(x)
            h = h + L("mlp.down_proj")(torch.nn.functional.silu(g) * u)
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
    """Build the fake-quant model from a zoo-format state dict (unpacks qweight, un-permutes s2)."""
    lin = {}
    for i in range(cfg.n_layers):
        for blk, name in LINEARS:
            p = f"model.layers.{i}.{blk}.{name}"
            codes = unpack_qweight(zoo[p + ".qweight"])
            s1 = zoo[p + ".s1_scales"]
            if scheme == "per-channel":
                lin[p] = W4A8Linear("per-channel", codes.to(device), s1.to(device),
                                    zoo[p + ".s1_szeros"].to(device), act_quant, pc_zero)
            else:
                w8 = kernel_dequant_g128(codes, zoo[p + ".s2_scales"], zoo[p + ".s2_zeros"])
                lin[p] = W4A8Linear("g128", w8.to(device), s1.to(device), None, act_quant)
    return Llama(cfg, zoo, lin, device, qopts)
