"""Context pruning on XQuAD RAG (issue 37): ``python benchmarks/context.py [--n 60] [--rate 0.5]``.

Protocol: XQuAD English, test-half articles (24-47 in file order; the provence heads were trained on
articles 0-23). For each sampled question (seed 0), BM25 (rank_bm25, stopwords removed) ranks all 240
paragraphs; the top 5 are concatenated in rank order (gold-paragraph recall@5 reported). Reader:
SmolLM2-135M-Instruct (the ``smollm2-135m`` alias), float32, greedy, 16 new tokens, one fixed chat
prompt. Metrics: SQuAD EM/F1 of the generated answer (max over gold answers), teacher-forced gold
answer log-likelihood (first gold answer, summed over its tokens), reader prefill tokens, pruner and
reader seconds. Writes benchmarks/results/context/xquad-rag.json and
benchmarks/results/sections/55-context.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from prunekit.context.rag import PROMPT, exact_match, f1  # noqa: E402  (the xquad-rag task's prompt and SQuAD metrics)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--reader", default="smollm2-135m")
    ap.add_argument("--methods", default="full,random,bm25,similarity,selective-context,provence,provence@T")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/context/xquad-rag.json"))
    ap.add_argument("--section", default=str(ROOT / "benchmarks/results/sections/55-context.md"))
    a = ap.parse_args()
    import torch

    import prunekit.context as C
    from prunekit.context.scorers import bm25_scores, terms
    from prunekit.context.train import load_xquad, paragraphs, questions, split
    from prunekit.models import load_model

    torch.set_num_threads(1)
    arts = load_xquad()
    allp = paragraphs(arts)
    n_train_p = len(paragraphs(split(arts, "train")))
    qs = questions(split(arts, "test"))
    for q in qs:
        q["pid"] += n_train_p  # index among all 240 paragraphs
    random.Random(0).shuffle(qs)  # the first n of one fixed order: a shorter run is a prefix of a longer one
    qs = qs[: a.n]
    docs = [terms(p) for p in allp]
    model, tok = load_model(a.reader)
    methods = a.methods.split(",")
    rows = {m: [] for m in methods}
    recall = 0
    t_all, c_all = time.perf_counter(), time.process_time()
    for qi, q in enumerate(qs):
        s = bm25_scores(terms(q["question"]), docs)
        top = sorted(range(len(allp)), key=lambda i: -s[i])[:5]
        recall += q["pid"] in top
        passages = [allp[i] for i in top]
        for m in methods:
            t0 = time.perf_counter()
            if m == "full":
                ctx, before, after = "\n\n".join(passages), None, None
            else:
                meth, kw = (m, {"rate": a.rate}) if m != "provence@T" else ("provence", {"threshold": 0.1})
                r = C.prune(q["question"], passages, method=meth, reader_tokenizer=tok, lm=(model, tok), **kw)
                ctx, before, after = r.text, r.tokens_before, r.tokens_after
            t_prune = time.perf_counter() - t0
            msgs = [{"role": "user", "content": PROMPT.format(context=ctx, question=q["question"])}]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
            if not isinstance(ids, torch.Tensor):
                ids = ids["input_ids"]
            t1 = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
            t_read = time.perf_counter() - t1
            pred = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().split("\n")[0]
            gold_ids = tok.encode(q["answers"][0], add_special_tokens=False)
            full = torch.cat([ids, torch.tensor([gold_ids])], 1)
            with torch.inference_mode():
                lp = torch.log_softmax(model(input_ids=full).logits[0, ids.shape[1] - 1 : -1].float(), -1)
            ll = lp.gather(1, torch.tensor(gold_ids)[:, None]).sum().item()
            rows[m].append({
                "id": q["id"], "pred": pred, "em": exact_match(pred, q["answers"]),
                "f1": f1(pred, q["answers"]), "ll": ll, "prefill": int(ids.shape[1]),
                "ctx_before": before, "ctx_after": after, "prune_s": t_prune, "read_s": t_read,
                "gold_kept": any(g in ctx for g in q["answers"]),
            })  # fmt: skip
        write(a, rows, recall, qi + 1, t_all, c_all)
        print(f"[{qi + 1}/{len(qs)}] " + " ".join(f"{m}:{rows[m][-1]['f1']:.2f}" for m in methods), flush=True)
    write(a, rows, recall, len(qs), t_all, c_all, final=True)


def write(a, rows, recall, n_q, t_all, c_all, final=False):
    wall, cpu = time.perf_counter() - t_all, time.process_time() - c_all
    n_done = min(len(r) for r in rows.values())
    rows = {m: rs[:n_done] for m, rs in rows.items()}
    summ = {}
    for m, rs in rows.items():
        n = len(rs)
        d = {k: sum(r[k] for r in rs) / n for k in ("em", "f1", "ll", "prefill", "prune_s", "read_s", "gold_kept")}
        if m != "full":
            d["achieved_rate"] = 1 - sum(r["ctx_after"] for r in rs) / sum(r["ctx_before"] for r in rs)
            d["max_rate_miss"] = max(abs((1 - r["ctx_after"] / r["ctx_before"]) - a.rate) for r in rs) if m != "provence@T" else None
        summ[m] = d
    res = {"protocol": __doc__.strip().splitlines()[2:10], "n": n_done, "rate": a.rate, "reader": a.reader,
           "recall@5": recall / n_q, "wall_s": wall, "cpu_s": cpu, "summary": summ, "rows": rows}  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    lines = [
        "## Context pruning: XQuAD RAG (issue 37)", "",
        f"Protocol: XQuAD English, {n_done} questions (the first of a seed-0 shuffle) of the test-half articles (24-47 in file "
        f"order; provence's heads were trained on articles 0-23 with cheap silver labels). Top-5 of all 240 "
        f"paragraphs by BM25, concatenated in rank order: gold-paragraph recall@5 = {100 * recall / n_q:.1f}%. "
        f"Reader {a.reader} (SmolLM2-135M-Instruct, float32 on CPU, 1 thread), greedy, 16 new tokens, one fixed "
        f"chat prompt. Rate = fraction of context tokens removed, counted with the reader's tokenizer; "
        f"`provence@T` = threshold 0.1 (rate chosen per context). EM/F1: SQuAD normalisation, max over gold "
        f"answers; LL: teacher-forced log-likelihood of the first gold answer (nats, higher is better); "
        f"gold kept: a gold answer string survives in the context.", "",
        "```", f"python benchmarks/context.py --n {n_done} --rate {a.rate}", "```", "",
        "| method | rate asked | rate achieved (max miss) | EM | F1 | gold LL | gold kept | prefill tokens | pruner s/q | reader s/q |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, d in summ.items():
        asked = "-" if m == "full" else ("T=0.1" if m == "provence@T" else f"{a.rate:.2f}")
        ach = "0" if m == "full" else f"{d['achieved_rate']:.3f}" + (f" ({d['max_rate_miss']:.3f})" if d.get("max_rate_miss") is not None else "")
        lines.append(f"| {m} | {asked} | {ach} | {100 * d['em']:.1f} | {100 * d['f1']:.1f} | {d['ll']:.2f} | "
                     f"{100 * d['gold_kept']:.0f}% | {d['prefill']:.0f} | {d['prune_s']:.3f} | {d['read_s']:.2f} |")  # fmt: skip
    lines += ["", f"Whole run: wall {wall:.0f} s, CPU {cpu:.0f} s (one thread).", ""]
    Path(a.section).parent.mkdir(parents=True, exist_ok=True)
    Path(a.section).write_text("\n".join(lines))
    if final:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
