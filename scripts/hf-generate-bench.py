#!/usr/bin/env python3
"""Tokens per second of HF transformers' greedy `generate` on a checkpoint: the baseline rill's GPU figures are
compared with (scripts/gpu-check.sh runs it on the same GPU and checkpoint).

    python3 scripts/hf-generate-bench.py models/gpt2-124m-shape --device cuda --batch 1,64 --dtype f32,bf16

Each row: the batch of identical 16-token prompts generates exactly --tokens new tokens (min_new_tokens), after
one untimed warm-up run; tokens/s is batch × tokens over the wall time of `generate`, prefill included, the median
of --rounds runs. Prints one table line per (dtype, batch) and, with --json, the rows as JSON. Needs torch and
transformers.
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
PROMPT = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 632, 373, 257, 3621, 1110, 11]


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(model, batch, tokens, device):
    ids = torch.tensor([PROMPT] * batch, device=device)
    mask = torch.ones_like(ids)
    sync(device)
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                         pad_token_id=0)
    sync(device)
    elapsed = time.perf_counter() - t0
    assert out.shape == (batch, len(PROMPT) + tokens), out.shape
    return batch * tokens / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--dtype", default="f32,bf16")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    hf_logging.disable_progress_bar()
    rows = []
    for name in a.dtype.split(","):
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=DTYPES[name]).to(a.device).eval()
        for batch in (int(b) for b in a.batch.split(",")):
            with torch.inference_mode():
                run(model, batch, min(a.tokens, 8), a.device)
                rates = [run(model, batch, a.tokens, a.device) for _ in range(a.rounds)]
            row = {"dtype": name, "batch": batch, "tokens": a.tokens, "tok_s": statistics.median(rates)}
            rows.append(row)
            print(f"transformers {name:>5} batch {batch:>3}: {row['tok_s']:10.1f} tok/s "
                  f"({a.tokens} new tokens per sequence, median of {a.rounds})", flush=True)
        del model
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
