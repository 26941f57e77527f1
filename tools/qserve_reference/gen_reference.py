#!/usr/bin/env python3
"""Independent reference generator for qserve.cpp: QServe W4A8 checkpoints, LMQuant-style dumps,
fake-quantised reference logits and byte-level packing test vectors.

Usage (CPU or GPU; no network, no transformers needed):
  python tools/qserve_reference/gen_reference.py \
      --model ../shared/models/doc-llama-22m --out .carry/qserve_reference_out [--device cuda]

See docs/reference-generator.md for every format choice.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from safetensors.torch import load_file, save_file  # noqa: E402

import qformats as qf  # noqa: E402
from model import LINEARS, Config, QuantOpts, build_fp, build_from_zoo  # noqa: E402

SCHEMES = ("per-channel", "g128")
ALT_SUFFIX = {"asum": "asum-zero", "quantized": "fakequant-zero"}
GENERATOR_VERSION = "3"


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------------
# Loading and norm folding
# --------------------------------------------------------------------------------------------

def load_hf(model_dir: str) -> tuple[dict, dict]:
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    files = [p for p in files if not os.path.basename(p).startswith("golden")]
    if not files:
        raise SystemExit(f"no *.safetensors in {model_dir}")
    sd = {}
    for p in files:
        sd.update(load_file(p, device="cpu"))
    for k, v in sd.items():
        if v.dtype != torch.float16:
            sd[k] = v.half()
    if cfg.get("tie_word_embeddings") and "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    return cfg, sd


def fold_norms(cfg: Config, sd: dict) -> dict:
    """qserve-compat.md 0.2 / 2.5: the W4A8 loader never loads norm weights, so fold every RMSNorm
    gain into the following linears (fp32 product, rounded once to fp16) and set the norms to 1.
    input_layernorm -> q,k,v; post_attention_layernorm -> gate,up; model.norm -> lm_head."""
    out = OrderedDict((k, v.clone()) for k, v in sd.items())

    def fold(wname, gamma):
        out[wname] = (sd[wname].float() * gamma.float()[None, :]).half()

    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        g1 = sd[p + "input_layernorm.weight"]
        g2 = sd[p + "post_attention_layernorm.weight"]
        for n in ("q_proj", "k_proj", "v_proj"):
            fold(p + f"self_attn.{n}.weight", g1)
        for n in ("gate_proj", "up_proj"):
            fold(p + f"mlp.{n}.weight", g2)
        out[p + "input_layernorm.weight"] = torch.ones_like(g1)
        out[p + "post_attention_layernorm.weight"] = torch.ones_like(g2)
    fold("lm_head.weight", sd["model.norm.weight"])
    out["model.norm.weight"] = torch.ones_like(sd["model.norm.weight"])
    return out


def hf_order(cfg: Config) -> list[str]:
    """Tensor order of HF LlamaForCausalLM.state_dict() (linears named '<prefix>.weight')."""
    names = ["model.embed_tokens.weight"]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        names += [p + f"{b}.{n}.weight" for b, n in LINEARS]
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    names += ["model.norm.weight", "lm_head.weight"]
    return names


# --------------------------------------------------------------------------------------------
# Checkpoint writers
# --------------------------------------------------------------------------------------------

def quantize_model(cfg: Config, sd: dict, scheme: str):
    """Returns (zoo_sd, lmq_model_sd, lmq_scale_sd, codes) with HF/QServe names."""
    zoo, model_pt, scale_pt, codes = OrderedDict(), OrderedDict(), OrderedDict(), {}
    for name in hf_order(cfg):
        w = sd[name]
        prefix = name[: -len(".weight")]
        if not prefix.endswith("_proj"):
            zoo[name] = w.clone().contiguous()
            model_pt[name] = w.clone().contiguous()
            continue
        if scheme == "per-channel":
            r = qf.quantize_per_channel(w)
            zoo[prefix + ".qweight"] = qf.pack_qweight(r["codes"])
            zoo[prefix + ".s1_scales"] = r["s1_scales"].contiguous()
            zoo[prefix + ".s1_szeros"] = r["s1_szeros"].contiguous()
            n = w.shape[0]
            scale_pt[name + ".scale.0"] = r["s1_scales"].reshape(n, 1, 1, 1).clone()
            scale_pt[name + ".zero"] = r["zeros"].half().reshape(n, 1, 1, 1).clone()
        else:
            r = qf.quantize_g128(w)
            st = qf.g128_stored_tensors(r)
            zoo[prefix + ".qweight"] = qf.pack_qweight(r["codes"])
            zoo[prefix + ".s1_scales"] = r["s1_scales"].contiguous()
            zoo[prefix + ".s2_scales"] = st["s2_scales"]
            zoo[prefix + ".s2_zeros"] = st["s2_zeros"]
            n, k = w.shape
            g = k // qf.GROUP_SIZE
            scale_pt[name + ".scale.0"] = r["s1_scales"].reshape(n, 1, 1, 1).clone()
            scale_pt[name + ".scale.1"] = r["s2"].half().reshape(n, 1, g, 1).clone()
            scale_pt[name + ".zero"] = r["zeros"].half().reshape(n, 1, g, 1).clone()
        model_pt[name] = r["fake"].contiguous()
        codes[prefix] = r
    return zoo, model_pt, scale_pt, codes


def write_config(model_dir: str, dst: str):
    """Copy config.json, adding a top-level rope_theta (zoo-style, what QServe reads; qserve-compat
    2.4) when only transformers-5 `rope_parameters` is present; copy tokenizer / generation files."""
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    if "rope_theta" not in cfg and isinstance(cfg.get("rope_parameters"), dict) \
            and "rope_theta" in cfg["rope_parameters"]:
        cfg["rope_theta"] = cfg["rope_parameters"]["rope_theta"]
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    skip = {"config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"}
    for p in sorted(glob.glob(os.path.join(model_dir, "*.json")) + glob.glob(os.path.join(model_dir, "tokenizer.model"))):
        b = os.path.basename(p)
        if b in skip or b.startswith("golden"):
            continue
        shutil.copyfile(p, os.path.join(dst, b))


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.float16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def sha256_tensor(t: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


DTYPE_NAMES = {torch.float16: "F16", torch.float32: "F32", torch.int8: "I8", torch.uint8: "U8",
               torch.int16: "I16", torch.int32: "I32"}


# --------------------------------------------------------------------------------------------
# Verification of the written checkpoints
# --------------------------------------------------------------------------------------------

def verify_checkpoints(cfg: Config, scheme: str, zoo_path: str, lmq_dir: str, codes: dict, sd: dict):
    zoo = torch.load(zoo_path, map_location="cpu", weights_only=True)
    mpt = torch.load(os.path.join(lmq_dir, "model.pt"), map_location="cpu", weights_only=True)
    spt = torch.load(os.path.join(lmq_dir, "scale.pt"), map_location="cpu", weights_only=True)
    n_checked = 0
    for prefix, r in codes.items():
        qw = zoo[prefix + ".qweight"]
        n, kh = qw.shape
        assert qw.dtype == torch.int8 and kh * 2 == r["codes"].shape[1]
        # 1. unpacking (inverse closed form) recovers the codes; closed-form packing equals converter form
        assert torch.equal(qf.unpack_qweight(qw), r["codes"]), prefix
        assert torch.equal(qf.pack_qweight_closed_form(r["codes"]), qw), prefix
        # 2. LMQuant dump -> QServe converter emulation recovers identical codes and bytes
        w = mpt[prefix + ".weight"]
        s0 = spt[prefix + ".weight.scale.0"]
        zero = spt[prefix + ".weight.zero"]
        if scheme == "per-channel":
            q, z = qf.codes_from_lmquant_per_channel(w, s0, zero)
            assert torch.equal(q, r["codes"]), prefix
            assert torch.equal((z.float() * s0.reshape(-1).float()).half(), zoo[prefix + ".s1_szeros"]), prefix
        else:
            q, s2, z = qf.codes_from_lmquant_g128(w, s0, spt[prefix + ".weight.scale.1"], zero)
            assert torch.equal(q, r["codes"]), prefix
            st = qf.g128_stored_tensors({"s2": s2, "zeros": z})
            assert torch.equal(st["s2_scales"], zoo[prefix + ".s2_scales"]), prefix
            assert torch.equal(st["s2_zeros"], zoo[prefix + ".s2_zeros"]), prefix
            # 3. kernel-style byte dequant equals (Q - z) * s2
            w8 = qf.kernel_dequant_g128(r["codes"], zoo[prefix + ".s2_scales"], zoo[prefix + ".s2_zeros"])
            assert torch.equal(w8, r["w8"]), prefix
        assert torch.equal(qf.pack_qweight(q), qw), prefix
        n_checked += 1
    # non-quantised tensors are bit-identical to the (folded) fp16 source
    for name in hf_order(cfg):
        if not name[: -len(".weight")].endswith("_proj"):
            assert torch.equal(zoo[name], sd[name]) and torch.equal(mpt[name], sd[name]), name
    return n_checked


# --------------------------------------------------------------------------------------------
# Packing test vectors
# --------------------------------------------------------------------------------------------

def hexrows(t: torch.Tensor) -> list[str]:
    return [tensor_bytes(row).hex() for row in t]


def codes_hex(c: torch.Tensor) -> list[str]:
    return ["".join("%x" % v for v in row.tolist()) for row in c]


def make_vectors() -> list[dict]:
    specs = [
        # name, N, K, seed, kind
        ("A_64x128_edge_rows", 64, 128, 1234, "edge"),
        ("B_32x256_outliers", 32, 256, 5678, "outliers"),
    ]
    out = []
    for name, n, k, seed, kind in specs:
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(n, k, generator=gen) * 0.02
        note = ""
        if kind == "edge":
            w[0] = 0.0                                   # all-zero row: scales become 1
            w[1] = 0.01                                  # constant row: zero range
            w[2] = w[2].abs() + 0.005                    # all-positive row: zero point clamps to 0
            w[3, :64] = w[3, :64].abs()                  # g128: group 0 all-positive
            note = ("rows 0-3 are edge cases (all-zero, constant, all-positive, one all-positive half); "
                    "rows 4.. are N(0, 0.02)")
        else:
            cols = torch.randperm(k, generator=gen)[:4]
            w[:, cols] *= 20.0                           # outlier input channels
            w[5, 200] = 0.9                              # single large outlier in group 1
            note = "N(0, 0.02) with 4 outlier input columns x20 and one 0.9 entry at [5, 200]"
        w = w.half()
        pc = qf.quantize_per_channel(w)
        g = qf.quantize_g128(w)
        gst = qf.g128_stored_tensors(g)
        pcq = qf.pack_qweight(pc["codes"])
        gq = qf.pack_qweight(g["codes"])
        for r, p in ((pc, pcq), (g, gq)):
            assert torch.equal(qf.pack_qweight_closed_form(r["codes"]), p)
            assert torch.equal(qf.unpack_qweight(p), r["codes"])
        assert torch.equal(qf.kernel_dequant_g128(g["codes"], gst["s2_scales"], gst["s2_zeros"]), g["w8"])
        out.append({
            "name": name, "N": n, "K": k, "seed": seed, "note": note,
            "weight_fp16_hex_rows": hexrows(w),
            "per_channel": {
                "codes_hex_rows": codes_hex(pc["codes"]),
                "zeros": pc["zeros"].tolist(),
                "s1_scales": [float(x) for x in pc["s1_scales"].float()],
                "s1_scales_hex": tensor_bytes(pc["s1_scales"]).hex(),
                "s1_szeros": [float(x) for x in pc["s1_szeros"].float()],
                "s1_szeros_hex": tensor_bytes(pc["s1_szeros"]).hex(),
                "qweight_hex": tensor_bytes(pcq).hex(),
                "qweight_sha256": sha256_tensor(pcq),
            },
            "g128": {
                "codes_hex_rows": codes_hex(g["codes"]),
                "s1_scales": [float(x) for x in g["s1_scales"].float()],
                "s1_scales_hex": tensor_bytes(g["s1_scales"]).hex(),
                "s2_logical_NxG": g["s2"].tolist(),
                "zeros_logical_NxG": g["zeros"].tolist(),
                "s2_scales_hex": tensor_bytes(gst["s2_scales"]).hex(),
                "s2_zeros_hex": tensor_bytes(gst["s2_zeros"]).hex(),
                "qweight_hex": tensor_bytes(gq).hex(),
                "qweight_sha256": sha256_tensor(gq),
            },
        })
    return out


VECTOR_CONVENTIONS = {
    "hex": "raw little-endian bytes of the tensor in C order, lower-case hex; *_hex_rows: one string per row",
    "codes_hex_rows": "one hex digit per 4-bit code Q[n][k] (0..f), row n, k = 0..K-1",
    "qweight": "int8 [N, K/2]; byte L = 16K*a + 512e + 64d + 16g + 8f + 4c + h for n = 32a+16b+8c+d, "
               "k = 32e+16f+4g+h; low nibble b=0, high nibble b=1 (qserve-compat.md 3.1)",
    "per_channel": "s = fp16((max-min)/15) (0 -> 1); z = clamp(round(-min/s),0,15); "
                   "Q = clamp(round(w/s)+z,0,15); s1_szeros = fp16(z*s); fp32 arithmetic, round half to even",
    "g128": "s1 = fp16(max|w|/119) (0 -> 1); X = clamp(w/s1,-119,119); per 128 inputs: "
            "s2 = round((maxX-minX)/15) (0 -> 1); z = clamp(round(-minX/s2),0,15); Q = clamp(round(X/s2)+z,0,15); "
            "s2_scales = int8(s2), s2_zeros = int8 wrap(-z*s2), both [K/128, N] with stored column 32a+4d+j = "
            "channel 32a+8j+d (qserve-compat.md 3.3); s2_logical_NxG / zeros_logical_NxG are un-permuted",
}


# --------------------------------------------------------------------------------------------
# Token sequences and reference logits
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def build_sequences(fp_model, golden: dict, seq_len: int, device) -> tuple[torch.Tensor, list, dict]:
    """ids = prompt input_ids + greedy_32 (golden), truncated to seq_len or continued greedily with
    our float32 FP model (HF fp16 weights, no quantisation)."""
    seqs, plen, info = [], [], {"greedy_32_reproduced": []}
    for p in golden["prompts"]:
        ids = list(p["input_ids"]) + list(p["greedy_32"])
        # sanity: our FP model reproduces golden greedy_32
        cur = list(p["input_ids"])
        for _ in range(len(p["greedy_32"])):
            lg = fp_model.forward(torch.tensor([cur], device=device))[0, -1]
            cur.append(int(lg.argmax()))
        info["greedy_32_reproduced"].append(cur[len(p["input_ids"]):] == list(p["greedy_32"]))
        ids = ids[:seq_len]
        while len(ids) < seq_len:
            lg = fp_model.forward(torch.tensor([ids], device=device))[0, -1]
            ids.append(int(lg.argmax()))
        seqs.append(ids)
        plen.append(len(p["input_ids"]))
    return torch.tensor(seqs, dtype=torch.int64), plen, info


def compare(lq: torch.Tensor, lref: torch.Tensor) -> dict:
    lq, lref = lq.float().cpu(), lref.float().cpu()
    rel = float((lq - lref).norm() / lref.norm())
    per_pos = ((lq - lref).norm(dim=-1) / lref.norm(dim=-1))
    top1 = float((lq.argmax(-1) == lref.argmax(-1)).float().mean())
    return {"rel_l2": rel, "rel_l2_per_position_max": float(per_pos.max()),
            "rel_l2_per_position_mean": float(per_pos.mean()), "top1_agreement": top1,
            "positions": int(per_pos.numel())}


def meta_common(args, extra: dict) -> dict:
    m = {
        "generator": "tools/qserve_reference/gen_reference.py v" + GENERATOR_VERSION,
        "source_model": os.path.basename(os.path.normpath(args.model)),
        "compute": "float32 arithmetic (fp16 weights / dequantised integer codes); with numerics qserve every value "
                   "QServe keeps in fp16 is rounded to fp16 where QServe rounds it; logits stored as float16",
        "norm": "true RMSNorm x*rsqrt(mean(x^2)+eps)*gamma (HF semantics), NOT QServe's mean-subtracting "
                "LayerNorm of qserve-compat.md 5.1",
        "norm_folding": "off" if args.no_fold_norms else
                        "norm gains folded into q/k/v, gate/up, lm_head (fp16); all norm weights 1",
        "rope": "NeoX rotate-half, exact cos/sin in fp32 (HF)",
        "input_ids": "golden.json prompts[i].input_ids + greedy_32, continued greedily with the float32 FP "
                     "model (unquantised HF weights) up to seq_len",
    }
    m.update(extra)
    return {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in m.items()}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF Llama folder (config.json + *.safetensors)")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--golden", help="golden.json with prompts (default: MODEL/golden.json)")
    ap.add_argument("--golden-logits", help="golden_logits.safetensors (default: MODEL/golden_logits.safetensors)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 ... (forward passes only)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--kv-bits", default="4,8", help="comma list of KV bit widths for reference logits")
    ap.add_argument("--numerics", choices=["qserve", "fp32"], default="qserve",
                    help="qserve (default): every fp16 rounding point of QServe (model.py docstring); "
                         "fp32: generator version 1 (fp32 between kernels; not matchable, see docs)")
    ap.add_argument("--attention", choices=["qserve-kernel", "fp32"], default="qserve-kernel",
                    help="with --numerics qserve: attention as QServe's decode kernel computes it (fp16 partial "
                         "dots and probabilities, fp16 halving tree; head_dim 128 only) or fp32 attention with "
                         "an fp16 output")
    ap.add_argument("--pc-zero", choices=["asum", "quantized"], default="asum",
                    help="per-channel zero term: sum of un-quantised activations (QServe kernel) or of the "
                         "dequantised int8 activations (pure fake quant)")
    ap.add_argument("--no-alt-pc-zero", action="store_true",
                    help="do not write the extra per-channel KV4 file with the other --pc-zero semantics")
    ap.add_argument("--no-kv4-wrap", action="store_true",
                    help="clamp KV4 codes to 15 instead of QServe's wrap of 16 to 0")
    ap.add_argument("--no-fold-norms", action="store_true",
                    help="keep norm weights (not loadable by QServe's W4A8 loader, which ignores norms)")
    ap.add_argument("--skip-ablations", action="store_true", help="skip W4-only / W4A8-only sanity forwards")
    args = ap.parse_args()

    t0 = time.time()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    device = torch.device(args.device)
    golden_path = args.golden or os.path.join(args.model, "golden.json")
    glog_path = args.golden_logits or os.path.join(args.model, "golden_logits.safetensors")
    os.makedirs(args.out, exist_ok=True)

    cfg_json, sd_hf = load_hf(args.model)
    cfg = Config.from_json(cfg_json)
    assert cfg.head_dim * cfg.n_heads == cfg.hidden, "QServe assumes head_dim = hidden / heads (2.3)"
    sd = sd_hf if args.no_fold_norms else fold_norms(cfg, sd_hf)
    manifest = {"generator_version": GENERATOR_VERSION, "torch": torch.__version__,
                "command": " ".join(sys.argv), "device": str(device), "checks": {}, "sanity": {}}
    sha = {}

    # ---- (a) zoo checkpoints and (b) LMQuant dumps ------------------------------------------
    zoo_paths = {}
    for scheme in SCHEMES:
        zoo, mpt, spt, codes = quantize_model(cfg, sd, scheme)
        zdir = os.path.join(args.out, f"w4a8-{scheme}")
        ldir = os.path.join(args.out, f"lmquant-{scheme}")
        write_config(args.model, zdir)
        os.makedirs(ldir, exist_ok=True)
        zoo_paths[scheme] = os.path.join(zdir, "pytorch_model.bin")
        torch.save(zoo, zoo_paths[scheme])
        torch.save(mpt, os.path.join(ldir, "model.pt"))
        torch.save(spt, os.path.join(ldir, "scale.pt"))
        n = verify_checkpoints(cfg, scheme, zoo_paths[scheme], ldir, codes, sd)
        manifest["checks"][f"{scheme}_linears_verified"] = n
        sha[f"w4a8-{scheme}/pytorch_model.bin"] = OrderedDict(
            (k, {"dtype": DTYPE_NAMES[v.dtype], "shape": list(v.shape), "sha256": sha256_tensor(v)})
            for k, v in zoo.items())
        log(f"[{time.time()-t0:6.1f}s] {scheme}: wrote zoo + lmquant dump, {n} linears verified "
            "(unpack == codes, closed-form pack == converter pack, LMQuant -> codes -> bytes identical)")

    # ---- (d) packing vectors -------------------------------------------------------------------
    vec = {"format_version": 1, "generator": "tools/qserve_reference/gen_reference.py v" + GENERATOR_VERSION,
           "conventions": VECTOR_CONVENTIONS, "vectors": make_vectors(), "checkpoint_sha256": sha,
           "checkpoint_sha256_note": "SHA-256 of each tensor's raw little-endian bytes (C order) in the "
                                     "generated pytorch_model.bin files; independent of torch's zip/pickle framing"}
    vpath = os.path.join(args.out, "packing_vectors.json")
    with open(vpath, "w") as f:
        json.dump(vec, f, separators=(",", ":"))
    log(f"[{time.time()-t0:6.1f}s] packing_vectors.json: {os.path.getsize(vpath)} bytes")

    # ---- (c) reference logits ------------------------------------------------------------------
    with torch.no_grad():
        fp = build_fp(cfg, sd_hf, device)
        gl = load_file(glog_path)
        lg = fp.forward(gl["input_ids"].to(torch.int64)[None].to(device))[0]
        manifest["sanity"]["fp_vs_golden_logits"] = compare(lg, gl["logits"])
        manifest["sanity"]["fp_vs_golden_max_abs"] = float((lg.cpu() - gl["logits"]).abs().max())
        if not args.no_fold_norms:
            fpf = build_fp(cfg, sd, device)
            manifest["sanity"]["folded_fp_vs_golden_logits"] = compare(
                fpf.forward(gl["input_ids"].to(torch.int64)[None].to(device))[0], gl["logits"])
        log(f"[{time.time()-t0:6.1f}s] FP forward vs golden: {manifest['sanity']['fp_vs_golden_logits']}")

        with open(golden_path) as f:
            golden = json.load(f)
        ids, plen, info = build_sequences(fp, golden, args.seq_len, device)
        manifest["sanity"].update(info)
        log(f"[{time.time()-t0:6.1f}s] sequences built; greedy_32 reproduced by our FP model: "
            f"{info['greedy_32_reproduced']}")
        fp_logits, fp_hidden = fp.forward(ids.to(device), return_hidden=True)
        fp_logits, fp_hidden = fp_logits.cpu(), fp_hidden.cpu()
        ids32 = ids.to(torch.int32)
        base = {"input_ids": ids32, "prompt_lengths": torch.tensor(plen, dtype=torch.int32)}
        save_file({**base, "logits": fp_logits.half(), "hidden_states": fp_hidden.half()},
                  os.path.join(args.out, "reference_logits_fp.safetensors"),
                  metadata=meta_common(args, {"scheme": "fp (no quantisation, HF weights, norms not folded)"}))

        # golden prompt 0 positions (prompt "The kernel scheduler")
        g_ids = gl["input_ids"].to(torch.int64)
        g_T = g_ids.numel()
        assert torch.equal(ids[0, :g_T], g_ids), "golden_logits prompt != golden.json prompt 0"

        kv_list = [int(x) for x in args.kv_bits.split(",") if x]
        for scheme in SCHEMES:
            zoo = torch.load(zoo_paths[scheme], map_location="cpu", weights_only=True)
            if not args.skip_ablations:
                for tag, aq, kvb in (("w4a16", False, None), ("w4a8", True, None)):
                    m = build_from_zoo(cfg, zoo, scheme, device, QuantOpts(kv_bits=kvb, numerics=args.numerics,
                                                                         attention=args.attention), act_quant=aq,
                                       pc_zero=args.pc_zero)
                    manifest["sanity"][f"{scheme}_{tag}_vs_fp"] = compare(m.forward(ids.to(device)), fp_logits)
            runs = [(kvb, args.pc_zero, "") for kvb in kv_list]
            if scheme == "per-channel" and 4 in kv_list and not args.no_alt_pc_zero:
                alt = "quantized" if args.pc_zero == "asum" else "asum"
                runs.append((4, alt, "_" + ALT_SUFFIX[alt]))
            for kvb, pc_zero, suffix in runs:
                qo = QuantOpts(kv_bits=kvb, kv4_wrap=not args.no_kv4_wrap, numerics=args.numerics,
                               attention=args.attention)
                m = build_from_zoo(cfg, zoo, scheme, device, qo, act_quant=True, pc_zero=pc_zero)
                lq, hq = m.forward(ids.to(device), return_hidden=True)
                lq, hq = lq.cpu(), hq.cpu()
                stats = m.kv_stats.as_dict()
                # chaotic sensitivity: same model, embeddings perturbed by a relative 1e-6
                floor = compare(m.forward(ids.to(device), embed_noise=1e-6, noise_seed=1).cpu(), lq)
                tag = f"w4a8kv{kvb}{suffix}"
                s_all = compare(lq, fp_logits)
                s_gold = compare(lq[0, :g_T], gl["logits"])
                manifest["sanity"][f"{scheme}_{tag}_vs_fp"] = s_all
                manifest["sanity"][f"{scheme}_{tag}_vs_golden_prompt"] = s_gold
                manifest["sanity"][f"{scheme}_{tag}_kv_stats"] = stats
                manifest["sanity"][f"{scheme}_{tag}_noise_floor"] = floor
                meta = meta_common(args, {
                    "scheme": f"W4A8KV{kvb} {scheme}" + (" (g128 progressive, protective range 119)"
                                                         if scheme == "g128" else " (per-channel zint4)"),
                    "weights": f"integer codes unpacked from w4a8-{scheme}/pytorch_model.bin",
                    "gemm": ("acc = sum xq*Q exact; y = a_scale*(acc*s1) - s1_szeros*a_sum, a_sum = sum of "
                             + ("un-quantised activations (QServe kernel)" if pc_zero == "asum" else
                                "dequantised int8 activations")) if scheme == "per-channel" else
                            "acc = sum xq*w8 exact, w8 = int8((Q*s2 + s2_zeros) mod 256); y = acc*(s1*a_scale)",
                    "a8": "per-token symmetric int8 on inputs of q/k/v, o, gate/up, down: xq = clamp(round(x*(127*"
                          "(1/amax))),-128,127), a_scale = fp16(amax*fl32(1/127)); lm_head not quantised",
                    "kv": f"KV{kvb} asymmetric per (token, KV head) after RoPE, s = fp16(range/{2**kvb-1}), "
                          f"z = fp16(-{2**kvb-1}*min/range) (real), q = sat_u8(round(x/s+z))"
                          + ((" & 0xF (16 wraps to 0)" if not args.no_kv4_wrap else " clamped to 15")
                             if kvb == 4 else "")
                          + "; position t attends to dequantised K/V of positions < t and to its own "
                            "un-quantised K/V; queries not quantised",
                    "numerics": ("qserve: every fp16 rounding point of QServe: embedding rows, linear outputs"
                                 " (GEMM epilogue, per-channel fma), fused true-RMSNorm + quant (amax of the fp16"
                                 " row, block-reduction order, fp16 a_sum of fp16 thread sums), standalone quant"
                                 " a_sum = fp16(block sum), SiLU and SiLU*up, q/k after RoPE, K/V into the KV"
                                 " quantiser and dequantised, own K/V, attention output, residual stream, final"
                                 " RMSNorm, logits; attention " + (
                                     "as QServe's decode kernel (fp16 partial q.k dots, fp16 probabilities,"
                                     " fp16 halving tree of the P*V partials)" if args.attention == "qserve-kernel"
                                     else "fp32 with an fp16 output"))
                                if args.numerics == "qserve" else "fp32 between kernels (generator version 1)",
                    "kv_stats": stats,
                    "sanity_vs_fp": s_all,
                    "noise_floor": floor,
                    "noise_floor_note": "logits of this same reference with the embeddings multiplied by "
                                        "(1 + 1e-6 N(0,1)) (after their fp16 rounding, so the first norm sees the "
                                        "perturbation) compared to these logits: A8 rounding flips cascade, so an "
                                        "implementation whose float rounding differs by about an ulp at one point "
                                        "differs about this much",
                    "hidden_states": "residual stream [B, L+1, T, H] after the embedding and after each layer "
                                     "(float16), for locating where an implementation diverges",
                })
                fname = f"reference_logits_{scheme}_{tag}.safetensors"
                save_file({**base, "logits": lq.half(), "hidden_states": hq.half()},
                          os.path.join(args.out, fname), metadata=meta)
                log(f"[{time.time()-t0:6.1f}s] {fname}: vs FP rel_l2 {s_all['rel_l2']:.4f} top1 "
                    f"{s_all['top1_agreement']:.4f}; vs golden prompt rel_l2 {s_gold['rel_l2']:.4f} top1 "
                    f"{s_gold['top1_agreement']:.2f}; noise floor rel_l2 {floor['rel_l2']:.4f} top1 "
                    f"{floor['top1_agreement']:.4f}; kv {stats}")

    # ---- manifest ------------------------------------------------------------------------------
    sizes = {}
    for root, _, files in os.walk(args.out):
        for fn in files:
            p = os.path.join(root, fn)
            sizes[os.path.relpath(p, args.out)] = os.path.getsize(p)
    manifest["files"] = dict(sorted(sizes.items()))
    manifest["total_bytes"] = sum(sizes.values())
    manifest["elapsed_s"] = round(time.time() - t0, 1)
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    log(json.dumps(manifest["sanity"], indent=1))
    log(f"done in {manifest['elapsed_s']} s; {manifest['total_bytes']} bytes in {args.out}")


if __name__ == "__main__":
    main()
