#!/usr/bin/env python3
"""Renders the chat-template fixtures with HuggingFace transformers; writes tests/data/chat/goldens.json.

tests/jinja/chat_goldens_test.cpp renders the same templates and conversations with qserve's Jinja
interpreter and compares byte for byte. CI has no transformers, so the output is committed and this
script is run by hand after a fixture changes:

    python3 tools/gen_chat_goldens.py [--shared ../shared]

Rendering goes through transformers.utils.chat_template_utils.render_jinja_template, the function
PreTrainedTokenizerBase.apply_chat_template calls (transformers 5.x): same sandboxed Jinja
environment (trim_blocks, lstrip_blocks, loopcontrols, its tojson / raise_exception / strftime_now),
same message normalization. apply_chat_template passes the tokenizer's special tokens
(special_tokens_map: bos_token, eos_token, ...) as template variables; here they are given per
template in TEMPLATES, as a tokenizer of that model family would give them. No tokenizer is loaded.

The templates in tests/data/chat/templates/ were written for this project after the published
templates of each model family; doc-llama-22m's template is read from the shared test model.
"""

import argparse
import json
import os
import sys

import jinja2
import transformers
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE_DIR = os.path.join(ROOT, "tests", "data", "chat", "templates")
OUT = os.path.join(ROOT, "tests", "data", "chat", "goldens.json")

# name -> special tokens passed to the template (what the family's tokenizer has).
LLAMA3 = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
SPM = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
TEMPLATES = {
    "llama-3": {"file": "llama-3.jinja", "tokens": LLAMA3},
    "llama-3.1": {"file": "llama-3.1.jinja", "tokens": LLAMA3},
    "llama-2": {"file": "llama-2.jinja", "tokens": SPM},
    "mistral": {"file": "mistral.jinja", "tokens": SPM},
    "mistral-system": {"file": "mistral-system.jinja", "tokens": SPM},
    "qwen2": {"file": "qwen2.jinja", "tokens": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}},
    "qwen2.5": {"file": "qwen2.5.jinja", "tokens": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}},
    "chatml": {"file": "chatml.jinja", "tokens": {"bos_token": "<s>", "eos_token": "<|im_end|>"}},
    "vicuna": {"file": "vicuna.jinja", "tokens": SPM},
    "gemma": {"file": "gemma.jinja", "tokens": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}},
    "features": {"file": "features.jinja", "tokens": LLAMA3},
    # Read from the shared model at generation time (not copied into the repository).
    "doc-llama": {"shared_model": "doc-llama-22m"},
}

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "system_user": [SYSTEM, {"role": "user", "content": "What is RCU?"}],
    "multi_turn": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "What is a page table?"},
    ],
    "system_multi_turn": [
        {"role": "system", "content": "Be brief.\nAnswer in English."},
        {"role": "user", "content": "Name a scheduler."},
        {"role": "assistant", "content": "CFS."},
        {"role": "user", "content": "And another?"},
    ],
    "unicode": [
        {"role": "user", "content": "Grüße aus Köln 🌍 — 你好, \"quoted\" and 'single' \\ backslash"},
        {"role": "assistant", "content": "Ça va ✓ — emoji 👍🏽 and a tab\there"},
        {"role": "user", "content": "日本語で? <|eot_id|> is text here"},
    ],
    "needs_trim": [
        {"role": "system", "content": "\n  Trim me.  \n"},
        {"role": "user", "content": "  \n Tell me about mmap.\t\n"},
        {"role": "assistant", "content": "\n It maps files. \n"},
        {"role": "user", "content": "\u3000more please\u00a0 "},
    ],
    "ends_with_assistant": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ],
    # Invalid for the templates that require alternation: they must raise.
    "two_users": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    "starts_with_assistant": [
        {"role": "assistant", "content": "I speak first."},
        {"role": "user", "content": "ok"},
    ],
    "system_only": [SYSTEM],
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city — «unicode» allowed",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TOOL_CONVERSATION = [
    {"role": "system", "content": "You can look up the weather."},
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}}
        ],
    },
    {"role": "tool", "content": "{\"temperature\": 21.5, \"sky\": \"clear\"}"},
    {"role": "user", "content": "Thanks"},
]

