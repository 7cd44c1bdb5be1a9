"""Prompt search on SmolLM2-135M-Instruct: PromptQuine and ClaPS beside manual / zero-shot / full
k-shot ICL / random deletion, one run, one torch thread. Writes benchmarks/results/prompts/*.json and
benchmarks/results/sections/57-prompts.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prompts.py --tasks sst-2 --seeds 13 --budget 60 --test-limit 200
"""

from __future__ import annotations

import argparse
import json
import random
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="sst-2")
    ap.add_argument("--seeds", default="13")
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--claps-budget", type=int, default=30)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--clusters", type=int, default=16)
    ap.add_argument("--test-limit", type=int, default=200)
    ap.add_argument("--tag", default="smollm2")
    ap.add_argument("--section-only", action="store_true", help="rewrite the markdown from the JSON")
    a = ap.parse_args()
    out = ROOT / "results" / "prompts" / f"{a.tag}.json"
    if a.section_only:
        section(json.loads(out.read_text()))
        return
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    import prunekit as pk
    from prunekit.prompts import PrunedPrompt, Scorer, SearchConfig, load_task, search
    from prunekit.prompts.promptquine import icl_prompt, random_deletion

    model, tok = pk.load_model(a.model)
    model.eval()
    rows = []
    for name in a.tasks.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            task = load_task(name, seed, test_limit=a.test_limit)
            sc = Scorer(model, tok, task)

            def evaluate(method: str, ids: list[int], calls: int, cpu: float, wall: float, **kw) -> dict:
                c0, t0 = time.process_time(), time.perf_counter()
                r = {"task": name, "seed": seed, "method": method, "prompt_tokens": len(ids),
                     "dev": sc(ids, "dev").accuracy, "test": sc(ids, "test").accuracy,
                     "search_calls": calls, "search_cpu_s": cpu, "search_wall_s": wall,
                     "eval_cpu_s": time.process_time() - c0, "prompt": tok.decode(ids), **kw}  # fmt: skip
                print(json.dumps({k: v for k, v in r.items() if k != "prompt"}), flush=True)
                rows.append(r)
                return r

            x = icl_prompt(task, a.k, random.Random(seed), sc.encode)  # PromptQuine's start prompt
            evaluate("zero-shot", [], 0, 0, 0)
            evaluate("manual", sc.encode(task.manual), 0, 0, 0)
            evaluate(f"icl-{a.k}shot", x, 0, 0, 0)
            for method, budget, cfg in (("promptquine", a.budget, SearchConfig(k=a.k)),
                                        ("claps-greedy", a.claps_budget, SearchConfig(clusters=a.clusters, length=2,
                                                                                      keep_fraction=0.25))):  # fmt: skip
                s2 = Scorer(model, tok, task)  # fresh cache: the method pays for every call
                c0, t0 = time.process_time(), time.perf_counter()
                r = search(model, tok, task, method, budget=budget, seed=seed, config=cfg, test=False, scorer=s2)
                cpu, wall = time.process_time() - c0, time.perf_counter() - t0
                ids = PrunedPrompt.from_dict(r.mask, tok).ids if r.mask else tok(r.prompt, add_special_tokens=False)["input_ids"]
                if r.mask:
                    ids = [x[i] for i in r.mask["keep"]]
                evaluate(method, ids, r.extra["search_calls"], cpu, wall, curve=r.curve, extra=r.extra,
                         forwards=s2.forwards, tokens=s2.tokens, keep=r.mask["keep"] if r.mask else None)  # fmt: skip
                if method == "promptquine":
                    z = random_deletion(len(x), len(ids), random.Random(seed))
                    evaluate("random-deletion", [x[i] for i in z], 0, 0, 0)
    res = {"model": a.model, "args": vars(a), "rows": rows}
    out.write_text(json.dumps(res, indent=1))
    print("wrote", out)
    section(res)


