#!/usr/bin/env python3
"""Generates the PyTorch checkpoint fixtures of tests/data/torch/ and expected.json.

Valid fixtures are written by real torch.save, so the C++ reader is tested against torch itself:

  dtypes.pt        protocol 2 (torch's default): F16/F32/BF16/I8/U8/I16/I32/I64/BOOL tensors, a
                   0-dim tensor, an empty tensor, three tensors sharing one storage (non-zero
                   storage_offset), a transposed (non-contiguous) tensor, an nn.Parameter,
                   scalars (int, big int, negative int, float, str, bool, None), bytes, a nested
                   dict, a list of tensors and a key containing dots.
  proto4.pt        the same content with pickle_protocol=4 (FRAME, MEMOIZE, STACK_GLOBAL, ...).
  proto5.pt        the same content with pickle_protocol=5.
  state_dict.bin   model.state_dict() of a tiny Llama-shaped fp16 module with QServe-style W4A8
                   buffers: an OrderedDict with _metadata (BUILD), as QServe's pytorch_model.bin.
  wrapped.pt       {"state_dict": OrderedDict, "epoch": 3, "meta": {...}}: one nesting level.
  unsupported.pt   a float16 tensor beside a float64 one (DoubleStorage) and a uint16 one
                   (_rebuild_tensor_v3 + UntypedStorage): the reader must list, not read, those.
  zip64.pt         dtypes.pt's records re-packed with ZIP64 records everywhere (central directory
                   fields saturated, ZIP64 extra fields, ZIP64 end of central directory), laid out
                   like torch's writer (64-byte aligned data, data descriptors); torch.load reads it.

Hostile or unsupported fixtures (the reader must refuse them with a clear error):

  hostile_os_system.pt  data.pkl calls os.system (written by hand; never unpickled by anyone).
  truncated.pt          the first 60% of dtypes.pt.
  corrupt_cd.pt         dtypes.pt with one central directory signature overwritten.
  missing_storage.pt    a tensor whose storage record (data/1) is not in the archive.
  out_of_bounds.pt      a tensor whose size/stride reach past the end of its storage.
  compressed.pt         dtypes.pt's records deflate-compressed (torch never compresses).
  legacy.pt             torch.save(..., _use_new_zipfile_serialization=False) (torch < 1.6); the
                        only fixture that is not byte-identical when regenerated (the legacy format
                        keys storages by object id).
  torchscript.pt        torch.jit.save of a tiny module.

expected.json lists, per valid fixture, every readable tensor (dtype, shape, CRC-32 of its
contiguous little-endian bytes, first values), the scalars and the unsupported tensors; and per
hostile fixture the substrings its error message must contain.

Usage (CPU only; needs torch): python3 tools/gen_torch_fixtures.py [--out tests/data/torch]
"""

import argparse
import collections
import io
import json
import os
import pickle
import struct
import sys
import zipfile
import zlib

try:
    import torch
except ImportError:
    sys.exit("gen_torch_fixtures.py needs torch (e.g. /opt/torchenv/bin/python)")


# ---------------------------------------------------------------------------------------------
# Content
# ---------------------------------------------------------------------------------------------

