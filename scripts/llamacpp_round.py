"""One timing round of llama.cpp (llama-cpp-python) for scripts/bench-vs-llamacpp.sh.

Loads SmolLM2 Q4_1, renders the chat prompt with the GGUF's own template, runs a short warm-up, then times the
prompt evaluation and TOKENS greedy decode steps (argmax of the last logits, EOS not special). Prints
"<prompt_ms> <decode_tok_s>".
"""
import argparse
import time

import jinja2
import llama_cpp
import llama_cpp.llama_cpp as L
import llamacpp_plain
import numpy as np

GGUF = "models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf"


def load(threads, model=GGUF):
    llamacpp_plain.disable_extra_bufts()
    return llama_cpp.Llama(model_path=model, n_ctx=2048, n_batch=512, n_threads=threads,
                           n_threads_batch=threads, logits_all=False, verbose=False)


def last_logits(llm):
    ptr = L.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--user", default="What is the capital of France?")
    ap.add_argument("--model", default=GGUF)
    ap.add_argument("--raw", action="store_true", help="the --user text is the whole prompt (no chat template)")
    a = ap.parse_args()
    llm = load(a.threads, a.model)
    if a.raw:
        prompt = a.user
    else:
        template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(
            llm.metadata["tokenizer.chat_template"])
        prompt = template.render(messages=[{"role": "user", "content": a.user}], add_generation_prompt=True)
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.eval(ids[:8])  # warm-up
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    tok = int(np.argmax(last_logits(llm)))
    t2 = time.perf_counter()
    for _ in range(a.tokens - 1):
        llm.eval([tok])
        tok = int(np.argmax(last_logits(llm)))
    t3 = time.perf_counter()
    print(f"{(t1 - t0) * 1e3:.1f} {(a.tokens - 1) / (t3 - t2):.1f}")


if __name__ == "__main__":
    main()