# Extra cases: (template, conversation, add_generation_prompt, extra template kwargs).
EXTRA_CASES = [
    ("llama-3.1", "tools", True, {"tools": [WEATHER_TOOL], "date_string": "30 Nov 2026"}),
    ("llama-3.1", "tools", False, {"tools": [WEATHER_TOOL], "tools_in_user_message": False}),
    ("llama-3.1", "system_user", True, {"builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"]}),
    ("qwen2.5", "tools", True, {"tools": [WEATHER_TOOL]}),
    ("qwen2.5", "tools", False, {}),
]


# Snippets exercising the Jinja subset one feature at a time (whitespace control, scoping, Python
# operator and str semantics, filters, tests, Undefined), rendered in the same environment with
# SNIPPET_CONTEXT as extra variables. Where transformers raises, only "an error" is recorded (our
# messages differ from Python's).
SNIPPET_CONTEXT = {
    "x": {"a": [1, 2.5, 'é"\n'], "b": None, "c": True, "zz": {}},
    "m": {"content": "hi"},
    "ms": [{"role": "user", "c": "1"}, {"role": "a", "c": "2"}],
    "d": {"a": 1, "b": 2},
    "msgs": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
    "y": 3,
    "big": 9007199254740993,
}
SNIPPETS = [
    # scoping
    "{% set c = 0 %}{% for i in range(3) %}{% set c = c + 1 %}{{c}}{% endfor %}|{{c}}",
    "{% set d = 5 %}{% for i in range(3) %}{{ d }}{% set d = i %}{{ d }};{% endfor %}{{d}}",
    "{% set d = 5 %}{% if true %}{% set d = 7 %}{% endif %}{{d}}",
    "{% set ns = namespace(a=1) %}{% for i in [1,2] %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}",
    "{% macro f(a, b=2) %}[{{a}}{{b}}{{ g }}]{% endmacro %}{% set g = 1 %}{{ f(1) }}{{ f(3, b=4) }}",
    "{% macro r(n) %}{% if n > 0 %}{{ n }}{{ r(n - 1) }}{% endif %}{% endmacro %}{{ r(4) }}",
    "{% set a, b = [1, 2] %}{{ a }}{{ b }}{% set s %}X{{ a }}{% endset %}{{ s }}",
    "{% if msgs[0]['role'] == 'system' %}{% set loop_messages = msgs[1:] %}{% else %}{% set loop_messages = msgs %}{% endif %}{{ loop_messages|length }}",
    "{% if not tools is defined %}{% set tools = none %}{% endif %}{{ tools is none }}",
    # loops
    "{% for m in ms %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{% else %}E{% endfor %}",
    "{% for m in ms if m.c > '1' %}{{ loop.index }}{{m.c}}{% endfor %}|{% for m in [] %}x{% else %}empty{% endfor %}",
    "{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{i}}{% endfor %}",
    "{% for k, v in d.items() %}{{k}}={{v}};{% endfor %}{% for k in d %}{{k}}{% endfor %}{% for c in 'ab' %}{{ c }}.{% endfor %}",
    "{% for x in 'ab' %}{{ loop.cycle('o', 'e') }}{{ x }}{{ loop.previtem }}{{ loop.nextitem }}{% endfor %}",
    "{% for i in range(2) %}{% for j in range(2) %}{{ loop.index }}{% endfor %}{{ loop.index }}|{% endfor %}{{ range(1, 10, 3)|list }}{{ range(5, 0, -2)|list }}",
    # whitespace control, trim_blocks, lstrip_blocks, comments, raw, newlines
    "  {% if true %}\n  x\n  {% endif %}\n  y  \n{%- if true -%}  z  {%- endif %}  \n w\n",
    "a {# c #}\n  {#- d -#}  b\n",
    "{% raw %}{{ x }}{% endraw %}\n",
    "line1\r\nline2\r{{ 'q' }}\n\n",
    "{{- 'a' -}}  \n  {{ 'b' }}\n {%+ if true %}c{% endif +%}\nd",
    "\t{% for i in [1] %}\n\t\t{{ i }}\n\t{% endfor %}\n",
    "{{ 'a' }}\n{{ 'b' }}\n\n{% if true %}\n\n{% endif %}",
    # values, printing and arithmetic
    "{{ none }}|{{ 1.0 }}|{{ [1,'a',none,true] }}|{{ {'a':1} }}|{{ 1/2 }}|{{ 7//2 }}|{{ -7%3 }}|{{ 10/5 }}",
    "{{ 1e16 }} {{ 0.00001 }} {{ 3.0*1.1 }} {{ 1.5 }} {{ 123456.789 }} {{ 1e22 }} {{ 2.5e-7 }} {{ -0.0 }} {{ 1_000 }}",
    "{{ 0.1+0.2 }} {{ 100000000000000000.0 }} {{ 1.0e-4 }} {{ 123456789012345678 }} {{ big }} {{ 3|float }} {{ '12'|int + 1 }}",
    "{{ 'a' * 3 }} {{ [1] * 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ [1,2] + [3] }} {{ 'a' ~ 1.5 }}",
    "{{ 7 % -3 }} {{ -7 // 2 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ -(3) }} {{ +3 }} {{ 2 * 3 + 4 ** 2 / 8 }}",
    "{{ (1,2) }} {{ (1,) }} {{ () }} {{ 'x' ~ none ~ 1 }} {{ true }} {{ d.items()|list }}",
    "{{ 1 == 1.0 }} {{ true == 1 }} {{ '1' == 1 }} {{ [1] == [1.0] }} {{ none == none }} {{ x == y }} {{ (1, 2) == [1, 2] }}",
    "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 'a' not in 'abc' }} {{ not 1 in [1] }} {{ -2|abs }} {{ 'b' > 'a' }} {{ [1, 2] < [1, 3] }}",
    "{{ 0 or 'b' }} {{ 1 and 'c' }} {{ [] or none }} {{ 'a' and 0 }} {{ not '' }}",
    "{{ 'x' if false }}|{{ 'y' if true else 'n' }}|{{ 1 if 0 else 2 if 0 else 3 }}",
    "{{ \"it's\" }} {{ ['a\"b', \"c'd\"] }} {{ ['a\\nb', 'tab\\t'] }} {{ 'a' 'b' }} {{ '\\u00e9\\x41\\101\\q' }}",
    # subscripts, attributes, slices, Undefined
    "{{ 'abc'[::-1] }} {{ [1,2,3][1:] }} {{ 'héllo'|length }} {{ 'héllo'[1:3] }} {{ [1,2,3,4][::2] }} {{ [1,2,3][-2:] }} {{ 'abc'[-1] }} {{ [1,2,3][5:] }} {{ [1,2,3][:-5] }}",
    "{{ msgs|length }} {{ msgs[0]['content'] }} {{ msgs[-1].role }} {{ msgs.0.role }} {{ m.content }} {{ m['content'] }}",
    "{{ foo }}|{{ foo|length }}|{{ 'x' in foo }}|{{ foo is defined }}|{{ foo|default('dflt') }}|{{ not foo }}",
    "{{ [][0] }}|{{ {}['a'] }}|{{ x.y }}|{{ x.y is defined }}|{{ x.y is none }}|{{ x['zz'].q }}",
    "{{ x|default('d') }} {{ none|default('d') }} {{ ''|default('d', true) }} {{ x.q|d('e') }}",
    "{{ d['a'] is defined }} {{ d.zz is undefined }} {{ d is mapping }} {{ d.a is integer }} {{ 1.0 is float }} {{ true is boolean }}",
    "{{ 3 is divisibleby 3 }}{{ none is none }}{{ 'a' is string }}{{ 1 is number }}{{ true is number }}{{ {} is mapping }}{{ 'a' is iterable }}{{ 'a' is sequence }}{{ {} is sequence }}{{ 3 is odd }}{{ 3 is even }}",
    "{{ 'foo' is in ['foo'] }} {{ 2 is gt 1 }} {{ 2 is eq 2 }} {{ x is not defined }} {{ 'ab' is lower }} {{ 'AB' is upper }} {{ 1 is sameas 1 }}",
    # str methods
    "{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ 'a  b'.split() }}|{{ 'ab'.startswith(('x','a')) }}|{{ ' x '.lstrip() }}|{{ ' x '.rstrip() }}",
    "{{ 'abc'.upper() }} {{ 'A B'.lower() }} {{ 'a-b c'.replace('-', '+') }} {{ 'aXbXc'.split('X', 1) }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }}",
    "{{ 'abc'.endswith('bc') }} {{ 'abcabc'.find('c') }} {{ 'abcabc'.count('b') }} {{ '-'.join(['a', 'b']) }} {{ ' a\tb\n c '.split() }} {{ 'a,b,,c'.split(',') }}",
    "{{ '123'.isdigit() }} {{ 'ab1'.isalpha() }} {{ '  '.isspace() }} {{ 'pre_x'.removeprefix('pre_') }} {{ 'x.txt'.removesuffix('.txt') }}",
    # filters
    "{{ 'hello world'|title }}|{{ 'hELLO'|capitalize }}|{{ 'ab'|upper }}|{{ 'AB'|lower }}|{{ 'a-b (c'|title }}",
    "{{ '  abc  '|trim }}|{{ 'xxabcxx'|trim('x') }}|{{ '\\u3000 abc\\xa0'|trim }}|{{ none|trim }}|{{ 12|trim }}",
    "{{ 'ab' | replace('a', '') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ ['a', 1]|join('-') }} {{ 12|string + 'x' }} {{ ms|join(', ', attribute='c') }}",
    "{{ [1,2,3]|first }} {{ [1,2,3]|last }} {{ 'abc'|first }} {{ []|first }} {{ 'abc'|list }} {{ d|list }} {{ 'abc'|reverse }} {{ [1,2]|reverse|list }}",
    "{{ [3,1,2]|sort }} {{ ['b','A','a']|sort }} {{ [1,2,2,1]|unique|list }} {{ [1,5,2]|max }} {{ [1,2]|sum }} {{ ms|sort(attribute='c', reverse=true)|map(attribute='c')|join }} {{ ['b','A']|min }}",
    "{{ 'a\\nb'|indent(2) }}|{{ 'a\\n\\nb'|indent(2, true) }}|{{ 'a\\n\\nb'|indent('>', blank=true) }}",
    "{{ ms|selectattr('role','equalto','user')|map(attribute='c')|join(',') }} {{ ms|rejectattr('role', 'equalto', 'user')|list }} {{ ms|selectattr('c')|list|length }}",
    "{{ [1,2,3]|select('odd')|list }} {{ [1,2,3]|reject('odd')|list }} {{ ['a','B']|map('upper')|list }} {{ [0, 1, '']|select|list }} {{ ms|map(attribute='zz', default='-')|list }}",
    "{{ x|tojson }}", "{{ x|tojson(indent=2) }}", "{{ d|tojson(indent=4, sort_keys=true) }} {{ d|tojson(separators=(',', ':')) }}",
    "{{ {'a': 1, 'b': [1, {'c': none}]}|tojson }} {{ '\u00e9\u2028\x01\x7f'|tojson }} {{ 1.0|tojson }} {{ [1e20, -0.0, 1.5e-7]|tojson }} {{ []|tojson(indent=2) }}",
    "{{ x|items|list }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.567|round(2) }} {{ 2.5|round(method='floor') }} {{ 2.1|round(0, 'ceil') }} {{ '3.7'|float|int }} {{ 'x'|int(5) }} {{ '0x1A'|int(0, 16) }}",
    "{{ d|length }} {{ 'héllo'|count }} {{ ms|length }} {{ x.a|length }} {{ 'abc'|safe }} {{ [1, 2]|string }} {{ 5|attr('x') }}",
    "{{ d|attr('a') }}|{{ d|attr('items') is callable }}|{{ 5|round }}|{{ 15|round(-1) }}|{{ 1.5 is odd }}|{{ 3.0 is odd }}|{{ 'A1' is upper }}|{{ 123 is lower }}|{{ (1, 'x') is lower }}",
    "{% filter upper %}ab{{ 'c' }}{% endfilter %}|{% filter replace('a', 'b')|upper %}aa{% endfilter %}",
    "{{ dict(a=1, b='x') }} {{ dict(d, c=3)|tojson }} {{ namespace(q=1).q }} {{ raise_exception is defined }}",
    "{% generation %}gen {{ 1 }}{% endgeneration %}",
    # errors (any error counts; messages differ from Python's)
    "{{ foo.bar }}", "{{ 'a' + 1 }}", "{{ raise_exception('boom') }}", "{{ 5 // 0 }}", "{{ undefined_thing() }}",
    "{{ x.y.z }}", "{{ 1 + }}", "{% if %}", "{% for x in y %}", "{% endif %}", "{{ x|nosuch }}", "{{ x is nosuch }}",
    "{{ 'abc }}", "{# abc", "{{ (1 }}", "{{ a.b.c.d(1)[2] }}", "{% for i in range(3) %}{% endfor %}{% break %}",
    "{{ [1] < 'a' }}", "{{ x|tojson(ensure_ascii=true) if false }}{{ none.x.y }}", "{{ d.pop('a') }}", "{{ [1].append(2) }}",
    "{% set ns = namespace() %}{% set ns._x = 1 %}", "{{ 1 2 }}", "{% macro m() %}{% endmacro %}{{ m(1) }}", "{{ 'a'|join(1, 2, 3) }}",
]