def dtype_content():
    g = torch.Generator().manual_seed(1234)
    base = torch.arange(16, dtype=torch.float32) * 0.25
    t = torch.arange(6, dtype=torch.int32).view(2, 3) * 7 - 5
    return {
        "f16": torch.randn(3, 5, generator=g).half(),
        "f32": torch.randn(4, 3, generator=g),
        "bf16": torch.randn(2, 8, generator=g).bfloat16(),
        "i8": torch.randint(-128, 128, (4, 4), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 256, (3, 7), generator=g, dtype=torch.uint8),
        "i16": torch.randint(-30000, 30000, (5,), generator=g, dtype=torch.int16),
        "i32": torch.randint(-2**31, 2**31 - 1, (2, 3), generator=g, dtype=torch.int32),
        "i64": torch.tensor([-2**62, -1, 0, 1, 2**62 + 5], dtype=torch.int64),
        "bool": torch.tensor([True, False, True, True, False, False]),
        "scalar0d": torch.tensor(3.25),
        "empty": torch.empty(0, 3, dtype=torch.float16),
        # Three views of one storage: torch.save writes it once; two have a storage_offset.
        "base": base,
        "slice_a": base[2:6],
        "slice_b": base.view(4, 4)[2],
        "transposed": t.t(),
        "param": torch.nn.Parameter(torch.randn(3, generator=g)),
        "step": 7,
        "big": 2**40 + 3,
        "neg": -5,
        "lr": 0.5,
        "tag": "qserve",
        "flag": True,
        "nothing": None,
        "blob": b"\x00\xffbytes",
        "nested": {"inner": torch.randn(2, generator=g).half(), "count": 3},
        "scales": [torch.ones(2, dtype=torch.float16), torch.full((2,), 2.0, dtype=torch.float16)],
        "lmq.scale.0": torch.tensor([0.125, 8.0]),
    }


class TinyLayer(torch.nn.Module):
    """The names of one decoder layer of a QServe W4A8 g128 checkpoint, at toy sizes."""

    def __init__(self, hidden, inter):
        super().__init__()
        self.self_attn = torch.nn.Module()
        self.self_attn.q_proj = torch.nn.Module()
        q = self.self_attn.q_proj
        q.register_buffer("qweight", torch.randint(-128, 128, (hidden, hidden // 2), dtype=torch.int8))
        q.register_buffer("s1_scales", torch.rand(hidden).half())
        q.register_buffer("s2_scales", torch.randint(1, 16, (1, hidden), dtype=torch.int8))
        q.register_buffer("s2_zeros", torch.randint(-128, 128, (1, hidden), dtype=torch.int8))
        self.mlp = torch.nn.Module()
        self.mlp.down_proj = torch.nn.Linear(inter, hidden, bias=False)
        self.input_layernorm = torch.nn.LayerNorm(hidden, elementwise_affine=True, bias=False)


class TinyLlama(torch.nn.Module):
    def __init__(self, vocab=10, hidden=8, inter=16):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(vocab, hidden)
        self.model.layers = torch.nn.ModuleList([TinyLayer(hidden, inter)])
        self.model.norm = torch.nn.LayerNorm(hidden, bias=False)
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False)


def state_dict_content():
    torch.manual_seed(99)
    m = TinyLlama()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.randn(p.shape))
    return m.half().state_dict()


# ---------------------------------------------------------------------------------------------
# A zip writer laid out like torch's (miniz): local headers with sizes deferred to a data
# descriptor, an "FB" extra field padding every record's data to 64 bytes, optional ZIP64.
# ---------------------------------------------------------------------------------------------

def write_torch_zip(records, zip64=False, deflate=False):
    out = bytearray()
    central = bytearray()
    for name, data in records:
        nb = name.encode()
        crc = zlib.crc32(data)
        payload = data
        method = 0
        if deflate:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            payload = c.compress(data) + c.flush()
            method = 8
        offset = len(out)
        z64_local = struct.pack("<HHQQ", 1, 16, len(data), len(payload)) if zip64 else b""
        start = offset + 30 + len(nb) + len(z64_local) + 4
        pad = (64 - start % 64) % 64
        extra = z64_local + struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        version = 45 if zip64 else 20
        flags = 0x0808  # sizes in a data descriptor; UTF-8 names
        lsz = 0xFFFFFFFF if zip64 else 0
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, version, flags, method, 0, 0x21, 0,
                           lsz, lsz, len(nb), len(extra))
        out += nb + extra + payload
        if zip64:
            out += struct.pack("<IIQQ", 0x08074B50, crc, len(payload), len(data))
        else:
            out += struct.pack("<IIII", 0x08074B50, crc, len(payload), len(data))
        if zip64:
            cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(payload), offset)
            csize = usize = coff = 0xFFFFFFFF
        else:
            cextra, csize, usize, coff = b"", len(payload), len(data), offset
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, version, flags, method,
                               0, 0x21, crc, csize, usize, len(nb), len(cextra), 0, 0, 0, 0, coff)
        central += nb + cextra
    cd_offset = len(out)
    out += central
    n = len(records)
    if zip64:
        eocd64 = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central),
                           cd_offset)
        out += struct.pack("<IIQI", 0x07064B50, 0, eocd64, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                           0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_offset, 0)
    return bytes(out)


