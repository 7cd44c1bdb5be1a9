"""Record full self-consistency traces once, for the reasoning benchmark and the DeepPrune judge.

    python benchmarks/reason_traces.py --model qwen2.5-coder-0.5b --data gsm8k --limit 32 --n 8
    python benchmarks/reason_traces.py --model qwen2.5-coder-0.5b --data gsm8k-train --limit 24 --n 8

Each question is one ``prunekit.decoding.reason.reason(..., prune=None)`` call (N traces batched, trace
i of question q seeded ``1000 q + i``, as ``benchmarks/reason.py`` and ``train-judge`` seed them), and
one JSON line in ``benchmarks/results/reason/traces-<model>-<data>.jsonl``: every trace's tokens,
token confidences, text and answer, with the call's wall and CPU seconds. The file is appended a
question at a time, so a killed run resumes where it stopped. ``benchmarks/reason.py replay`` then
runs ESC, DeepConf and DeepPrune on these traces with ``prunekit.decoding.reason.replay``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def traces_path(model: str, data: str) -> Path:
    return ROOT / "benchmarks" / "results" / "reason" / f"traces-{model}-{data}.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--data", default="gsm8k")
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    a = ap.parse_args()
    torch.set_num_threads(1)
    import prunekit as pk
    from prunekit.decoding.reason import build_prompt, reason
    from prunekit.decoding.reason_cli import load_questions
    from tqdm import tqdm

    out = traces_path(a.model, a.data)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = sum(1 for _ in out.open()) if out.is_file() else 0
    qs, kind = load_questions(a.data, a.limit)
    if done >= len(qs):
        print(f"{out}: {done} questions recorded already")
        return
    model, tok = pk.load_model(a.model, dtype="float32")
    cfg = {"model": a.model, "data": a.data, "n": a.n, "max_new_tokens": a.max_new_tokens,
           "temperature": a.temperature, "top_p": a.top_p, "kind": kind, "threads": 1}  # fmt: skip
    with out.open("a") as fh:
        for i in tqdm(range(done, len(qs)), desc=f"traces {a.data}", unit="q"):
            q, gold = qs[i]
            w0, c0 = time.perf_counter(), time.process_time()
            r = reason(model, tok, q, n=a.n, prune=None, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                       top_p=a.top_p, seed=1000 * i, kind=kind)  # fmt: skip
            rec = {"q": i, "gold": gold, "answer": r.answer, "prompt_tokens": len(build_prompt(tok, q)),
                   "wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0, "config": cfg,
                   "tokens": r.stats.tokens, "forwards": r.stats.forwards,
                   "traces": [{"index": t.index, "seed": t.seed, "tokens": t.tokens, "confidences": t.confidences,
                               "why": t.why, "text": t.text, "answer": t.answer} for t in r.traces]}  # fmt: skip
            fh.write(json.dumps(rec) + "\n")
            fh.flush()


if __name__ == "__main__":
    main()
