#!/usr/bin/env python3
"""Generates the small tokenizer fixtures of tests/data/tokenizers/ and their golden outputs.

Each fixture is a folder with the tokenizer file(s), tokenizer_config.json and golden.json, whose
outputs come from the reference libraries (HuggingFace `tokenizers`, `sentencepiece`), so the C++
tests compare against them rather than against themselves:

  spm-llama2/     tokenizer.json, Llama-2 style: normalizer Prepend("▁") + Replace(" ", "▁"), no
                  pre-tokenizer, BPE with byte_fallback, unk and fuse_unk, decoder
                  Replace/ByteFallback/Fuse/Strip, post-processor TemplateProcessing "<s> $A".
  spm-mistral/    tokenizer.json, Mistral style: no normalizer, Metaspace pre-tokenizer
                  (prepend_scheme "first", split false), Metaspace decoder (which leaves <0xNN>
                  tokens as they are: HF has no ByteFallback step there), [INST] added tokens.
  spm-metaspace-split/  Metaspace pre-tokenizer with prepend_scheme "always" and split true,
                  decoder Sequence[Metaspace, ByteFallback, Fuse].
  gpt2-bytelevel/ tokenizer.json, GPT-2 style: ByteLevel pre-tokenizer with its own regex,
                  merges in the legacy "a b" form, added tokens with lstrip/rstrip/single_word.
  spm-model/      a SentencePiece tokenizer.model (BPE, byte_fallback), golden outputs from the
                  sentencepiece library.

Usage (CPU only; needs `pip install tokenizers sentencepiece`):
  python3 tools/gen_spm_tokenizers.py [--shared ../shared] [--out tests/data/tokenizers]
"""

import argparse
import io
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
import sentencepiece as spm

META = "\u2581"  # ▁

# Strings that exercise the corners: spaces, control characters, characters outside the
# vocabulary (byte fallback), special tokens inside text, the empty string.
TRICKY = [
    "Hello world",
    "",
    " ",
    "\n",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "multiple   inner    spaces",
    "line one\nline two\n\nline four\n",
    "\ttabs\tand\t\ttabs",
    "windows\r\nline end",
    "unicode: na\u00efve caf\u00e9 \u2013 \u201cquotes\u201d \u65e5\u672c\u8a9e",
    "emoji \U0001F600\U0001F389\U0001F44D\U0001F3FD and \U0001D518\U0001D52B",
    "nbsp\u00a0and zero\u200bwidth",
    "numbers 1234567 and 3.14159",
    "x = y ** 2 + f(a, b)[0]  # comment",
    "<s>special</s> tokens",
    "text <s> middle </s>",
    "</s>",
    "<unk> in text",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "The kernel scheduler decides which task runs next.",
    "def main():\n    return 0\n",
    "\u00ff\u0100 mixed \u0100 latin",
]


def training_text(shared):
    with open(os.path.join(shared, "data/eval/doc-heldout.txt"), encoding="utf-8") as f:
        docs = f.read()[:300_000]
    with open(os.path.join(shared, "data/wikitext-2/wiki.test.raw"), encoding="utf-8") as f:
        wiki = f.read()[:100_000]
    return docs + "\n" + wiki


def train_merges(text, vocab_size, limit_alphabet):
    """Trains a word-level BPE (merges never cross a ▁) and returns (tokens, merges) in order."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, limit_alphabet=limit_alphabet,
                                  show_progress=False)
    t.train_from_iterator(text.splitlines(), trainer=trainer)
    model = json.loads(t.to_str())["model"]
    tokens = sorted(model["vocab"], key=lambda k: model["vocab"][k])
    merges = [m if isinstance(m, list) else m.split(" ", 1) for m in model["merges"]]
    return tokens, merges


def spm_model_json(tokens, merges):
    """Llama-2's layout: <unk> <s> </s>, then the 256 byte tokens, then the trained pieces."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for tok in tokens:
        if tok not in vocab:
            vocab[tok] = len(vocab)
    return {
        "type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
        "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
        "ignore_merges": False, "vocab": vocab, "merges": merges,
    }


