#!/usr/bin/env python3
"""Render the chat templates in tests/fixtures/chat-templates/ the way transformers renders them, into
tests/fixtures/chat-template-golden.json (committed; tests/chat_templates.rs checks rill's renderer against it).

    .venv-fixtures/bin/python scripts/make-template-goldens.py   # needs transformers (scripts/make-fixtures.py --goldens makes the venv)

The templates are rill's own, written to exercise what the families' templates rely on: whitespace control with
trim_blocks / lstrip_blocks, `raise_exception`, namespaces carried across loops, loop variables, Python string
methods, `tojson`, slicing, inline ifs and string concatenation.
"""
import json
import os

from transformers.utils.chat_template_utils import _compile_jinja_template

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, "tests", "fixtures", "chat-templates")
OUT = os.path.join(ROOT, "tests", "fixtures", "chat-template-golden.json")

CASES = {
    "one-user": [{"role": "user", "content": "Hello there"}],
    "system-multi": [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "Hi  there, friend"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "unicode": [{"role": "user", "content": "Grüße 東京 🚀 \"quoted\" <b>tags</b>\nsecond line"}],
    "bad-order": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}],
}


def main():
    out = {}
    for name in sorted(os.listdir(TEMPLATES)):
        with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
            compiled = _compile_jinja_template(f.read())
        out[name] = {}
        for case, messages in CASES.items():
            for agp in (False, True):
                key = f"{case}/{'prompt' if agp else 'plain'}"
                try:
                    out[name][key] = {"text": compiled.render(messages=messages, add_generation_prompt=agp,
                                                               bos_token="<s>", eos_token="</s>")}
                except Exception as e:  # raise_exception in the template
                    out[name][key] = {"error": str(e)}
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
