#!/usr/bin/env python3
"""Makes a WildChat-style chat dataset (JSONL) for `qserve generate --dataset` from the held-out
documents of doc-llama-22m (../shared/data/eval/doc-heldout.txt), so that chat generation can be
exercised on text the test model knows how to continue.

Each row is one conversation in WildChat's shape: {"id", "conversation": [{"role", "content"},
...], "model", "turn", "language", "conversation_hash"} whose last turn is the assistant's
reference answer (the real continuation of the snippet; qserve drops it and generates anew).
Variety, chosen by a seeded RNG so the output is byte-for-byte reproducible:
  - the user turn asks to continue a snippet that starts at a paragraph of the document;
  - about a third of the rows start with a system turn;
  - about a quarter have an earlier user/assistant exchange (about the same document);
  - a few carry per-row sampling fields (max_tokens, temperature, top_p, top_k, min_p, seed,
    min_tokens) and a few stop strings.

Usage:
  python3 tools/make_chat_dataset.py OUT.jsonl [--source doc-heldout.txt] [--rows 200] [--seed 484]
The committed copy is tests/data/engine/chat200.jsonl (defaults).
"""

import argparse
import hashlib
import json
import os
import random
import sys

DOC_SEPARATOR = "\n\n<|doc|>\n\n"

SYSTEM_PROMPTS = [
    "You are a concise technical writer.",
    "You are an expert on the Linux kernel and Python. Answer in plain text.",
    "You continue documentation in the same style and format as the excerpt.",
    "Keep answers short.",
]

USER_TEMPLATES = [
    "Continue this text: {snippet}",
    "Continue the following documentation:\n\n{snippet}",
    "Here is an excerpt from technical documentation. Continue it.\n\n{snippet}",
    "Complete the next paragraph.\n\n{snippet}",
]


def default_source():
    shared = os.environ.get("QSERVE_SHARED")
    if not shared:
        shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")
    return os.path.join(shared, "data", "eval", "doc-heldout.txt")


def cut_at_word(text, limit):
    """The longest prefix of text no longer than limit that ends at whitespace (or limit)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    if cut < limit // 2:
        cut = limit
    return text[:cut]


def title_of(doc):
    """The first line that looks like a title (skipping SPDX and rst markup lines)."""
    for line in doc.splitlines():
        s = line.strip()
        if not s or s.startswith("..") or set(s) <= set("=-~*#^"):
            continue
        return s[:80]
    return "this document"


def snippet_and_reference(doc, rng):
    # Start at a paragraph boundary so the snippet reads as a natural excerpt.
    starts = [0] + [i + 2 for i in range(len(doc) - 2) if doc.startswith("\n\n", i)]
    starts = [s for s in starts if len(doc) - s > 120] or [0]
    start = rng.choice(starts[: max(1, len(starts) * 3 // 4)])
    body = doc[start:]
    snippet = cut_at_word(body, rng.randint(220, 420)).rstrip()
    rest = body[len(snippet):]
    reference = cut_at_word(rest, rng.randint(120, 240)).strip() or "(end of document)"
    return snippet, reference


def make_row(i, doc, rng):
    snippet, reference = snippet_and_reference(doc, rng)
    conversation = []
    if rng.random() < 0.33:
        conversation.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    if rng.random() < 0.25:
        title = title_of(doc)
        conversation.append(
            {"role": "user", "content": "What is the document \"%s\" about? One sentence." % title})
        conversation.append(
            {"role": "assistant",
             "content": "It is technical documentation titled \"%s\"." % title})
    conversation.append({"role": "user", "content": rng.choice(USER_TEMPLATES).format(snippet=snippet)})
    conversation.append({"role": "assistant", "content": reference})

    row = {"id": "chat-%03d" % i, "conversation": conversation}
    r = rng.random()
    if r < 0.06:
        row.update({"max_tokens": rng.choice([16, 32, 64]), "temperature": 0.7, "top_p": 0.9,
                    "seed": rng.randrange(1 << 31)})
    elif r < 0.10:
        row.update({"max_tokens": 48, "temperature": 1.0, "top_k": 40, "min_p": 0.05,
                    "seed": rng.randrange(1 << 31), "min_tokens": 4})
    elif r < 0.14:
        row.update({"max_tokens": 64, "stop": rng.choice(["\n\n", [".", "\n"], ["::"]])})
    elif r < 0.16:
        row.update({"max_tokens": 32, "stop": "\n", "min_tokens": 8, "ignore_eos": True})
    # WildChat metadata the reader ignores.
    row["model"] = "doc-llama-22m-heldout"
    row["turn"] = sum(1 for m in conversation if m["role"] == "user")
    row["language"] = "English"
    row["conversation_hash"] = hashlib.md5(
        json.dumps(conversation, sort_keys=True).encode("utf-8")).hexdigest()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output .jsonl path")
    ap.add_argument("--source", default=default_source(), help="doc-heldout.txt")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--seed", type=int, default=484)  # QServe's e2e demo seeds WildChat with 484
    args = ap.parse_args()

    with open(args.source, encoding="utf-8") as f:
        docs = [d for d in f.read().split(DOC_SEPARATOR) if d.strip()]
    if not docs:
        sys.exit("error: %s has no documents" % args.source)
    rng = random.Random(args.seed)
    with open(args.out, "w", encoding="utf-8", newline="\n") as out:
        for i in range(args.rows):
            row = make_row(i, docs[i % len(docs)], rng)
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print("wrote %d rows to %s (%d bytes)" % (args.rows, args.out, os.path.getsize(args.out)))


if __name__ == "__main__":
    main()
