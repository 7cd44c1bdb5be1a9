"""D-Pruner vs SparseGPT calibrated on general, domain and mixed data (issue 13, item 5).

    OMP_NUM_THREADS=1 python benchmarks/dpruner.py                       # routine-sized
    OMP_NUM_THREADS=1 python benchmarks/dpruner.py --nsamples 8 --seqlen 1024 --wiki-windows 10 --gsm8k-questions 100

Cells (50% unstructured unless --sparsity, SmolLM2-135M):

* ``dense``: no pruning;
* ``sparsegpt-c4`` / ``sparsegpt-gsm8k`` / ``sparsegpt-mixed``: SparseGPT calibrated on C4
  (``../shared/data/c4-sample``), on GSM8K train (``Question: …\\nAnswer: …`` documents, joined
  and cut into windows), and on half of each;
* ``dpruner``: D-Pruner with C4 as the general data and GSM8K train as the domain data, each
  ``--nsamples`` windows of ``--seqlen``; ``dpruner-refit``: the same mask, kept weights refitted
  by least squares on the C4 Hessians (``refit=pcg``, prunekit's option).

Metrics: general perplexity on WikiText-2 test (rows joined with ``"\\n\\n"``, the first
``--wiki-windows`` windows of 2048) and domain perplexity on GSM8K **test**: for each of the first
``--gsm8k-questions`` records, ``Question: {q}\\nAnswer:`` is the context and only the answer
tokens (`` {a}``) are scored; perplexity = exp(total answer NLL / answer tokens).

Each cell runs in its own process (so peak RSS is the cell's) and writes
``benchmarks/results/dpruner/<protocol>/<cell>.json``; the section
``benchmarks/results/sections/31-dpruner.md`` is rebuilt from every JSON of the protocol.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
C4 = SHARED / "c4-sample"
GSM_TRAIN = SHARED / "gsm8k" / "train.jsonl"
GSM_TEST = SHARED / "gsm8k" / "test.jsonl"
WIKI = SHARED / "wikitext-2-raw" / "wiki.test.raw"
RESULTS = ROOT / "benchmarks" / "results" / "dpruner"
SECTION = ROOT / "benchmarks" / "results" / "sections" / "31-dpruner.md"
CELLS = ("dense", "sparsegpt-c4", "sparsegpt-gsm8k", "sparsegpt-mixed", "dpruner", "dpruner-refit")
LABELS = {
    "dense": "dense",
    "sparsegpt-c4": "SparseGPT, C4 calibration (general)",
    "sparsegpt-gsm8k": "SparseGPT, GSM8K-train calibration (domain)",
    "sparsegpt-mixed": "SparseGPT, C4 + GSM8K-train (half each)",
    "dpruner": "D-Pruner (general C4, domain GSM8K train)",
    "dpruner-refit": "D-Pruner + least-squares refit on C4 (`refit=pcg`, not in the paper)",
}


def _log(msg: str) -> None:
    print(f"[dpruner {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def protocol_id(a: argparse.Namespace) -> str:
    return (f"smollm2-135m_{int(a.sparsity * 100)}pct_c4-gsm8k-{a.nsamples}x{a.seqlen}-s{a.seed}"
            f"_wikitext2-test-{a.wiki_windows}x2048_gsm8k-test-{a.gsm8k_questions}")  # fmt: skip


def gsm8k_answer_perplexity(model, tok, path: Path, n: int) -> dict:
    """Domain perplexity: the answer tokens of the first ``n`` GSM8K test records, each scored
    with ``Question: {q}\nAnswer:`` as context (``prunekit.eval.perplexity.gsm8k_answer_nlls``)."""
    from prunekit.eval.perplexity import gsm8k_answer_nlls

    t0 = time.perf_counter()
    pairs = gsm8k_answer_nlls(model, tok, path, n)
    nll, count = sum(s for s, _ in pairs), sum(c for _, c in pairs)
    return {"perplexity": math.exp(nll / count), "nll": nll / count, "answer_tokens": count,
            "questions": len(pairs), "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def run_cell(a: argparse.Namespace) -> dict:
    import torch

    import prunekit as pk
    from prunekit.config import CalibConfig, PruneConfig
    from prunekit.methods.dpruner import domain_windows

    torch.set_num_threads(a.threads)
    model, tok = pk.load_model("smollm2-135m")
    cell: str = a.run_cell
    prune: dict = {}
    gsm = f"gsm8k:{GSM_TRAIN}"
    if cell != "dense":
        c4 = pk.calibration_windows(str(C4), tok, a.nsamples, a.seqlen, a.seed)
        if cell == "sparsegpt-c4":
            calib, cfg = c4, PruneConfig(method="sparsegpt", sparsity=a.sparsity)
        elif cell == "sparsegpt-gsm8k":
            calib = domain_windows(gsm, tok, a.nsamples, a.seqlen, a.seed)
            cfg = PruneConfig(method="sparsegpt", sparsity=a.sparsity)
        elif cell == "sparsegpt-mixed":
            half = a.nsamples // 2
            calib = torch.cat([c4[:half], domain_windows(gsm, tok, a.nsamples - half, a.seqlen, a.seed)])
            cfg = PruneConfig(method="sparsegpt", sparsity=a.sparsity)
        else:
            args = {"domain": gsm, **dict(kv.split("=", 1) for kv in a.set)}
            if cell == "dpruner-refit":
                args["refit"] = "pcg"
            calib = c4
            cfg = PruneConfig(method="dpruner", sparsity=a.sparsity, method_args=args,
                              calib=CalibConfig(source=str(C4), nsamples=a.nsamples, seqlen=a.seqlen, seed=a.seed))  # fmt: skip
        t0 = time.perf_counter()
        rep = pk.prune_(model, cfg, calib, tok, progress=False, report_tokens=0)
        prune = {"prune_wall_s": round(time.perf_counter() - t0, 1),
                 "timings": {k: round(v, 1) for k, v in rep.timings.items()}, "settings": rep.settings,
                 "calib_windows": int(calib.shape[0]) + (a.nsamples if cell.startswith("dpruner") else 0)}  # fmt: skip
        _log(f"{cell}: pruned in {prune['prune_wall_s']} s")
    wiki = pk.perplexity(model, pk.eval_token_ids(f"wikitext2:{WIKI}", tok), seqlen=2048, max_windows=a.wiki_windows)
    dom = gsm8k_answer_perplexity(model, tok, GSM_TEST, a.gsm8k_questions)
    out = {
        "cell": cell, "label": LABELS[cell], "protocol_id": protocol_id(a), "sparsity": a.sparsity if cell != "dense" else 0.0,
        "wikitext2_ppl": wiki["perplexity"], "wikitext2_windows": wiki["windows"],
        "gsm8k_answer_ppl": dom["perplexity"], "gsm8k": dom, **prune,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": a.threads, "loadavg_1min": round(os.getloadavg()[0], 2),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }  # fmt: skip
    _log(f"{cell}: WikiText-2 {wiki['perplexity']:.2f}, GSM8K answers {dom['perplexity']:.3f}")
    return out


def _versus(x: dict, d: dict) -> str:
    """``x`` against ``d`` on both perplexities (lower is better)."""
    worse = [x[k] > d[k] for k in ("gsm8k_answer_ppl", "wikitext2_ppl")]
    return "worse on both" if all(worse) else "better on both" if not any(worse) else "mixed"


def write_section(a: argparse.Namespace) -> None:
    folder = RESULTS / protocol_id(a)
    rows = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
    lines = [
        "## D-Pruner: domain-specific pruning (issue 13)",
        "",
        "D-Pruner (Zhang et al., arXiv:2405.06275) keeps the weights a regularised domain loss needs: a "
        "general OBS importance G = W²/[U]²_jj on C4, a domain gradient on GSM8K train, combined as "
        "S = Σ_n |g̃W − ½(g̃W)²| with g̃ = g + 2λη²·G·g² (λ = 0.1, η = 0.03), pruned per matrix, "
        "no weight update. Compared with SparseGPT calibrated on C4 (general), on GSM8K train "
        "(domain) and on half of each, all at the same sparsity.",
        "",
        f"Protocol: SmolLM2-135M, {int(a.sparsity * 100)}% unstructured; every calibration set is "
        f"{a.nsamples} windows x {a.seqlen} tokens (seed {a.seed}; GSM8K train as `Question: …\\nAnswer: …` "
        f"documents joined and windowed; D-Pruner uses {a.nsamples} C4 + {a.nsamples} GSM8K windows); "
        f"general ppl = WikiText-2 test, first {a.wiki_windows} windows of 2048; domain ppl = GSM8K "
        f"test, first {a.gsm8k_questions} questions, answer tokens only with the question as context. "
        "One torch thread; the 2-core machine was shared with other benchmark jobs, so wall times "
        "are inflated and only roughly comparable.",
        "",
        "| cell | GSM8K answer ppl (domain) | WikiText-2 ppl (general) | prune wall s | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in CELLS:
        r = rows.get(c)
        if r is None:
            lines.append(f"| {LABELS[c]} | not run | | | |")
            continue
        lines.append(f"| {r['label']} | {r['gsm8k_answer_ppl']:.3f} | {r['wikitext2_ppl']:.2f} | "
                     f"{r.get('prune_wall_s', '')} | {r['peak_rss_mb']:.0f} |")  # fmt: skip
    if all(c in rows for c in ("dpruner", "sparsegpt-c4", "sparsegpt-gsm8k")):
        d, g, s = rows["dpruner"], rows["sparsegpt-c4"], rows["sparsegpt-gsm8k"]
        best = min(g["gsm8k_answer_ppl"], s["gsm8k_answer_ppl"])
        met_dom = d["gsm8k_answer_ppl"] < best
        met_gen = d["wikitext2_ppl"] <= s["wikitext2_ppl"]
        lines += ["", f"Target (D-Pruner's domain ppl below both SparseGPT cells, general ppl no worse than "
                      f"SparseGPT-domain): domain {'met' if met_dom else 'missed'} "
                      f"({d['gsm8k_answer_ppl']:.3f} vs best SparseGPT {best:.3f}, "
                      f"{100 * (d['gsm8k_answer_ppl'] / best - 1):+.1f}%); general {'met' if met_gen else 'missed'} "
                      f"({d['wikitext2_ppl']:.2f} vs {s['wikitext2_ppl']:.2f})."]  # fmt: skip
        if not (met_dom and met_gen) and all(c in rows for c in ("dpruner-refit", "sparsegpt-mixed")):
            r, m = rows["dpruner-refit"], rows["sparsegpt-mixed"]
            lines += ["", "**Why it misses here, and what was tried.** D-Pruner chooses a mask and never updates the "
                      "kept weights; every SparseGPT cell re-solves them on its calibration Hessian, and on "
                      "SmolLM2-135M that update is worth more than the choice of mask. The domain side: SparseGPT "
                      f"calibrated on GSM8K moves the kept weights toward the domain's activations ({best:.3f}), "
                      f"D-Pruner's domain gradient only decides which weights survive ({d['gsm8k_answer_ppl']:.3f}). "
                      "The general side: with the paper's λ = 0.1 and η = 0.03 the regulariser is numerically inert "
                      "at this scale (|2λη²·G·g²| / |g| ≈ 1e-12 at the median, see the method's docstring), so S is "
                      "the domain-gradient Taylor score alone and nothing protects general text "
                      f"({d['wikitext2_ppl']:.2f}). Tried: the paper's defaults; the same mask with a least-squares "
                      f"refit of the kept weights on C4 (`refit=pcg`): general {r['wikitext2_ppl']:.2f}, domain "
                      f"{r['gsm8k_answer_ppl']:.3f} (the refit pulls the weights toward general text), still far "
                      f"from SparseGPT on C4 with the same kind of update ({g['wikitext2_ppl']:.2f}), so the mask "
                      "itself is the weaker one on general text. SparseGPT on half C4, half GSM8K "
                      f"({m['gsm8k_answer_ppl']:.3f} / {m['wikitext2_ppl']:.2f}) is the better domain-aware prune on "
                      "this model."]  # fmt: skip
            lams = sorted((k for k in rows if k.startswith("dpruner-lam")), key=lambda k: float(k[len("dpruner-lam"):]))
            for k in lams:  # λ probes (`--set lam=X --results-dir`, the JSON copied here as dpruner-lamX.json)
                x = rows[k]
                lines[-1] += (f" Tried λ = {k[len('dpruner-lam'):]} (so G is no longer negligible): general "
                              f"{x['wikitext2_ppl']:.2f}, domain {x['gsm8k_answer_ppl']:.3f}, "
                              f"{_versus(x, d)} than with the paper's λ.")
            lines[-1] += (" Not tried: " + ("" if lams else "a much larger λ (so G matters), ")
                          + "the refit on the domain or mixed Hessian, and the paper's LOMO fine-tuning while "
                          "scoring, which moves the weights between batches.")
    if not rows:
        lines += ["", "Not run yet on this machine: the benchmark lock this work was given was held by other "
                      "benchmark jobs for the whole session (a 2 x 256-token smoke run of every cell completed; "
                      "its numbers are not a measurement and are not shown)."]  # fmt: skip
    lines += ["", "Reproduce: `OMP_NUM_THREADS=1 python benchmarks/dpruner.py "
              f"--nsamples {a.nsamples} --seqlen {a.seqlen} --wiki-windows {a.wiki_windows} "
              f"--gsm8k-questions {a.gsm8k_questions}`.", ""]  # fmt: skip
    SECTION.parent.mkdir(parents=True, exist_ok=True)
    SECTION.write_text("\n".join(lines))
    _log(f"wrote {SECTION}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--wiki-windows", type=int, default=40)
    ap.add_argument("--gsm8k-questions", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cells", default=",".join(CELLS), help=f"comma list of {', '.join(CELLS)}")
    ap.add_argument("--set", action="append", default=[], help="D-Pruner setting KEY=VALUE (repeatable)")
    ap.add_argument("--force", action="store_true", help="redo finished cells")
    ap.add_argument("--results-dir", type=Path, default=None, help="write JSON here instead of benchmarks/results/dpruner")
    ap.add_argument("--section-only", action="store_true")
    ap.add_argument("--run-cell", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    global RESULTS
    if a.results_dir is not None:
        RESULTS = a.results_dir
    if a.run_cell:
        a.json.write_text(json.dumps(run_cell(a), indent=1))
        return 0
    if not a.section_only:
        folder = RESULTS / protocol_id(a)
        folder.mkdir(parents=True, exist_ok=True)
        for cell in a.cells.split(","):
            if cell not in CELLS:
                ap.error(f"unknown cell {cell!r}: one of {', '.join(CELLS)}")
            dst = folder / f"{cell}.json"
            if dst.exists() and not a.force:
                _log(f"{cell}: done already ({dst.name})")
                continue
            cmd = [sys.executable, __file__, "--run-cell", cell, "--json", str(dst), "--nsamples", str(a.nsamples),
                   "--seqlen", str(a.seqlen), "--seed", str(a.seed), "--sparsity", str(a.sparsity),
                   "--wiki-windows", str(a.wiki_windows), "--gsm8k-questions", str(a.gsm8k_questions),
                   "--threads", str(a.threads), *[x for kv in a.set for x in ("--set", kv)]]  # fmt: skip
            _log(f"{cell}: start")
            rc = subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
            if rc != 0:
                _log(f"{cell}: failed (exit {rc})")
    if a.results_dir is None:
        write_section(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