def torch_records(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def rename_archive(records, new):
    return [(new + "/" + n.split("/", 1)[1], d) for n, d in records]


# ---------------------------------------------------------------------------------------------
# Hand-made pickles in torch's shape (for the hostile fixtures): storages become the persistent
# id torch.save writes, tensors reduce to the real torch._utils._rebuild_tensor_v2.
# ---------------------------------------------------------------------------------------------

class FakeStorage:
    def __init__(self, key, storage_type, numel):
        self.key, self.storage_type, self.numel = key, storage_type, numel


class FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return None


def torch_like_pickle(obj):
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def archive(name, pkl, storages):
    """Records of a torch-like archive called `name`: data.pkl, storages {key: bytes}, byteorder,
    version."""
    recs = [(f"{name}/data.pkl", pkl), (f"{name}/byteorder", b"little")]
    recs += [(f"{name}/data/{k}", v) for k, v in storages.items()]
    recs += [(f"{name}/version", b"3\n")]
    return recs


# os.system("echo pwned") stored in a state dict, as a protocol-2 pickle written opcode by opcode.
OS_SYSTEM_PICKLE = (
    b"\x80\x02}q\x00("
    b"X\x06\x00\x00\x00weightq\x01"
    b"cos\nsystem\nq\x02"
    b"X\x0a\x00\x00\x00echo pwnedq\x03\x85q\x04Rq\x05"
    b"u."
)


# ---------------------------------------------------------------------------------------------
# Expected values
# ---------------------------------------------------------------------------------------------

DTYPE_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int8: "I8",
    torch.uint8: "U8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64",
    torch.bool: "BOOL",
}


def tensor_bytes(t):
    c = t.detach().contiguous().clone()
    return bytes(c.untyped_storage().tolist())


def describe_tensor(t):
    flat = t.detach().reshape(-1)[:8]
    if t.dtype in (torch.float16, torch.bfloat16, torch.float32):
        values = [float(x) for x in flat.float().tolist()]
    else:
        values = [int(x) for x in flat.long().tolist()]
    return {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
            "crc32": zlib.crc32(tensor_bytes(t)), "values": values}


