#!/usr/bin/env python3
"""Two rules of rill's sources, checked on src/ (run by scripts/test.sh); prints each breach and exits 1 if any.

1. Every `unsafe fn` states its contract: its doc comment has a `# Safety` section. Methods of a trait
   implementation are exempt (the trait's declaration carries the contract, and is checked); everything else,
   private helpers and macro-generated kernels included, is not.
2. Layers import downward only: the CLI (`cli`, `config`) → the HTTP API (`api`) → the engine (`engine`) → loading
   (`load`) → the model (`model`) → the worker pool (`pool`). `tokenizer`, `sched`, `time`, `panic` and `bench`
   are leaves any layer may use, and they import no layer above them.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
UNSAFE_FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?unsafe\s+(extern\s+\"[^\"]*\"\s+)?fn\s+([\w$]+)")
TRAIT_IMPL = re.compile(r"^\s*(unsafe\s+)?impl\b.*\bfor\b")


def code_of(line: str) -> str:
    """The line without its `//` comment and string literals (enough for brace counting here)."""
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split("//", 1)[0]


def doc_above(lines: list[str], i: int) -> str:
    """The doc comment (and attributes) right above line `i`."""
    doc = []
    j = i - 1
    while j >= 0:
        s = lines[j].strip()
        if s.startswith("///") or s.startswith("#[") or s.startswith("#!["):
            doc.append(s)
            j -= 1
        elif s.endswith(")]") or s.endswith(","):  # the tail of a multi-line attribute
            doc.append(s)
            j -= 1
        else:
            break
    return "\n".join(doc)


def offenders(path: pathlib.Path) -> list[str]:
    lines = path.read_text().split("\n")
    found = []
    depth = 0
    trait_impls = []  # depths at which a trait implementation's block opened
    pending_impl = False
    for i, line in enumerate(lines):
        code = code_of(line)
        if TRAIT_IMPL.match(code):
            pending_impl = True
        m = UNSAFE_FN.match(code)
        if m and not trait_impls and "# Safety" not in doc_above(lines, i):
            found.append(f"{path.relative_to(ROOT)}:{i + 1}: {m.group(5)}")
        for ch in code:
            if ch == "{":
                if pending_impl:
                    trait_impls.append(depth)
                    pending_impl = False
                depth += 1
            elif ch == "}":
                depth -= 1
                if trait_impls and trait_impls[-1] == depth:
                    trait_impls.pop()
        if pending_impl and code.rstrip().endswith(";"):
            pending_impl = False
    return found


# What each top-level module may not import (`crate::NAME`).
FORBIDDEN = {
    "api": {"cli", "config"},
    "engine": {"cli", "config", "api"},
    "load": {"cli", "config", "api", "engine"},
    "model": {"cli", "config", "api", "engine", "load"},
    "pool": {"cli", "config", "api", "engine", "load", "model"},
}
for leaf in ("tokenizer", "sched", "time", "panic", "bench"):
    FORBIDDEN[leaf] = {"cli", "config", "api", "engine", "load", "model", "pool"}
CRATE_PATH = re.compile(r"\bcrate::([a-z_]+)")


def upward_imports(path: pathlib.Path) -> list[str]:
    """`crate::X` paths in `path` that name a layer above the file's own."""
    layer = path.relative_to(ROOT / "src").parts[0].removesuffix(".rs")
    banned = FORBIDDEN.get(layer, set())
    found = []
    for i, line in enumerate(path.read_text().split("\n")):
        code = code_of(line)
        for name in CRATE_PATH.findall(code):
            if name in banned:
                found.append(f"{path.relative_to(ROOT)}:{i + 1}: `{layer}` imports `crate::{name}`, a layer above it")
    return found


def main() -> int:
    files = sorted((ROOT / "src").rglob("*.rs"))
    bad = [f"{o}: unsafe fn without a `# Safety` section in its doc comment" for p in files for o in offenders(p)]
    bad += [o for p in files for o in upward_imports(p)]
    for o in bad:
        print(o)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
