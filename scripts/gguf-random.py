#!/usr/bin/env python3
"""A GGUF model's shape without its weights, and back: for carrying a model's exact layout to a machine the file
itself cannot reach (the GPU check), where random weights of the same types and sizes are enough to measure speed
and to compare two devices.

    python3 scripts/gguf-random.py skeleton IN.gguf OUT.gguf   # header, metadata (tokenizer included) and
                                                               # tensor table only: ~1.5 MB for SmolLM2
    python3 scripts/gguf-random.py fill SKELETON[.xz] OUT.gguf [--seed N]
                                                               # the same file with random weights

The weights are random but sane: every block's scales are small finite halves, and norm weights are 1, so a
forward pass stays finite. `fill` needs numpy.
"""

import argparse
import os
import lzma
import struct
import sys

# ggml type → (values per block, bytes per block, offsets of f16 scales in a block and their values)
TYPES = {
    0: ("F32", 1, 4, []),
    1: ("F16", 1, 2, []),
    30: ("BF16", 1, 2, []),
    2: ("Q4_0", 32, 18, [(0, 0.004)]),
    3: ("Q4_1", 32, 20, [(0, 0.004), (2, -0.03)]),
    6: ("Q5_0", 32, 22, [(0, 0.002)]),
    7: ("Q5_1", 32, 24, [(0, 0.002), (2, -0.03)]),
    8: ("Q8_0", 32, 34, [(0, 0.0002)]),
    10: ("Q2_K", 256, 84, [(80, 0.001), (82, 0.001)]),
    11: ("Q3_K", 256, 110, [(108, 0.0005)]),
    12: ("Q4_K", 256, 144, [(0, 0.0005), (2, 0.0005)]),
    13: ("Q5_K", 256, 176, [(0, 0.0003), (2, 0.0003)]),
    14: ("Q6_K", 256, 210, [(208, 0.0002)]),
}
# GGUF metadata value types: fixed sizes (struct formats); 8 is a string, 9 an array.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return v[0]

    def string(self):
        n = self.take("Q")
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s.decode("utf-8", "replace")

    def value(self, t):
        if t in SCALARS:
            return self.take(SCALARS[t])
        if t == 8:
            return self.string()
        if t == 9:
            inner, n = self.take("I"), self.take("Q")
            return [self.value(inner) for _ in range(n)]
        raise ValueError(f"unknown metadata type {t}")


def parse(data):
    """(metadata, tensors as (name, dims, type, offset), start of the data section)."""
    r = Reader(data)
    if data[:4] != b"GGUF":
        sys.exit("error: not a GGUF file")
    r.pos = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    if version < 2:
        sys.exit(f"error: GGUF version {version} is not supported")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.take("I"))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.take("Q") for _ in range(r.take("I"))]
        tensors.append((name, dims, r.take("I"), r.take("Q")))
    align = int(meta.get("general.alignment", 32))
    return meta, tensors, (r.pos + align - 1) // align * align


def count(dims):
    n = 1
    for d in dims:
        n *= d
    return n


def nbytes(dims, t):
    if t not in TYPES:
        sys.exit(f"error: tensor type {t} is not supported here")
    _, per, size, _ = TYPES[t]
    return count(dims) // per * size


def random_tensor(rng, name, dims, t):
    import numpy as np

    kind, per, size, scales = TYPES[t]
    n = count(dims)
    if per == 1:
        values = np.ones(n, np.float32) if "norm" in name else rng.normal(0, 0.02, n).astype(np.float32)
        if kind == "F32":
            return values.tobytes()
        if kind == "F16":
            return values.astype(np.float16).tobytes()
        return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()  # BF16
    blocks = rng.integers(0, 256, (n // per, size), dtype=np.uint8)
    for off, scale in scales:
        blocks[:, off:off + 2] = np.frombuffer(np.float16(scale).tobytes(), np.uint8)
    return blocks.tobytes()


def skeleton(src, dst):
    with open(src, "rb") as f:
        head = f.read(64 << 20)
    _, tensors, start = parse(head)
    with open(dst, "wb") as f:
        f.write(head[:start])
    print(f"{dst}: {start} bytes of header, {len(tensors)} tensors")


def fill(src, dst, seed):
    opener = lzma.open if src.endswith(".xz") else open
    with opener(src, "rb") as f:
        head = f.read()
    _, tensors, start = parse(head)
    import numpy as np

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(dst, "wb") as f:
        f.write(head[:start])
        pos = 0
        for name, dims, t, off in sorted(tensors, key=lambda x: x[3]):
            if off < pos:
                sys.exit(f"error: tensor {name} overlaps the one before it")
            f.write(b"\0" * (off - pos))
            data = random_tensor(rng, name, dims, t)
            assert len(data) == nbytes(dims, t), name
            f.write(data)
            pos = off + len(data)
    print(f"{dst}: {len(tensors)} tensors of random weights, {start + pos} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("skeleton")
    s.add_argument("src")
    s.add_argument("dst")
    f = sub.add_parser("fill")
    f.add_argument("src")
    f.add_argument("dst")
    f.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.cmd == "skeleton":
        skeleton(a.src, a.dst)
    else:
        fill(a.src, a.dst, a.seed)


if __name__ == "__main__":
    main()
