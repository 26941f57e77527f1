#!/usr/bin/env python3
"""Checks a checkpoint written by qserve's torch writer (src/formats/torch_writer.h) with real torch.

Usage: torch_writer_check.py CHECKPOINT EXPECTED.json

EXPECTED.json maps each tensor name, in state-dict order, to {"dtype": safetensors dtype name,
"shape": [...], "hex": its little-endian row-major bytes}. The checkpoint must load with
torch.load(weights_only=True) (the restricted unpickler that QServe-era and current torch use for
untrusted files) into an OrderedDict with exactly those entries. Exit status 0 when it does.
tests/formats/torch_writer_test.cpp runs this when a Python with torch is available; CI does not
need torch.
"""

import collections
import json
import sys

import torch

DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}


def main():
    path, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path, encoding="utf-8") as f:
        expected = json.load(f, object_pairs_hook=collections.OrderedDict)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    errors = []
    if not isinstance(sd, collections.OrderedDict):
        errors.append(f"loaded a {type(sd).__name__}, expected an OrderedDict")
    if list(sd.keys()) != list(expected.keys()):
        errors.append(f"keys {list(sd.keys())} != {list(expected.keys())}")
    for name, want in expected.items():
        t = sd.get(name)
        if not isinstance(t, torch.Tensor):
            errors.append(f"{name}: not a tensor")
            continue
        if t.dtype != DTYPES[want["dtype"]]:
            errors.append(f"{name}: dtype {t.dtype}, expected {want['dtype']}")
        if list(t.shape) != want["shape"]:
            errors.append(f"{name}: shape {list(t.shape)}, expected {want['shape']}")
        if not t.is_contiguous():
            errors.append(f"{name}: not contiguous (stride {t.stride()})")
        got = bytes(t.reshape(-1).view(torch.uint8).tolist()).hex()
        if got != want["hex"]:
            errors.append(f"{name}: bytes differ")
    for e in errors:
        print(f"{path}: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
