"""Runs every example of the documentation that talks to a rill server, against the running test server.

The markdown file is RILL_DOCS (scripts/sdk-test.sh passes its argument; default README.md). Every `sh` or
`python` block that addresses the server (`127.0.0.1:8080` or `localhost:8080`) is run with that address replaced
by the test server's, under a timeout, and must exit 0 and print output with no error object in it. Blocks that do
not address the server (installing, building, starting rill) and blocks in other languages are not run.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, base_url

ADDRESSES = ("127.0.0.1:8080", "localhost:8080")
RUNNERS = {"sh": "bash", "bash": "bash", "shell": "bash", "python": "python", "py": "python"}
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)


def docs_path() -> Path:
    p = Path(os.environ.get("RILL_DOCS", "README.md"))
    return p if p.is_absolute() else ROOT / p


def blocks():
    text = docs_path().read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        lang = m.group(1).lower()
        if lang in RUNNERS and any(addr in m.group(2) for addr in ADDRESSES):
            heading = ([h for h in re.findall(r"^#+ (.+)$", text[: m.start()], re.M)] or ["top"])[-1]
            found.append(pytest.param(RUNNERS[lang], m.group(2), id=f"{heading}-{len(found)}-{lang}"))
    return found


BLOCKS = blocks()


def test_the_docs_have_runnable_blocks():
    langs = {p.values[0] for p in BLOCKS}
    assert langs == {"bash", "python"}, f"{docs_path()} should show both curl and SDK examples; found {langs}"


@pytest.mark.parametrize("runner,code", BLOCKS)
def test_block_runs(runner, code):
    host = base_url().split("://", 1)[1]
    for addr in ADDRESSES:
        code = code.replace(addr, host)
    cmd = ["bash", "-euo", "pipefail", "-c", code] if runner == "bash" else [sys.executable, "-c", code]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert out.stdout.strip(), f"no output\n{out.stderr}"
    assert '"error"' not in out.stdout, out.stdout