def section(res: dict) -> None:
    a = res["args"]
    cmd = (f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prompts.py --tasks {a['tasks']} --seeds {a['seeds']} "
           f"--budget {a['budget']} --claps-budget {a['claps_budget']} --clusters {a['clusters']} "
           f"--test-limit {a['test_limit']} --k {a['k']} --tag {a['tag']}")  # fmt: skip
    L = ["## Prompt search: PromptQuine and ClaPS (prunekit.prompts)", "",
         "`prunekit prompt-search` / `prunekit.prompts.search`, both on the search engine shared with Týr "
         "(`prunekit.search.evolve`). Protocol: verbalised classification (label word = argmax of the next-token "
         "log-prob over the label words, RLPrompt/ClaPS protocol), the 16-shot train/dev split of the seed; the "
         "search's fitness is dev accuracy (ties: mean label margin), PromptQuine's stages are half of dev then all "
         f"of it; test = a fixed subsample of {a['test_limit']} test examples (the same for every row). One LM call = "
         "one prompt scored on one split (batched: the prompt's KV cache shared by all examples, one forward per 64), "
         "cached by prompt hash; *search calls* is the budget spent. Baselines in the same run: zero-shot (empty "
         f"prompt), a hand-written instruction (manual), the full {a['k']}-shot ICL prompt PromptQuine starts from, "
         "and random deletion of that prompt down to PromptQuine's final length (same seed). "
         f"Model {res['model']} (SmolLM2-135M-Instruct), fp32, one torch thread, CPU shared with other jobs "
         "(wall time noisy; calls/forwards/tokens are not).", "",
         f"Reproduce: `{cmd}`", ""]
    for task in dict.fromkeys(r["task"] for r in res["rows"]):
        L += [f"**{task}** (seeds {a['seeds']}):", "",
              "| method | seed | prompt tokens | dev acc | test acc | search calls | LM forwards | tokens | search CPU s | search wall s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            if r["task"] != task:
                continue
            L.append(f"| {r['method']} | {r['seed']} | {r['prompt_tokens']} | {r['dev']:.3f} | {r['test']:.3f} | "
                     f"{r['search_calls']} | {r.get('forwards', '')} | {r.get('tokens', '')} | "
                     f"{r['search_cpu_s']:.0f} | {r['search_wall_s']:.0f} |")  # fmt: skip
        L.append("")
    L += ["Found prompts (decoded; PromptQuine's is stored as kept positions of the ICL prompt):", ""]
    for r in res["rows"]:
        if r["method"] in ("promptquine", "claps-greedy"):
            L.append(f"- {r['task']} seed {r['seed']} {r['method']}: `{r['prompt'][:300]!r}`")
    L.append("")
    p = ROOT / "results" / "sections" / "57-prompts.md"
    p.write_text("\n".join(L) + NOTES)
    print("wrote", p)


NOTES = """Notes (honest):

- One task (SST-2), one seed (13), PromptQuine 60 calls, ClaPS 30: one dev call of SmolLM2-135M costs ~5 CPU-s on one
  thread (32 examples, the 116-token ICL prompt cached), so the whole run is ~10 CPU-min (586 s user, 672 s wall);
  the paper's budgets are thousands of calls. More seeds/tasks: `--seeds 13,21,42 --tasks sst-2,agnews,subj,trec`.
- PromptQuine lifts its own start (4-shot ICL: dev 0.562 → 0.625, test 0.565 → 0.625) and beats random deletion to
  the same length (test 0.535), but after 60 calls it has deleted only 4 of 116 tokens and stays below zero-shot
  (test 0.775): with this 135M model the 4 demos hurt (label bias) and 60 calls is far from the paper's regime.
- ClaPS (16 k-means clusters of the input embeddings, 16 single-token influence probes on train, top 4 kept, greedy
  length 2) finds a 2-token prompt with the best dev accuracy (0.875) but test 0.750, below zero-shot: 32 dev
  examples over-fit a discrete search. The k-means of the 49152×576 embedding matrix (scikit-learn MiniBatchKMeans)
  is ~25 CPU-s of its search time.
- Deviation: PromptQuine's selection is the shared single-elite staged loop (half dev → full dev), not the paper's
  population GA; ClaPS's probe is the single-token prompt.
"""


if __name__ == "__main__":
    main()