def added(tid, content, special=True, **flags):
    tok = {"id": tid, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
           "normalized": not special, "special": special}
    tok.update(flags)
    return tok


SPM_SPECIALS = [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")]

BOS_TEMPLATE = {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
}

LLAMA_DECODER = {
    "type": "Sequence",
    "decoders": [
        {"type": "Replace", "pattern": {"String": META}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ],
}


def tokenizer_json(model, added_tokens, normalizer, pre_tokenizer, post_processor, decoder):
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
            "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor, "decoder": decoder, "model": model}


def llama_config(extra=None):
    cfg = {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
           "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
           "clean_up_tokenization_spaces": False,
           "chat_template": "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"}
    cfg.update(extra or {})
    return cfg


def hf_golden(tok_json, extra_texts=()):
    tok = Tokenizer.from_str(json.dumps(tok_json))
    cases = []
    for text in list(TRICKY) + list(extra_texts):
        ids = tok.encode(text, add_special_tokens=True).ids
        ids_ns = tok.encode(text, add_special_tokens=False).ids
        cases.append({
            "text": text, "ids": ids, "ids_no_special": ids_ns,
            "decoded": tok.decode(ids_ns, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            "decoded_with_special": tok.decode(ids, skip_special_tokens=False),
        })
    return cases


def write_fixture(out_dir, name, files, golden):
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    for fname, content in files.items():
        path = os.path.join(d, fname)
        if isinstance(content, bytes):
            with open(path, "wb") as f:
                f.write(content)
        else:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(content, f, ensure_ascii=False, indent=None, separators=(",", ":"))
                f.write("\n")
    with open(os.path.join(d, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    for fname in os.listdir(d):
        size = os.path.getsize(os.path.join(d, fname))
        print(f"  {name}/{fname}: {size} bytes")
        if size > 200_000:
            sys.exit(f"{name}/{fname} is larger than 200 KB")


def make_hf_fixtures(text, out_dir):
    tokens, merges = train_merges(text, vocab_size=700, limit_alphabet=70)

    llama2 = tokenizer_json(
        spm_model_json(tokens, merges), SPM_SPECIALS,
        {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": META},
            {"type": "Replace", "pattern": {"String": " "}, "content": META}]},
        None, BOS_TEMPLATE, LLAMA_DECODER)
    write_fixture(out_dir, "spm-llama2",
                  {"tokenizer.json": llama2, "tokenizer_config.json": llama_config()},
                  {"kind": "tokenizer.json", "bos_id": 1, "eos_ids": [2], "cases": hf_golden(llama2)})

    mistral_specials = SPM_SPECIALS + [added(len(spm_model_json(tokens, merges)["vocab"]), "[INST]"),
                                       added(len(spm_model_json(tokens, merges)["vocab"]) + 1, "[/INST]")]
    mistral = tokenizer_json(
        spm_model_json(tokens, merges), mistral_specials, None,
        {"type": "Metaspace", "replacement": META, "prepend_scheme": "first", "split": False},
        BOS_TEMPLATE,
        {"type": "Metaspace", "replacement": META, "prepend_scheme": "first", "split": False})
    write_fixture(out_dir, "spm-mistral",
                  {"tokenizer.json": mistral, "tokenizer_config.json": llama_config()},
                  {"kind": "tokenizer.json", "bos_id": 1, "eos_ids": [2],
                   "cases": hf_golden(mistral, ["[INST] What is a kernel? [/INST] A program.",
                                                "[INST]x[/INST]"])})

    split = tokenizer_json(
        spm_model_json(tokens, merges), SPM_SPECIALS, None,
        {"type": "Metaspace", "replacement": META, "prepend_scheme": "always", "split": True},
        BOS_TEMPLATE,
        {"type": "Sequence", "decoders": [
            {"type": "Metaspace", "replacement": META, "prepend_scheme": "always", "split": True},
            {"type": "ByteFallback"}, {"type": "Fuse"}]})
    split_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                    "eos_token": {"content": "</s>", "special": True}}
    write_fixture(out_dir, "spm-metaspace-split",
                  {"tokenizer.json": split, "tokenizer_config.json": split_config},
                  {"kind": "tokenizer.json", "bos_id": 1, "eos_ids": [2], "cases": hf_golden(split)})


def make_gpt2_fixture(text, out_dir):
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    model = json.loads(t.to_str())["model"]
    # The legacy "a b" form of merges, as older GPT-2 style files have it.
    model["merges"] = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    n = len(model["vocab"])
    added_tokens = [
        added(n, "<|endoftext|>"),
        added(n + 1, "<mask>", lstrip=True),
        added(n + 2, "[SEP]", rstrip=True),
        added(n + 3, "cat", special=False, single_word=True),
        added(n + 4, " dog", special=False),
    ]
    gpt2 = tokenizer_json(
        model, added_tokens, None,
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True})
    config = {"tokenizer_class": "GPT2TokenizerFast", "bos_token": "<|endoftext|>",
              "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    extra = ["a <mask> b", "a    <mask>b", "x [SEP]   y", "cat concat cat. (cat)", "my dog, hot dog",
             "<|endoftext|>", "\u00e9\u00e9\u00e9 \U0001F600 \U0001F600"]
    write_fixture(out_dir, "gpt2-bytelevel", {"tokenizer.json": gpt2, "tokenizer_config.json": config},
                  {"kind": "tokenizer.json", "bos_id": n, "eos_ids": [n],
                   "cases": hf_golden(gpt2, extra)})


def split_on_controls(text, controls):
    """Splits text on the control pieces (leftmost-longest), as the C++ loader does."""
    out, start, i = [], 0, 0
    while i < len(text):
        best = None
        for piece, pid in controls.items():
            if text.startswith(piece, i) and (best is None or len(piece) > len(best[0])):
                best = (piece, pid)
        if best is None:
            i += 1
            continue
        if start < i:
            out.append(text[start:i])
        out.append(best[1])
        i += len(best[0])
        start = i
    if start < len(text):
        out.append(text[start:])
    return out


def make_spm_model_fixture(text, out_dir):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in text.splitlines() if line.strip()]),
        model_writer=model, model_type="bpe", vocab_size=400, byte_fallback=True,
        character_coverage=0.98, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    blob = model.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=blob)
    controls = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
                if sp.is_control(i) or sp.is_unknown(i)}
    hf_decoder = decoders.Sequence([decoders.Replace(META, " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    cases = []
    for s in TRICKY:
        ids_ns = []
        for part in split_on_controls(s, controls):
            ids_ns += [part] if isinstance(part, int) else sp.encode(part)
        ids = [sp.bos_id()] + ids_ns
        plain = [i for i in ids_ns if i not in controls.values()]
        cases.append({
            "text": s, "ids": ids, "ids_no_special": ids_ns,
            # sentencepiece's own decoder on the ordinary pieces (control pieces decode to "").
            "decoded_skip_special": sp.decode(plain),
            # HF's Llama decoder chain, which renders control pieces.
            "decoded_with_special": hf_decoder.decode([sp.id_to_piece(i) for i in ids]),
        })
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}
    write_fixture(out_dir, "spm-model", {"tokenizer.model": blob, "tokenizer_config.json": config},
                  {"kind": "tokenizer.model", "bos_id": sp.bos_id(), "eos_ids": [sp.eos_id()],
                   "cases": cases})


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("QSERVE_SHARED", os.path.join(root, "../shared")))
    ap.add_argument("--out", default=os.path.join(root, "tests/data/tokenizers"))
    args = ap.parse_args()
    text = training_text(args.shared)
    make_hf_fixtures(text, args.out)
    make_gpt2_fixture(text, args.out)
    make_spm_model_fixture(text, args.out)


if __name__ == "__main__":
    main()
