"""Parallel reasoning on GSM8K test: greedy, full self-consistency, ESC, DeepConf, DeepPrune in one run.

    python benchmarks/reason.py --model smollm2-135m --limit 10 --n 8 --max-new-tokens 128 \
        --judge benchmarks/results/reason/judge-smollm2.safetensors

Writes benchmarks/results/reason/gsm8k-<model>.json and benchmarks/results/sections/52-reasoning.md.
Every method samples with the same settings and seeds (trace i of question q: seed 1000 q + i), so
pruned traces are prefixes of the full run's traces and "agreement with the full-N vote" is exact.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--judge", default=None)
    ap.add_argument("--methods", default="greedy,sc,esc:window=4,deepconf:low,deepconf:high,deepprune")
    a = ap.parse_args()
    torch.set_num_threads(1)
    import prunekit as pk
    from prunekit.decoding.reason import reason
    from prunekit.decoding.reason_cli import load_questions

    model, tok = pk.load_model(a.model, dtype="float32")
    qs, kind = load_questions("gsm8k", a.limit)
    methods = a.methods.split(",")
    rows: dict[str, dict] = {}
    per_q: dict[str, list] = {}
    for m in methods:
        if m == "deepprune":
            if not a.judge:
                continue
            spec = f"deepprune:{a.judge}"
        else:
            spec = None if m in ("sc", "greedy") else m
        n, temp = (1, 0.0) if m == "greedy" else (a.n, a.temperature)
        res = []
        w0, c0 = time.perf_counter(), time.process_time()
        for i, (q, gold) in enumerate(qs):
            r = reason(model, tok, q, n=n, prune=spec, max_new_tokens=a.max_new_tokens, temperature=temp,
                       top_p=a.top_p, seed=1000 * i, kind=kind)  # fmt: skip
            res.append({"answer": r.answer, "gold": gold, "tokens": r.stats.tokens, "rows": r.stats.rows,
                        "forwards": r.stats.forwards, "stopped": sum(t.stopped for t in r.traces),
                        "judge_seconds": r.stats.judge_seconds})  # fmt: skip
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        per_q[m] = res
        rows[m] = {"method": m, "accuracy": sum(x["answer"] == x["gold"] for x in res) / len(res),
                   "tokens": sum(x["tokens"] for x in res), "forwards": sum(x["forwards"] for x in res),
                   "stopped": sum(x["stopped"] for x in res), "wall_s": wall, "cpu_s": cpu,
                   "judge_s": sum(x["judge_seconds"] for x in res)}  # fmt: skip
        print(json.dumps(rows[m]), flush=True)
    full = per_q.get("sc")
    for m, r in rows.items():
        if full:
            r["agree_with_sc"] = sum(x["answer"] == y["answer"] for x, y in zip(per_q[m], full)) / len(full)
            r["token_saving"] = 1 - r["tokens"] / rows["sc"]["tokens"]
            r["wall_saving"] = 1 - r["wall_s"] / rows["sc"]["wall_s"]
    out = ROOT / "benchmarks" / "results" / "reason" / f"gsm8k-{a.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = {"model": a.model, "questions": len(qs), "n": a.n, "max_new_tokens": a.max_new_tokens,
           "temperature": a.temperature, "top_p": a.top_p, "judge": a.judge, "threads": 1,
           "cpu": os.cpu_count()}  # fmt: skip
    out.write_text(json.dumps({"config": cfg, "methods": rows, "per_question": per_q}, indent=1))
    cmd = (f"python benchmarks/reason.py --model {a.model} --limit {a.limit} --n {a.n} --max-new-tokens "
           f"{a.max_new_tokens}" + (f" --judge {a.judge}" if a.judge else "")
           + (f" --methods {a.methods}" if a.methods != ap.get_default("methods") else ""))  # fmt: skip
    lines = ["## Parallel reasoning: trace pruning (DeepPrune, ESC, DeepConf)", "",
             f"Protocol: GSM8K test, first {len(qs)} questions, {a.model} (float32, 1 thread), N = {a.n} traces, "
             f"temperature {a.temperature}, top-p {a.top_p}, at most {a.max_new_tokens} new tokens a trace, chat "
             "template + \"reason step by step ... \\boxed{}\"; trace i of question q sampled with seed 1000q+i "
             "(identical across methods). Accuracy = voted answer equals the `#### N` gold (canonical number); "
             "agreement = same voted answer as full self-consistency; tokens = generated tokens, all traces; "
             "forwards = batched decode steps. Greedy = one trace at temperature 0.", "",
             f"```\n{cmd}\n```", "",
             "| method | accuracy | agree w/ SC | tokens | saving | forwards | stopped traces | wall s | CPU s | wall saving |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows.values():
        lines.append(f"| {r['method']} | {r['accuracy']:.2f} | {r.get('agree_with_sc', float('nan')):.2f} | {r['tokens']} | "
                     f"{r.get('token_saving', 0):.0%} | {r['forwards']} | {r['stopped']} | {r['wall_s']:.1f} | "
                     f"{r['cpu_s']:.1f} | {r.get('wall_saving', 0):.0%} |")  # fmt: skip
    sec = ROOT / "benchmarks" / "results" / "sections" / "52-reasoning.md"
    sec.write_text("\n".join(lines) + "\n")
    print(sec.read_text())


if __name__ == "__main__":
    main()