def describe(obj):
    """What the C++ reader should expose for `obj` (a dict): flattened one level with '.'."""
    tensors, scalars, unsupported = {}, {}, {}

    def add(name, v, depth):
        if isinstance(v, torch.Tensor):
            if v.dtype in DTYPE_NAMES:
                tensors[name] = describe_tensor(v)
            else:
                unsupported[name] = str(v.dtype).removeprefix("torch.")
        elif v is None or isinstance(v, (bool, int, float, str)):
            scalars[name] = v
        elif depth == 0 and isinstance(v, dict):
            for k, x in v.items():
                add(f"{name}.{k}", x, 1)
        elif depth == 0 and isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                add(f"{name}.{i}", x, 1)

    for k, v in obj.items():
        add(str(k), v, 0)
    return {"tensors": tensors, "scalars": scalars, "unsupported": unsupported}


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "data", "torch"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    p = lambda name: os.path.join(out, name)  # noqa: E731
    expected = {"valid": {}, "hostile": {}}

    def save_valid(name, obj, **kw):
        torch.save(obj, p(name), **kw)
        # Round-trip through torch.load so the expectations describe what torch reads back, not
        # what we meant to write. weights_only (torch's restricted unpickler) where it can: it
        # does not know protocol 4's FRAME opcode, and these files are our own.
        back = torch.load(p(name), weights_only=kw.get("pickle_protocol", 2) < 4)
        expected["valid"][name] = describe(back)

    content = dtype_content()
    save_valid("dtypes.pt", content)
    save_valid("proto4.pt", content, pickle_protocol=4)
    save_valid("proto5.pt", content, pickle_protocol=5)
    save_valid("state_dict.bin", state_dict_content())
    small = collections.OrderedDict(
        [("w", torch.arange(4, dtype=torch.float16)), ("b", torch.zeros(2, dtype=torch.int8))])
    save_valid("wrapped.pt", {"state_dict": small, "epoch": 3, "meta": {"lr": 0.1}})
    save_valid("unsupported.pt", {"ok": torch.ones(2, dtype=torch.float16),
                                  "dbl": torch.ones(3, dtype=torch.float64),
                                  "u16": torch.tensor([1, 2, 3], dtype=torch.int32).to(torch.uint16)})

    z64 = write_torch_zip(rename_archive(torch_records(p("dtypes.pt")), "zip64"), zip64=True)
    with open(p("zip64.pt"), "wb") as f:
        f.write(z64)
    with zipfile.ZipFile(p("zip64.pt")) as z:
        assert z.testzip() is None
    expected["valid"]["zip64.pt"] = describe(torch.load(p("zip64.pt"), weights_only=True))

    def hostile(name, data, *needles):
        with open(p(name), "wb") as f:
            f.write(data)
        expected["hostile"][name] = list(needles)

    hostile("hostile_os_system.pt",
            write_torch_zip(archive("hostile_os_system", OS_SYSTEM_PICKLE, {})),
            "refusing to load pickle global os.system", "only torch tensor rebuilds are allowed")

    good = open(p("dtypes.pt"), "rb").read()
    hostile("truncated.pt", good[: len(good) * 6 // 10], "end-of-central-directory")

    cd_offset = struct.unpack("<I", good[-6:-2])[0]
    second = good.index(b"PK\x01\x02", cd_offset + 4)
    hostile("corrupt_cd.pt", good[:second] + b"XX\x01\x02" + good[second + 4:],
            "bad central directory signature")

    f32 = torch.FloatStorage
    two = FakeStorage("0", f32, 4)
    pkl = torch_like_pickle({"present": FakeTensor(two, 0, (4,), (1,)),
                             "absent": FakeTensor(FakeStorage("1", f32, 4), 0, (4,), (1,))})
    hostile("missing_storage.pt",
            write_torch_zip(archive("missing_storage", pkl, {"0": struct.pack("<4f", 1, 2, 3, 4)})),
            "storage '1' is missing", "missing_storage/data/1")

    pkl = torch_like_pickle({"w": FakeTensor(two, 1, (2, 3), (3, 1))})
    hostile("out_of_bounds.pt",
            write_torch_zip(archive("out_of_bounds", pkl, {"0": struct.pack("<4f", 1, 2, 3, 4)})),
            "data.pkl", "reaches past the end of its storage '0'")

    hostile("compressed.pt", write_torch_zip(rename_archive(torch_records(p("dtypes.pt")),
                                                            "compressed"), deflate=True),
            "is compressed", "torch.save never compresses")

    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf, _use_new_zipfile_serialization=False)
    hostile("legacy.pt", buf.getvalue(), "legacy", "not supported", "torch.save(torch.load(")

    class Tiny(torch.nn.Module):
        def forward(self, x):
            return x * 2

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Tiny()), buf)
    hostile("torchscript.pt", buf.getvalue(), "TorchScript archive")

    with open(p("expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(p(n)) for n in os.listdir(out))
    print(f"wrote {len(os.listdir(out))} files, {total} bytes, to {out}")


if __name__ == "__main__":
    main()
