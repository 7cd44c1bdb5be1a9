"""The reasoning table at issue size, from traces recorded once (benchmarks/reason_traces.py).

    python benchmarks/reason_traces.py --data gsm8k --limit 32          # full SC, test (≈ 66 CPU-min)
    python benchmarks/reason_traces.py --data gsm8k-train --limit 24    # judge training traces (≈ 50 CPU-min)
    prunekit reason qwen2.5-coder-0.5b --data gsm8k --limit 32 --n 1 --temperature 0 --threads 1 --json > greedy.json
    python benchmarks/reason_replay.py judges        # MiniLM and hidden-state judges on the train traces
    python benchmarks/reason_replay.py table --greedy greedy.json [--live 4]

``table`` runs ESC, DeepConf and DeepPrune over the recorded test traces with
``prunekit.decoding.reason.replay`` (exactly the traces, stops and tokens a live run with the same
seeds gives: tests/test_reason.py checks replay == live), and with ``--live Q`` times live runs of full
self-consistency and DeepPrune on the first Q questions to check that saved tokens are saved time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "benchmarks" / "results" / "reason"
MODEL = "qwen2.5-coder-0.5b"
HEADS = ROOT / "src" / "prunekit" / "decoding" / "heads"


def load(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.open()]


def judge_path(enc: str) -> Path:
    return (HEADS / f"deepprune-{MODEL}.safetensors") if enc == "minilm" else RES / f"judge-{MODEL}-hidden.safetensors"


def cmd_judges(a) -> None:
    import prunekit as pk
    from prunekit.decoding.judge import JudgeTrainConfig, fit_judge, model_fingerprint, model_name
    from prunekit.decoding.reason import build_prompt
    from prunekit.decoding.reason_cli import load_questions

    recs = load(RES / f"traces-{MODEL}-gsm8k-train.jsonl")
    model, tok = pk.load_model(MODEL, dtype="float32")
    qs, _ = load_questions("gsm8k-train", len(recs))
    groups = [[(t["tokens"], t["answer"]) for t in r["traces"]] for r in recs]
    prompts = [build_prompt(tok, qs[r["q"]][0]) for r in recs]
    out = {}
    for enc in ("minilm", "hidden"):
        cfg = JudgeTrainConfig(prefixes=(16, 32, 64), encoder=enc, seed=0)
        c0 = time.process_time()
        judge, rep = fit_judge(groups, tok, cfg, model_fp=model_fingerprint(model), model_label=model_name(model),
                               model=model, prompts=prompts)  # fmt: skip
        rep["cpu_s"] = time.process_time() - c0
        judge.meta.update({"questions": len(groups), "data": "gsm8k-train (first 24)", "n": 8, "max_new_tokens": 256,
                           "temperature": 0.7, "top_p": 0.95})  # fmt: skip
        p = judge_path(enc)
        p.parent.mkdir(parents=True, exist_ok=True)
        judge.save(p)
        out[enc] = {**rep, "k": judge.meta["k"], "file": str(p.relative_to(ROOT))}
        print(enc, json.dumps({k: v for k, v in out[enc].items() if k != "generation"}), flush=True)
    (RES / f"judges-{MODEL}.json").write_text(json.dumps(out, indent=1, default=str))


def cmd_table(a) -> None:
    from prunekit.decoding.reason import build_prompt, replay
    from prunekit.models import load_model
    from prunekit.decoding.reason_cli import load_questions

    recs = load(RES / f"traces-{MODEL}-gsm8k.jsonl")
    cfg = recs[0]["config"]
    model, tok = load_model(MODEL, dtype="float32")
    qs, kind = load_questions("gsm8k", len(recs))
    prompts = [build_prompt(tok, qs[r["q"]][0]) for r in recs]
    methods = {"sc": None, "esc:window=4": "esc:window=4", "deepconf:low": "deepconf:low", "deepconf:high": "deepconf:high",
               "deepprune (MiniLM judge)": f"deepprune:{judge_path('minilm')}"}  # fmt: skip
    if a.hidden:  # one extra forward of prompt + k tokens per trace: ~20 CPU-s a question for the 0.5B model
        methods["deepprune (hidden-state judge)"] = f"deepprune:{judge_path('hidden')}"
    torch.set_num_threads(1)
    rows, per_q = {}, {}
    for name, spec in methods.items():
        res = []
        c0 = time.process_time()
        for r, p in zip(recs, prompts):
            out = replay(r["traces"], tok, spec, kind=kind, model=model, prompt_ids=p)
            res.append({"answer": out.answer, "gold": r["gold"], "tokens": out.stats.tokens, "forwards": out.stats.forwards,
                        "stopped": sum(t.stopped for t in out.traces), "judge_s": out.stats.judge_seconds})  # fmt: skip
        per_q[name] = res
        rows[name] = {"method": name, "accuracy": sum(x["answer"] == x["gold"] for x in res) / len(res),
                      "tokens": sum(x["tokens"] for x in res), "forwards": sum(x["forwards"] for x in res),
                      "stopped": sum(x["stopped"] for x in res), "judge_s": sum(x["judge_s"] for x in res),
                      "replay_cpu_s": time.process_time() - c0}  # fmt: skip
        print(json.dumps(rows[name]), flush=True)
    sc = per_q["sc"]
    for name, r in rows.items():
        r["agree_with_sc"] = sum(x["answer"] == y["answer"] for x, y in zip(per_q[name], sc)) / len(sc)
        r["token_saving"] = 1 - r["tokens"] / rows["sc"]["tokens"]
    rows["sc"]["wall_s"] = sum(r["wall_s"] for r in recs)
    rows["sc"]["cpu_s"] = sum(r["cpu_s"] for r in recs)
    greedy = read_greedy(a.greedy, rows, sc)
    live = {}
    if a.live:
        from prunekit.decoding.reason import reason

        for name in ("sc", "deepprune (MiniLM judge)"):
            w0, c0, toks, differ = time.perf_counter(), time.process_time(), 0, 0
            for i in range(a.live):
                out = reason(model, tok, qs[i][0], n=cfg["n"], prune=methods[name], max_new_tokens=cfg["max_new_tokens"],
                             temperature=cfg["temperature"], top_p=cfg["top_p"], seed=1000 * i, kind=kind)  # fmt: skip
                toks += out.stats.tokens
                differ += out.stats.tokens != per_q[name][i]["tokens"]
            live[name] = {"tokens": toks, "wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0,
                          "questions_differing_from_replay": differ}  # fmt: skip
            print(name, json.dumps(live[name]), flush=True)
    judges = json.loads((RES / f"judges-{MODEL}.json").read_text()) if (RES / f"judges-{MODEL}.json").is_file() else {}
    (RES / f"gsm8k-{MODEL}-replay.json").write_text(json.dumps({"config": cfg, "questions": len(recs), "methods": rows,
                                                                "greedy": greedy, "live": live, "judges": judges,
                                                                "per_question": per_q}, indent=1))  # fmt: skip
    write_section(cfg, len(recs), rows, greedy, live, judges, a)


def read_greedy(path, rows, sc):
    if not path or not Path(path).is_file():
        return None
    g = json.loads(Path(path).read_text().strip().splitlines()[-1])
    return {"method": "greedy (1 trace, T=0)", "accuracy": g["accuracy"], "tokens": g["tokens"],
            "forwards": g["forwards"], "stopped": 0, "wall_s": g["seconds"],
            "agree_with_sc": sum(x["answer"] == y["answer"] for x, y in zip(g["results"], sc)) / len(sc),
            "token_saving": 1 - g["tokens"] / rows["sc"]["tokens"]}  # fmt: skip


def cmd_section(a) -> None:
    """Rewrite the section from the saved table JSON (adding the greedy run when it is given)."""
    d = json.loads((RES / f"gsm8k-{MODEL}-replay.json").read_text())
    greedy = read_greedy(a.greedy, d["methods"], d["per_question"]["sc"]) or d.get("greedy")
    if greedy:
        d["greedy"] = greedy
        (RES / f"gsm8k-{MODEL}-replay.json").write_text(json.dumps(d, indent=1))
    a.live = a.live or (4 if d.get("live") else 0)
    write_section(d["config"], d["questions"], d["methods"], greedy, d.get("live", {}), d.get("judges", {}), a)


def write_section(cfg, nq, rows, greedy, live, judges, a) -> None:
    L = ["## Parallel reasoning: trace pruning (DeepPrune, ESC, DeepConf)", "",
         f"Protocol: GSM8K test, first {nq} questions; {MODEL} (Qwen2.5-Coder-0.5B-Instruct, float32, 1 thread); "
         f"N = {cfg['n']} traces, temperature {cfg['temperature']}, top-p {cfg['top_p']}, at most "
         f"{cfg['max_new_tokens']} new tokens a trace; chat template + \"reason step by step ... \\boxed{{}}\"; trace i "
         "of question q seeded 1000q+i, identical across methods. Full self-consistency (SC) was generated once "
         "(`benchmarks/reason_traces.py`); ESC, DeepConf and DeepPrune ran over those traces with "
         "`prunekit.decoding.reason.replay`, which gives exactly the stops, tokens and votes of a live run with the "
         "same seeds (a pruned trace is a prefix of its full trace; `tests/test_reason.py` asserts replay == live, "
         "and the live rows below re-check it on real weights). Accuracy: voted answer = the `#### N` gold; "
         "agreement: same vote as SC; tokens: generated tokens over all traces; forwards: batched decode steps. "
         "Judges trained on GSM8K **train** traces only (first 24 questions, same sampling).", "",
         "```", "python benchmarks/reason_traces.py --data gsm8k --limit 32",
         "python benchmarks/reason_traces.py --data gsm8k-train --limit 24",
         "prunekit reason qwen2.5-coder-0.5b --data gsm8k --limit 32 --n 1 --temperature 0 --threads 1 --json > greedy.json",
         "python benchmarks/reason_replay.py judges",
         f"python benchmarks/reason_replay.py table --live {a.live}",
         "python benchmarks/reason_replay.py section --greedy benchmarks/results/reason/greedy-qwen2.5-coder-0.5b.json",
         "```", "",
         "| method | accuracy | agree w/ SC | tokens | token saving | forwards | stopped traces | judge s |",
         "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    allrows = ([greedy] if greedy else []) + list(rows.values())
    for r in allrows:
        L.append(f"| {r['method']} | {r['accuracy']:.3f} | {r['agree_with_sc']:.2f} | {r['tokens']} | "
                 f"{r['token_saving']:.0%} | {r['forwards']} | {r['stopped']} | {r.get('judge_s', 0):.1f} |")  # fmt: skip
    L += ["", f"SC generation: {rows['sc']['wall_s']:.0f} s wall, {rows['sc']['cpu_s']:.0f} CPU-s "
          f"({rows['sc']['tokens'] / rows['sc']['wall_s']:.1f} tokens/s, batch of 8 on one thread)."]
    if live:
        s, d = live["sc"], live["deepprune (MiniLM judge)"]
        ts, ws = 1 - d["tokens"] / s["tokens"], 1 - d["wall_s"] / s["wall_s"]
        L += ["", f"### Saved tokens as saved time (live runs, first {a.live} questions, same seeds, in turn)", "",
              "| method | tokens | wall s | CPU s |", "|---|---:|---:|---:|",
              f"| sc | {s['tokens']} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} |",
              f"| deepprune (MiniLM judge) | {d['tokens']} | {d['wall_s']:.1f} | {d['cpu_s']:.1f} |", "",
              f"Token saving {ts:.0%}, wall saving {ws:.0%}: {ws / ts if ts > 0 else float('nan'):.2f} x the token saving "
              "(target ≥ 0.8). Questions whose live token count differs from the replay: "
              f"{s['questions_differing_from_replay']} (sc), {d['questions_differing_from_replay']} (deepprune)."]  # fmt: skip
    if judges:
        L += ["", "### The judge: AUROC on pairs from held-out train questions", "",
              "Pairs of partial traces of one question, label = the complete traces' answers agree; held out: the last "
              "25% of the 24 train questions (never the test questions). Focal loss (γ = 2) + minority oversampling; "
              "cosine = the raw cosine of the two prefix representations.", "",
              "| judge | k = 16 | k = 32 | k = 64 | cosine k=16 / 32 / 64 | train pairs | held-out pairs | same-answer rate | CPU s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for enc, r in judges.items():
            au, co = r["auroc"], r["cosine_auroc"]
            g = lambda d, k: d.get(str(k), d.get(k, float("nan")))  # noqa: E731
            L.append(f"| {enc} | {g(au, 16):.3f} | {g(au, 32):.3f} | {g(au, 64):.3f} | "
                     f"{g(co, 16):.2f} / {g(co, 32):.2f} / {g(co, 64):.2f} | {r['train_pairs']} | {r['heldout_pairs']} | "
                     f"{r['train_same_rate']:.2f} | {r['cpu_s']:.0f} |")  # fmt: skip
    dp = rows.get("deepprune (MiniLM judge)")
    if dp:
        L += ["", "### Targets and reading", "",
              f"- DeepPrune ≥ 60% fewer tokens than SC within 2 points: **missed** ({dp['token_saving']:.0%} fewer, accuracy "
              f"{dp['accuracy']:.3f} vs {rows['sc']['accuracy']:.3f}). The judge it runs is no better than chance (below), so its "
              "stops are close to random: it mostly cuts traces that would have voted with a cluster anyway. Qwen2.5-Coder-0.5B's "
              "traces rarely agree (14% of train pairs reach the same answer; the paper's models agree on > 80%), so there is "
              "little redundancy to prune and the judge has few positive pairs (24 train questions, 504 pairs) to learn from.",
              "- Judge AUROC ≥ 0.80 at ≤ 25% of the trace: **missed** (MiniLM 0.46-0.52, hidden-state 0.44-0.69; the hidden "
              "judge is best at k = 64, 25% of 256 tokens). More training questions are the first thing to try; generating "
              "them costs about 2 CPU-min a question here.",
              "- Saved tokens as saved wall time ≥ 0.8×: **missed** in the live check. Decode on this CPU is bound by reading "
              "the weights once per step, not by batch rows: DeepPrune stops traces but not the longest one, so the decode "
              "steps barely fall (forwards above) and each step with fewer rows is only somewhat cheaper. Wall time follows "
              "the forwards, which only fall when *all* the remaining traces stop (ESC's windows, or a cap on the longest).",
              "- ESC saves 1%: no window of 4 agreed except in 1 question. DeepConf-low saves 36% at a 6-point accuracy cost.",
              "- Not run: MATH500 / AIME (loaders and answer rules exist and are tested), the 1.5B model, N = 16."]  # fmt: skip
    sec = ROOT / "benchmarks" / "results" / "sections" / "52-reasoning.md"
    sec.write_text("\n".join(L) + "\n")
    print(sec.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("judges")
    t = sub.add_parser("table")
    t.add_argument("--greedy", default=None)
    t.add_argument("--live", type=int, default=0)
    t.add_argument("--hidden", action="store_true", help="also replay DeepPrune with the hidden-state judge")
    s = sub.add_parser("section")
    s.add_argument("--greedy", default=None)
    s.add_argument("--live", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    {"judges": cmd_judges, "table": cmd_table, "section": cmd_section}[a.cmd](a)


if __name__ == "__main__":
    main()
