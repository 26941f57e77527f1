#!/usr/bin/env python3
"""The HuggingFace transformers peer of `qserve bench` (issue 9): QServe's protocol on the same GPU.

Random prompts of --input-len tokens, --output-len generated (min_new_tokens = max_new_tokens, so
no request stops early, like our --ignore-eos bench), all --batch requests at once in one
`generate` call, greedy; throughput = generated tokens / wall time including prefill. The model
is a randomly initialised LlamaForCausalLM with the shapes of --model (a Llama-3-8B config by
default), built directly on the GPU in bf16 (no download, nothing outside the machine).

  python3 tools/hf_peer_bench.py --batch 64 --input-len 1024 --output-len 512 --json-out F.json

Run on the GPU machine (it has torch + transformers); our machines without a GPU never run it.
"""
import argparse
import datetime
import json
import subprocess
import sys
import time

SHAPES = {
    # name: (hidden, intermediate, layers, heads, kv_heads, vocab, rope_theta)
    "llama-3-8b": (4096, 14336, 32, 32, 8, 128256, 500000.0),
    "llama-2-7b": (4096, 11008, 32, 32, 32, 32000, 10000.0),
    "mistral-7b": (4096, 14336, 32, 32, 8, 32000, 1000000.0),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3-8b", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds after one short warm-up")
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 1
    h, inter, layers, heads, kv, vocab, theta = SHAPES[args.model]
    cfg = LlamaConfig(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                      rope_theta=theta, max_position_embeddings=8192,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    t0 = time.time()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    model.eval()
    build_s = time.time() - t0
    gen = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(3, vocab, (args.batch, args.input_len), device="cuda", generator=gen)
    mask = torch.ones_like(ids)

    def run(out_len: int) -> float:
        torch.cuda.synchronize()
        start = time.time()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=out_len, min_new_tokens=out_len,
                                 pad_token_id=0)
        torch.cuda.synchronize()
        assert out.shape[1] == args.input_len + out_len, out.shape
        return time.time() - start

    run(4)  # warm-up: kernels, allocator
    times = [run(args.output_len) for _ in range(args.rounds)]
    best = min(times)
    tps = args.batch * args.output_len / best
    print(f"hf-transformers bf16 {args.model} batch={args.batch} {args.input_len}/{args.output_len}: "
          f"{tps:.1f} output tok/s ({best:.2f} s; model built in {build_s:.1f} s)")
    if args.json_out:
        try:
            gpu = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - the name is only a label
            gpu = "unknown"
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, check=False).stdout.strip() or "unknown"
        except OSError:
            commit = "unknown"
        import transformers
        doc = {
            "device": gpu, "commit": commit, "date": datetime.date.today().isoformat(),
            "command": " ".join(sys.argv),
            "results": [{
                "system": f"hf-transformers-{transformers.__version__}-bf16", "model": args.model,
                "precision": "bf16", "batch": args.batch, "input_len": args.input_len,
                "output_len": args.output_len, "seconds": best,
                "output_tokens_per_s": tps,
            }],
        }
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