def read_template(spec, shared):
    if "file" in spec:
        with open(os.path.join(TEMPLATE_DIR, spec["file"]), encoding="utf-8") as f:
            return f.read(), spec["tokens"]
    cfg_path = os.path.join(shared, "models", spec["shared_model"], "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    tokens = {k: v for k, v in cfg.items() if k.endswith("_token") and isinstance(v, str)}
    return cfg["chat_template"], tokens


def render(template, tokens, messages, add_generation_prompt, kwargs):
    kwargs = dict(kwargs)
    tools = kwargs.pop("tools", None)
    documents = kwargs.pop("documents", None)
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            tools=tools,
            documents=documents,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            **{**tokens, **kwargs},
        )
        return {"expected": rendered[0]}
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e)}
    except (TypeError, ValueError, ArithmeticError, LookupError, SyntaxError) as e:  # Python errors inside Jinja
        return {"error": f"{type(e).__name__}: {e}"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.environ.get("QSERVE_SHARED", os.path.join(ROOT, "..", "shared")))
    args = ap.parse_args()

    conversations = dict(CONVERSATIONS)
    conversations["tools"] = TOOL_CONVERSATION
    cases = []
    templates = {}
    for name, spec in TEMPLATES.items():
        source, tokens = read_template(spec, args.shared)
        templates[name] = {k: v for k, v in spec.items() if k != "tokens"}
        templates[name]["special_tokens"] = tokens
        for conv_name, messages in CONVERSATIONS.items():
            for gen in (True, False):
                case = {"template": name, "conversation": conv_name, "add_generation_prompt": gen, "kwargs": {}}
                case.update(render(source, tokens, messages, gen, {}))
                cases.append(case)
    for name, conv_name, gen, kwargs in EXTRA_CASES:
        source, tokens = read_template(TEMPLATES[name], args.shared)
        case = {"template": name, "conversation": conv_name, "add_generation_prompt": gen, "kwargs": kwargs}
        case.update(render(source, tokens, conversations[conv_name], gen, kwargs))
        cases.append(case)

    snippets = []
    for text in SNIPPETS:
        r = render(text, {}, [], False, SNIPPET_CONTEXT)
        snippets.append({"template": text, **({"error": True} if "error" in r else r)})

    out = {
        "generator": "tools/gen_chat_goldens.py",
        "renderer": "transformers.utils.chat_template_utils.render_jinja_template",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "templates": templates,
        "conversations": conversations,
        "cases": cases,
        "snippet_context": SNIPPET_CONTEXT,
        "snippets": snippets,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    errors = sum(1 for c in cases if "error" in c)
    print(f"{OUT}: {len(cases)} cases ({errors} expected errors), {len(snippets)} snippets", file=sys.stderr)


if __name__ == "__main__":
    main()
