"""Speculative decoding (issue #38): prunekit's tree verifier beside transformers' assisted generation.

    .venv/bin/python benchmarks/decoding.py nodes --target smollm2-135m            # forward time vs tree nodes
    .venv/bin/python benchmarks/decoding.py run --target smollm2-135m \\
        --draft shortgpt50=.bench/drafts/shortgpt50 --tasks xquad,c4,gsm8k,wikitext \\
        --prompts 2 --new 32 --repeats 3 --tag smollm2
    .venv/bin/python benchmarks/decoding.py report                                 # the BENCHMARKS.md section

Protocol: batch 1, greedy, one torch thread, CPU, the same prompts for every method. Tasks:
XQuAD answer generation over its context (the answer copies context text), summaries of C4
documents, GSM8K solutions, free continuation of WikiText-2 (test split). Methods in one run:
plain greedy (``model.generate``, 1.00x), transformers ``generate(assistant_model=DRAFT)`` and
``generate(prompt_lookup_num_tokens=10)``, and prunekit's ``generate`` with ``model(DRAFT)``,
``prompt_lookup(2, 10)``, ``rasd(prompt_lookup, DRAFT)`` (and a datastore where the task has one).
Every method's ids are compared with plain greedy's. Reported: mean accepted length (new tokens
per target forward), target forwards per token, tokens/s (median of the repeats, prefill
included) and the speed-up over plain greedy measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results" / "decoding"
SECTION = HERE / "results" / "sections" / "50-decoding.md"
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))


def _threads():
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


# ---------------------------------------------------------------- prompts


def task_prompts(task: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    if task == "xquad":
        d = json.loads((DATA / "xquad" / "xquad.en.json").read_text())
        paras = [p for art in d["data"] for p in art["paragraphs"]]
        rng.shuffle(paras)
        out = []
        for p in paras[:n]:
            q = p["qas"][0]["question"]
            out.append({"chat": True, "text": f"Context: {p['context']}\n\nQuestion: {q}\n"
                                              "Answer the question with a sentence quoting the context."})
        return out
    if task == "c4":
        f = next((DATA / "c4-sample").glob("*.jsonl"))
        docs = [json.loads(line)["text"] for line in f.read_text().splitlines()[:400]]
        docs = [d for d in docs if 1200 <= len(d) <= 4000]
        rng.shuffle(docs)
        return [{"chat": True, "text": f"Summarize the following text in a few sentences.\n\n{d[:2400]}"} for d in docs[:n]]
    if task == "gsm8k":
        rows = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
        rng.shuffle(rows)
        return [{"chat": True, "text": r["question"] + "\nSolve it step by step."} for r in rows[:n]]
    if task == "wikitext":
        raw = (DATA / "wikitext-2-raw" / "wiki.test.raw").read_text()
        paras = [p.strip() for p in raw.split("\n \n") if 800 <= len(p.strip()) <= 3000 and not p.strip().startswith("=")]
        rng.shuffle(paras)
        return [{"chat": False, "text": p[:1500]} for p in paras[:n]]
    raise SystemExit(f"unknown task {task}")


def task_datastore(task: str) -> Path | None:
    return {"gsm8k": DATA / "gsm8k" / "train.jsonl", "wikitext": DATA / "wikitext-2-raw" / "wiki.valid.raw"}.get(task)


# ---------------------------------------------------------------- nodes table


def cmd_nodes(a) -> None:
    import torch

    import prunekit.decoding as D
    from prunekit.decoding.tree import Tree
    from prunekit.models import load_model

    _threads()
    model, tok = load_model(a.target, dtype=a.dtype)
    rows = []
    prefix = list(range(1000, 1000 + a.prefix))
    sizes = [int(x) for x in a.sizes.split(",")]
    times: dict[int, list[float]] = {n: [] for n in sizes}
    r = D.TreeModel(model)
    r.prefill(prefix)
    for _ in range(a.repeats):  # sizes interleaved: the shared machine's load hits every size alike
        for n in sizes:
            tree = Tree(list(range(2000, 2000 + n)), [-1] + [0] * (n - 1))  # a star: every node on the root
            past = r.past
            t0 = time.perf_counter()
            r.forward_tree(tree)
            times[n].append(time.perf_counter() - t0)
            r.crop(past)
    for n in sizes:
        rows.append({"nodes": n, "seconds_median": statistics.median(times[n]), "seconds_min": min(times[n])})
        print(f"{n:4d} nodes: {statistics.median(times[n]) * 1000:8.1f} ms (min {min(times[n]) * 1000:.1f})", flush=True)
    base = rows[0]["seconds_median"]
    for r in rows:
        r["relative"] = r["seconds_median"] / base
    OUT.mkdir(parents=True, exist_ok=True)
    res = {"target": a.target, "dtype": a.dtype, "prefix": a.prefix, "repeats": a.repeats, "threads": 1, "rows": rows,
           "machine": "CPU shared with two other engineers' jobs"}  # fmt: skip
    (OUT / f"nodes_{a.tag or a.target}.json").write_text(json.dumps(res, indent=1))


# ---------------------------------------------------------------- methods


class _HFStats:
    """Target forwards of a transformers generate() call (a forward hook), the prefill excluded."""

    def __init__(self, forwards: int, new: int):
        self.target_forwards, self.new_tokens = forwards, new
        self.tokens_per_forward = new / forwards if forwards else 0.0
        self.draft_seconds = self.verify_seconds = 0.0


def _hf(model, ids, new, eos, **kw):
    import torch

    calls = [0]
    h = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    x = torch.tensor([ids])
    try:
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=new,
                                 min_new_tokens=0, eos_token_id=eos, pad_token_id=eos[0], temperature=None, top_p=None,
                                 top_k=None, **kw)  # fmt: skip
    finally:
        h.remove()
    got = out[0, len(ids):].tolist()
    # generate's first forward is the prefill, which also yields the first new token: count it as one
    # verification forward, as prunekit counts its root forward (its prefill feeds the prompt minus one)
    return got, _HFStats(calls[0], len(got))


def run_method(name, spec, model, tok, ids, new, eos, tree):
    import prunekit.decoding as D

    kind = spec["kind"]
    if kind == "greedy":
        return _hf(model, ids, new, eos)
    if kind == "hf-assisted":
        return _hf(model, ids, new, eos, assistant_model=spec["draft"])
    if kind == "hf-lookup":
        return _hf(model, ids, new, eos, prompt_lookup_num_tokens=spec.get("tokens", 10))
    r = D.generate(model, tok, ids, draft=spec["make"](), max_new_tokens=new, tree_budget=spec.get("tree", tree),
                   eos_token_id=eos)  # fmt: skip
    return r.ids, r.stats


def build_methods(a, model, tok, drafts, task):
    import prunekit.decoding as D

    m = {"greedy": {"kind": "greedy"}, "hf-lookup": {"kind": "hf-lookup", "tokens": 10}}
    lookup = tuple(int(x) for x in a.lookup.split(":"))
    m["pk-lookup"] = {"kind": "pk", "make": lambda: D.prompt_lookup(*lookup)}
    ds = task_datastore(task) if a.datastore else None
    store = D.datastore(ds) if ds is not None else None
    if store is not None:
        m["pk-lookup+datastore"] = {"kind": "pk", "make": lambda: D.Compose([D.prompt_lookup(*lookup), store])}
    for dn, (dm, _) in drafts.items():
        m[f"hf-assisted:{dn}"] = {"kind": "hf-assisted", "draft": dm}
        md = D.ModelDraft(dm, tok, name=dn, max_depth=a.depth, confidence=a.confidence, width=a.width)
        m[f"pk-model:{dn}"] = {"kind": "pk", "make": (lambda md=md: md)}
        ret = (lambda: [D.prompt_lookup(*lookup), store]) if store is not None else (lambda: D.prompt_lookup(*lookup))
        rs = D.RASD(ret(), md, prune=a.prune, extend_after=None)
        m[f"pk-rasd:{dn}"] = {"kind": "pk", "make": (lambda rs=rs: rs)}
        if a.extend_after:
            rs2 = D.RASD(ret(), md, prune=a.prune, extend_after=a.extend_after)
            m[f"pk-rasd-skip{a.extend_after}:{dn}"] = {"kind": "pk", "make": (lambda rs=rs2: rs)}
    if a.only:
        keep = set(a.only.split(","))
        m = {k: v for k, v in m.items() if k == "greedy" or any(k.startswith(x) for x in keep)}
    return m


def cmd_run(a) -> None:
    import torch

    from prunekit.decoding.generate import _eos_ids, encode_prompt
    from prunekit.models import load_model

    _threads()
    t_start, c_start = time.perf_counter(), _cpu()
    model, tok = load_model(a.target, dtype=a.dtype)
    eos = sorted(_eos_ids(model, tok, None))
    drafts = {}
    for d in a.draft or []:
        name, _, path = d.partition("=")
        drafts[name] = load_model(path or name, dtype=a.dtype)
    results = {"target": a.target, "dtype": a.dtype, "new_tokens": a.new, "tree": a.tree, "repeats": a.repeats,
               "lookup": a.lookup, "depth": a.depth, "confidence": a.confidence, "width": a.width, "prune": a.prune, "extend_after": a.extend_after,
               "drafts": {k: (v[0].prunekit_source.path if hasattr(v[0], "prunekit_source") else k) for k, v in drafts.items()},
               "threads": torch.get_num_threads(), "machine": "CPU, 2 cores shared with two other engineers' jobs",
               "command": " ".join(sys.argv), "tasks": {}}  # fmt: skip
    for task in a.tasks.split(","):
        prompts = task_prompts(task, a.prompts, a.seed)
        methods = build_methods(a, model, tok, drafts, task)
        per = {k: {"tps": [], "identical": 0, "n": 0, "new": 0, "forwards": 0, "draft_s": 0.0, "verify_s": 0.0}
               for k in methods}  # fmt: skip
        for pi, p in enumerate(prompts):
            ids = encode_prompt(tok, p["text"], p["chat"])
            ref = None
            for rep in range(a.repeats):
                for name, spec in methods.items():
                    t0 = time.perf_counter()
                    out, st = run_method(name, spec, model, tok, ids, a.new, eos, a.tree)
                    dt = time.perf_counter() - t0
                    if name == "greedy" and ref is None:
                        ref = out
                    row = per[name]
                    row["tps"].append((pi, rep, len(out) / dt))
                    if rep == 0:
                        row["n"] += 1
                        row["identical"] += int(out == ref)
                        row["new"] += len(out)
                        if st is not None:
                            row["forwards"] += st.target_forwards
                            row["draft_s"] += st.draft_seconds
                            row["verify_s"] += st.verify_seconds
                    print(f"{task} p{pi} r{rep} {name:28s} {len(out) / dt:7.2f} tok/s"
                          + (f"  tau={st.tokens_per_forward:.2f}" if st is not None else "")
                          + ("" if out == ref else "  DIFFERS"), flush=True)  # fmt: skip
            print(f"{task} p{pi}: prompt {len(ids)} tokens, {len(ref)} new", flush=True)
        summary = {}
        for name, row in per.items():
            # per prompt: the median over repeats; then the mean over prompts of the speed-up vs greedy
            med = {pi: statistics.median(v for q, _, v in row["tps"] if q == pi) for pi in range(len(prompts))}
            gmed = {pi: statistics.median(v for q, _, v in per["greedy"]["tps"] if q == pi) for pi in range(len(prompts))}
            summary[name] = {
                "prompts": row["n"], "identical": row["identical"], "new_tokens": row["new"],
                "tokens_per_second": statistics.mean(med.values()),
                "speedup": statistics.mean(med[pi] / gmed[pi] for pi in med),
                "tokens_per_forward": row["new"] / row["forwards"] if row["forwards"] else None,
                "forwards_per_token": row["forwards"] / row["new"] if row["forwards"] else None,
                "draft_seconds": row["draft_s"] or None, "verify_seconds": row["verify_s"] or None,
            }  # fmt: skip
        results["tasks"][task] = {"prompts": len(prompts), "methods": summary}
        OUT.mkdir(parents=True, exist_ok=True)
        results["wall_seconds"] = time.perf_counter() - t_start
        results["cpu_seconds"] = _cpu() - c_start
        (OUT / f"run_{a.tag}.json").write_text(json.dumps(results, indent=1))
        for name, s in summary.items():
            tau = f"{s['tokens_per_forward']:.2f}" if s["tokens_per_forward"] else "–"
            print(f"  {task:9s} {name:28s} {s['identical']}/{s['prompts']} identical  tau {tau:5s}  "
                  f"{s['tokens_per_second']:6.2f} tok/s  {s['speedup']:.2f}x", flush=True)  # fmt: skip
    print(f"wall {time.perf_counter() - t_start:.0f}s cpu {_cpu() - c_start:.0f}s")


# ---------------------------------------------------------------- report


def _fmt(x, f="{:.2f}"):
    return "–" if x is None else f.format(x)


def _alias(path: str) -> str:
    import re

    return re.sub(r".*/\.cache/prunekit/([^/]+)/hf$", r"\1", path)  # a fetched alias, not this machine's path


def cmd_report(a) -> None:
    lines = ["## Speculative decoding: pruned drafts and retrieval trees (RASD), exact", ""]
    lines.append(
        "`prunekit decode` / `prunekit.decoding.generate`: one target forward verifies a token tree (4-D tree mask, "
        "depth position ids, KV cache gathered to the accepted path). Protocol: batch 1, greedy, one torch thread, "
        "CPU (2 cores **shared with two other engineers' jobs**: tokens/s is noisy; the accepted length and target "
        "forwards per token are not), the same prompts for every method, every method's ids compared with plain "
        "greedy's (`identical`). tau = new tokens per target forward (mean accepted length, the target's own token "
        "included); fw/tok = target forwards per generated token; speed-up = tokens/s over plain greedy "
        "(`model.generate`) of the same prompt in the same run, median of the repeats, mean over prompts."
    )
    lines.append("")
    for f in sorted(OUT.glob("nodes_*.json")):
        d = json.loads(f.read_text())
        lines += [f"**Target forward time vs tree nodes** ({d['target']}, {d['dtype']}, {d['prefix']}-token cached prefix, "
                  f"median of {d['repeats']}):", "", "| nodes | ms | × one node |", "|---:|---:|---:|"]  # fmt: skip
        for r in d["rows"]:
            lines.append(f"| {r['nodes']} | {r['seconds_median'] * 1000:.1f} | {r['relative']:.2f} |")
        lines.append("")
    for f in sorted(OUT.glob("run_*.json")):
        d = json.loads(f.read_text())
        lines += [f"**{d['target']}** ({d['dtype']}), {d['new_tokens']} new tokens, tree budget {d['tree']}, "
                  f"lookup {d['lookup']}, draft chain depth ≤ {d['depth']} (stop below p = {d['confidence']}), "
                  f"RASD prune below path p = {d['prune']}; {d['repeats']} repeat(s); "
                  f"wall {d.get('wall_seconds', 0) / 60:.0f} min, CPU {d.get('cpu_seconds', 0) / 60:.0f} min. Drafts: "
                  + ", ".join(f"`{k}` = `{_alias(v)}`" for k, v in d["drafts"].items()), "",
                  f"`{d['command']}`", ""]  # fmt: skip
        tasks = list(d["tasks"])
        head = "| method | " + " | ".join(f"{t} ({d['tasks'][t]['prompts']}) identical · tau · fw/tok · tok/s · ×" for t in tasks) + " |"
        lines += [head, "|---|" + "---|" * len(tasks)]
        names = list(next(iter(d["tasks"].values()))["methods"])
        for n in sorted({n for t in tasks for n in d["tasks"][t]["methods"]}, key=lambda x: (names.index(x) if x in names else 99, x)):
            cells = []
            for t in tasks:
                s = d["tasks"][t]["methods"].get(n)
                if s is None:
                    cells.append("")
                    continue
                cells.append(f"{s['identical']}/{s['prompts']} · {_fmt(s['tokens_per_forward'])} · "
                             f"{_fmt(s['forwards_per_token'])} · {s['tokens_per_second']:.1f} · **{s['speedup']:.2f}×**")  # fmt: skip
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    extra = HERE / "results" / "decoding" / "notes.md"
    if extra.is_file():
        lines += [extra.read_text().strip(), ""]
    SECTION.parent.mkdir(parents=True, exist_ok=True)
    SECTION.write_text("\n".join(lines))
    print(SECTION)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("nodes")
    n.add_argument("--target", default="smollm2-135m")
    n.add_argument("--dtype", default="float32")
    n.add_argument("--prefix", type=int, default=256)
    n.add_argument("--sizes", default="1,2,4,8,16,32,64")
    n.add_argument("--repeats", type=int, default=5)
    n.add_argument("--tag", default=None)
    r = sub.add_parser("run")
    r.add_argument("--target", default="smollm2-135m")
    r.add_argument("--dtype", default="float32")
    r.add_argument("--draft", action="append", help="NAME=MODEL (repeat)")
    r.add_argument("--tasks", default="xquad,c4,gsm8k,wikitext")
    r.add_argument("--prompts", type=int, default=2)
    r.add_argument("--new", type=int, default=32)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--tree", type=int, default=16)
    r.add_argument("--lookup", default="2:10")
    r.add_argument("--depth", type=int, default=8)
    r.add_argument("--confidence", type=float, default=0.3)
    r.add_argument("--width", type=int, default=2)
    r.add_argument("--prune", type=float, default=0.05)
    r.add_argument("--extend-after", type=int, default=0, help="also RASD that skips the draft chain after K agreed retrieved tokens")
    r.add_argument("--datastore", action="store_true", help="add the task's datastore (gsm8k train, wikitext valid)")
    r.add_argument("--only", default=None, help="method name prefixes to keep (greedy always runs)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--tag", required=True)
    sub.add_parser("report")
    a = ap.parse_args()
    {"nodes": cmd_nodes, "run": cmd_run, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
