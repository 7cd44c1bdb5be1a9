"""SciFact ranking: BM25, MiniLM bi-encoder, the Provence rerank head, and the IDCM cascade
(arXiv 2105.09816) against ``select="all"`` with the same expensive scorer (query likelihood under
SmolLM2-135M-Instruct). Writes benchmarks/results/context/scifact-rank.json and
benchmarks/results/sections/56-ranking.md.

Protocol: SciFact (CC BY-NC 2.0, evaluation only) ``claims_validation.csv`` (the BEIR test claims; the
IDCM student is trained on ``claims_train.csv``), the first ``--n`` claims of a fixed shuffle (seed 0);
relevant = the claim's cited documents (grade 1). Candidates: BM25 (corpus-wide, 5,183 abstracts) top
``--cands``; every method reranks that candidate set. Passages = single sentences (``--window``) of
``title + abstract``. The expensive scores of every passage are computed once (``select="all"``) and
memoised, so each cascade's ranking equals what it would compute itself; its expensive evaluations are
counted by ``rank`` (what it asked for), not by the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Memo:
    def __init__(self, fn):
        self.fn, self.cache, self.computed, self.seconds = fn, {}, 0, 0.0

    def __call__(self, q, ps):
        miss = [p for p in dict.fromkeys(ps) if (q, p) not in self.cache]
        if miss:
            t = time.perf_counter()
            for p, v in zip(miss, self.fn(q, miss)):
                self.cache[(q, p)] = v
            self.seconds += time.perf_counter() - t
            self.computed += len(miss)
        return [self.cache[(q, p)] for p in ps]


def main() -> None:
    import torch

    torch.set_num_threads(1)
    import prunekit.context as C
    from prunekit.context.rank import QueryLikelihood, StudentHead, features, ndcg_at, recall_at
    from prunekit.context.rank_train import CorpusBM25, load_claims, load_corpus

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--cands", type=int, default=10)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--ks", default="1,2,3")
    ap.add_argument("--lm", default="smollm2-135m")
    a = ap.parse_args()
    ks = [int(x) for x in a.ks.split(",")]
    t0, c0 = time.perf_counter(), cpu()
    docs = load_corpus()
    claims = load_claims("validation")
    random.Random(0).shuffle(claims)
    claims = claims[: a.n]
    bm = CorpusBM25(docs)
    ql = Memo(QueryLikelihood(a.lm))
    rows: dict[str, dict] = {}

    def add(name, order_ids, rel, evals=None, secs=0.0):
        r = rows.setdefault(name, {"ndcg10": [], "recall100": [], "evals": [], "seconds": []})
        g = {d: 1.0 for d in rel}
        r["ndcg10"].append(ndcg_at(order_ids, g, 10))
        r["recall100"].append(recall_at(order_ids, g, 100))
        r["evals"].append(evals)
        r["seconds"].append(secs)

    from tqdm import tqdm

    full_recall, seen = [], []
    for _, claim, rel in tqdm(claims, desc="claims"):
        t = time.perf_counter()
        top = bm.top(claim, max(100, a.cands))
        full_recall.append(recall_at([d for d, _ in top], {d: 1.0 for d in rel}, 100))
        cand = [d for d, _ in top[: a.cands]]
        add("BM25", cand, rel, secs=time.perf_counter() - t)
        texts = [docs[d] for d in cand]
        t = time.perf_counter()
        f = features(claim, texts)
        o = sorted(range(len(cand)), key=lambda i: -f[i][1])
        add("MiniLM bi-encoder (cosine)", [cand[i] for i in o], rel, secs=time.perf_counter() - t)
        t = time.perf_counter()
        pr = C.prune(claim, texts, method="provence", reader_tokenizer=a.lm)
        o = sorted(range(len(cand)), key=lambda i: -pr.passage_scores[i])
        add("Provence rerank head", [cand[i] for i in o], rel, secs=time.perf_counter() - t)
        r = C.rank(claim, texts, select="all", scorer=ql, window=a.window)
        add("select=all (QL on every passage)", [cand[i] for i in r.order], rel, r.expensive_evals, r.seconds)
        seen.append((claim, texts, cand, rel))
    for sel in ("idcm", "bm25", "minilm"):  # a second pass: the student head is read now, after the teacher pass
        for k in ks:
            for claim, texts, cand, rel in seen:
                r = C.rank(claim, texts, select=sel, k=k, scorer=ql, window=a.window)
                add(f"{sel} k={k}", [cand[i] for i in r.order], rel, r.expensive_evals, r.student_seconds)
    wall, cpus = time.perf_counter() - t0, cpu() - c0
    per_eval = ql.seconds / max(ql.computed, 1)
    head = StudentHead.load()
    out = {
        "protocol": __doc__, "n_claims": len(claims), "candidates": a.cands, "window": a.window, "lm": a.lm,
        "bm25_full_corpus_recall100": statistics.fmean(full_recall), "expensive_seconds_per_eval": per_eval,
        "student_head": {"w": head.w, "meta": head.meta}, "wall_s": wall, "cpu_s": cpus,
        "rows": {k: {"ndcg10": statistics.fmean(v["ndcg10"]), "recall100": statistics.fmean(v["recall100"]),
                     "evals_per_claim": (statistics.fmean(v["evals"]) if v["evals"][0] is not None else None),
                     "student_s_per_claim": statistics.fmean(v["seconds"])} for k, v in rows.items()},
    }  # fmt: skip
    (ROOT / "benchmarks/results/context").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks/results/context/scifact-rank.json").write_text(json.dumps(out, indent=1))
    allr = out["rows"]["select=all (QL on every passage)"]
    lines = [
        "## Context: IDCM cascade ranking on SciFact\n",
        f"Protocol: SciFact BEIR test claims (`claims_validation.csv`), the first {len(claims)} of a fixed shuffle (seed 0); "
        f"relevant = cited documents. Candidate set per claim: corpus-wide BM25 top-{a.cands} of 5,183 abstracts "
        f"(BM25 recall@100 on the full corpus for these claims: {100 * out['bm25_full_corpus_recall100']:.1f}%); every row "
        f"reranks that set, so recall@100 of the rerankers is the candidate set's recall. Passages: windows of {a.window} "
        f"sentence(s) of title + abstract (`prunekit.text` rules). Expensive scorer: query likelihood log P(claim | passage) "
        f"under {a.lm} ({per_eval:.3f} s per passage evaluation, CPU, 1 thread). IDCM student: the shipped head "
        f"(`w = {[round(x, 3) for x in head.w]}` over standardised [BM25, MiniLM cosine]; trained on {head.meta.get('claims', '?')} "
        f"`claims_train` claims by `python -m prunekit.context.rank_train`). Document score = max over read passages.\n",
        f"Reproduce: `python benchmarks/context_rank.py --n {a.n} --cands {a.cands} --window {a.window} --ks {a.ks}` "
        f"(wall {wall:.0f} s, CPU {cpus:.0f} s, including the training-free baselines).\n",
        "| method | nDCG@10 | recall@100 | expensive evals / claim | × fewer than all | Δ nDCG@10 vs all |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in out["rows"].items():
        e = v["evals_per_claim"]
        fewer = f"{allr['evals_per_claim'] / e:.1f}×" if e else "—"
        lines.append(f"| {name} | {100 * v['ndcg10']:.1f} | {100 * v['recall100']:.1f} | {e if e is None else round(e, 1)} | "
                     f"{fewer} | {100 * (v['ndcg10'] - allr['ndcg10']):+.1f} |")  # fmt: skip
    (ROOT / "benchmarks/results/sections/56-ranking.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
