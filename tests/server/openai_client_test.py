"""Black-box test of `qserve serve` with the official `openai` Python client (from PyPI).

usage: openai_client_test.py QSERVE_BINARY SHARED_DIR
Completions, chat, streaming, stop strings, seeds, logprobs, n > 1 and an error, then SIGTERM
and exit code 0. Exits 77 (skip) without the model or the openai package.
"""
import sys

from serve_process import SKIP, Server, model_dir

try:
    import openai
except ImportError:
    print("skipped: the openai package is not installed (python3 -m pip install openai)")
    sys.exit(SKIP)


def main():
    qserve, shared = sys.argv[1], sys.argv[2]
    server = Server(qserve, model_dir(shared))
    failures = []

    def check(cond, what):
        print(("ok    " if cond else "FAIL  ") + what)
        if not cond:
            failures.append(what)

    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        models = client.models.list()
        check([m.id for m in models.data] == ["doc-llama"], "models.list")

        prompt = "The kernel scheduler"
        c = client.completions.create(model="doc-llama", prompt=prompt, max_tokens=8,
                                      temperature=0)
        text = c.choices[0].text
        check(c.object == "text_completion" and len(text) > 0, "completion")
        check(c.usage.completion_tokens <= 8 and c.usage.prompt_tokens > 0, "completion usage")

        parts = []
        usage = None
        for chunk in client.completions.create(model="doc-llama", prompt=prompt, max_tokens=8,
                                               temperature=0, stream=True,
                                               stream_options={"include_usage": True}):
            if chunk.choices:
                parts.append(chunk.choices[0].text)
            if chunk.usage is not None:
                usage = chunk.usage
        check("".join(parts) == text, "streamed completion equals the whole one")
        check(usage is not None and usage.completion_tokens == c.usage.completion_tokens,
              "usage in the final chunk")

        stop = text[len(text) // 2:len(text) // 2 + 3]
        s = client.completions.create(model="doc-llama", prompt=prompt, max_tokens=8,
                                      temperature=0, stop=[stop])
        check(s.choices[0].text == text[:text.find(stop)] and s.choices[0].finish_reason == "stop",
              f"stop string {stop!r}")

        a = client.completions.create(model="doc-llama", prompt=prompt, max_tokens=8,
                                      temperature=1.0, seed=11, n=2)
        b = client.completions.create(model="doc-llama", prompt=prompt, max_tokens=8,
                                      temperature=1.0, seed=11, n=2)
        check(len(a.choices) == 2 and [x.text for x in a.choices] == [x.text for x in b.choices],
              "seeded n=2 reproducible")
        c12 = client.completions.create(model="doc-llama", prompt=prompt, max_tokens=8,
                                        temperature=1.0, seed=12)
        check(c12.choices[0].text == a.choices[1].text, "choice 1 of seed 11 equals seed 12")

        lp = client.completions.create(model="doc-llama", prompt=prompt, max_tokens=4,
                                       temperature=0, logprobs=2)
        lps = lp.choices[0].logprobs
        check(len(lps.tokens) == lp.usage.completion_tokens and
              all(len(t) == 2 for t in lps.top_logprobs) and
              all(x <= 0 for x in lps.token_logprobs), "completion logprobs")

        msgs = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "What is a page table?"}]
        chat = client.chat.completions.create(model="doc-llama", messages=msgs, max_tokens=6,
                                              temperature=0, logprobs=True, top_logprobs=2)
        content = chat.choices[0].message.content
        check(chat.choices[0].message.role == "assistant" and content is not None, "chat")
        check(len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens, "chat logprobs")
        streamed = "".join(ch.choices[0].delta.content or "" for ch in
                           client.chat.completions.create(model="doc-llama", messages=msgs,
                                                          max_tokens=6, temperature=0,
                                                          stream=True) if ch.choices)
        check(streamed == content, "streamed chat equals the whole one")

        try:
            client.completions.create(model="doc-llama", prompt=prompt, max_tokens=-1)
            check(False, "negative max_tokens is refused")
        except openai.BadRequestError as e:
            check("max_tokens" in str(e), "negative max_tokens is a 400 naming the field")
        try:
            client.completions.create(model="other", prompt=prompt, max_tokens=1)
            check(False, "unknown model is refused")
        except openai.NotFoundError:
            check(True, "unknown model is a 404")
    finally:
        code = server.stop()
    check(code == 0, f"SIGTERM: exit code {code}")
    if failures:
        print("".join(server.log[-30:]))
        print(f"{len(failures)} failure(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
