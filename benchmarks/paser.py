"""PASER vs random recovery data at the same budget (issue 14, section 3), in one process.

    OMP_NUM_THREADS=1 python benchmarks/paser.py                      # the committed run
    OMP_NUM_THREADS=1 python benchmarks/paser.py --pilot --results-dir /tmp/paser-pilot

1. SmolLM2-135M is pruned once (SparseGPT 2:4 by default, calibrated on ``--calib-windows`` x
   ``--calib-seqlen`` C4 windows, seed 0, through the public API); the folder is cached in
   ``.bench/paser/<prune-id>`` and reused by later runs.
2. The candidate pool: ``--pool-gsm8k`` GSM8K **train** records (``Question: …\\nAnswer: …``) and
   ``--pool-c4`` C4 documents (``../shared/data/c4-sample``), each a seeded random subset
   (``prunekit.recovery.paser.pool_documents``).
3. Dense and pruned are measured on GSM8K-test answer perplexity (first ``--gsm8k-questions``
   records: ``Question: {q}\\nAnswer:`` is the context, only the answer tokens `` {a}`` are
   scored, perplexity = exp(total answer NLL / answer tokens), the protocol of
   ``benchmarks/dpruner.py``), WikiText-2 test perplexity (rows joined with ``"\\n\\n"``, the
   first ``--wiki-windows`` windows of 2048) and PIQA validation ``acc``/``acc_norm`` with
   standard errors (``prunekit.evaluate_tasks``, the first ``--piqa-limit`` questions; 0 = all).
4. ``--budget`` samples are chosen from the pool by PASER (``paser_select``: MiniLM embeddings,
   spectral clustering, JSD-proportional allocation) and by uniform random choice
   (``random_select``), same seed (PASER reads the first ``--jsd-tokens`` tokens of each
   candidate for its embedding and JSD); a fresh copy of the pruned model is recovered on each
   selection with the same LoRA config and the same token budget (``--tokens``: the selected
   documents are packed end to end and cycled when they hold fewer tokens), then measured the
   same way.

No evaluation text is ever trained on: the pool holds GSM8K *train* and C4 only; WikiText-2 test,
GSM8K test and PIQA are evaluation only.

"Degraded most" is fixed before looking at the numbers: each capability's loss is the fraction of
the dense model's value lost, for the perplexities the relative increase of the mean NLL per token
(``ln ppl_pruned / ln ppl_dense - 1``), for PIQA the relative loss of above-chance accuracy
(``(acc_dense - acc_pruned) / (acc_dense - 0.5)``); the largest is the capability PASER must
recover better than random.

Writes ``benchmarks/results/paser/<protocol-id>.json`` (after every stage, so a partial run
leaves what it measured) and ``benchmarks/results/sections/45-paser.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
C4 = SHARED / "c4-sample"
GSM_TRAIN = SHARED / "gsm8k" / "train.jsonl"
GSM_TEST = SHARED / "gsm8k" / "test.jsonl"
WIKI = SHARED / "wikitext-2-raw" / "wiki.test.raw"
PIQA = SHARED / "piqa" / "valid.jsonl"
RESULTS = ROOT / "benchmarks" / "results" / "paser"
SECTION = ROOT / "benchmarks" / "results" / "sections" / "45-paser.md"
CACHE = ROOT / ".bench" / "paser"
MODELS = ("dense", "pruned", "random", "paser")
LABELS = {"dense": "dense", "pruned": "pruned, no recovery", "random": "pruned + LoRA on a random selection",
          "paser": "pruned + LoRA on the PASER selection"}  # fmt: skip
CAPS = ("gsm8k", "wikitext2", "piqa")
CAP_NAMES = {"gsm8k": "GSM8K-test answer perplexity", "wikitext2": "WikiText-2 perplexity", "piqa": "PIQA accuracy"}


def _log(msg: str) -> None:
    print(f"[paser {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def prune_id(a: argparse.Namespace) -> str:
    what = a.pattern.replace(":", "of") if a.pattern else f"{int(round(a.sparsity * 100))}pct"
    return f"smollm2-135m_{a.method}-{what}_c4-{a.calib_windows}x{a.calib_seqlen}-s{a.seed}"


def protocol_id(a: argparse.Namespace) -> str:
    piqa = a.piqa_limit or "all"
    sig = "" if getattr(a, "signal", "jsd") == "jsd" else f"_sig-{a.signal}"
    return (f"{prune_id(a)}_pool-gsm8k{a.pool_gsm8k}-c4{a.pool_c4}-j{a.jsd_tokens}_budget{a.budget}_tok{a.tokens}"
            f"_wiki{a.wiki_windows}_gsm{a.gsm8k_questions}_piqa{piqa}{sig}")  # fmt: skip


# --- measurements ------------------------------------------------------------------------------------
def _ppl(pairs: list[tuple[float, int]]) -> float:
    return math.exp(sum(s for s, _ in pairs) / sum(c for _, c in pairs))


def measure(model, tok, wiki_ids, a: argparse.Namespace) -> dict[str, Any]:
    import prunekit as pk

    model.eval()
    t0 = time.perf_counter()
    from prunekit.eval.perplexity import gsm8k_answer_nlls  # the scorer of benchmarks/dpruner.py

    g = gsm8k_answer_nlls(model, tok, GSM_TEST, a.gsm8k_questions)
    t_g = time.perf_counter() - t0
    w = pk.perplexity(model, wiki_ids, seqlen=2048, max_windows=a.wiki_windows)
    t1 = time.perf_counter()
    p = pk.evaluate_tasks(model, tok, f"piqa:{PIQA}", limit=a.piqa_limit or None, progress=False)["piqa"]
    return {
        "gsm8k": {"perplexity": _ppl(g), "questions": len(g), "answer_tokens": sum(c for _, c in g),
                  "per_question": [[round(s, 5), c] for s, c in g], "seconds": round(t_g, 1)},
        "wikitext2": {k: w[k] for k in ("perplexity", "nll", "tokens", "windows", "seconds")},
        "piqa": {"acc": p["metrics"]["acc"], "acc_norm": p["metrics"]["acc_norm"], "acc_stderr": p["stderr"]["acc"],
                 "acc_norm_stderr": p["stderr"]["acc_norm"], "n": p["n"], "seconds": round(time.perf_counter() - t1, 1)},
    }  # fmt: skip


def degradation(dense: dict, pruned: dict) -> dict[str, float]:
    """Fraction of the dense value lost per capability (see the module docstring)."""
    rel_nll = {c: math.log(pruned[c]["perplexity"]) / math.log(dense[c]["perplexity"]) - 1 for c in ("gsm8k", "wikitext2")}
    above = dense["piqa"]["acc"] - 0.5
    return {**rel_nll, "piqa": (dense["piqa"]["acc"] - pruned["piqa"]["acc"]) / above if above > 0 else float("nan")}


def gap_closed(dense: float, pruned: float, rec: float, log: bool = True) -> float:
    f = math.log if log else (lambda v: v)
    gap = f(pruned) - f(dense)
    return (f(pruned) - f(rec)) / gap if gap else float("nan")


def paired_bootstrap(a_pairs, b_pairs, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Bootstrap over questions of ln ppl_a - ln ppl_b (negative: a is better): mean, 95% interval,
    and the fraction of resamples in which a is better."""
    rng = random.Random(seed)
    k = len(a_pairs)
    diffs = []
    for _ in range(n):
        idx = [rng.randrange(k) for _ in range(k)]
        la = sum(a_pairs[i][0] for i in idx) / sum(a_pairs[i][1] for i in idx)
        lb = sum(b_pairs[i][0] for i in idx) / sum(b_pairs[i][1] for i in idx)
        diffs.append(la - lb)
    diffs.sort()
    full = math.log(_ppl(a_pairs)) - math.log(_ppl(b_pairs))
    return {"log_ppl_diff": full, "ci95": [diffs[int(0.025 * n)], diffs[int(0.975 * n) - 1]],
            "p_a_better": sum(d < 0 for d in diffs) / n}  # fmt: skip


# --- pipeline ---------------------------------------------------------------------------------------
def pruned_folder(a: argparse.Namespace, res: dict) -> Path:
    import prunekit as pk

    folder = CACHE / prune_id(a)
    if (folder / "config.json").is_file():
        meta = json.loads((folder / "prunekit.json").read_text())
        res["prune"] = {"cached": str(folder.relative_to(ROOT)), "seconds": (meta.get("bench") or {}).get("prune_seconds")}
        _log(f"reusing {folder}")
        return folder
    model, tok = pk.load_model("smollm2-135m")
    cfg = pk.PruneConfig(method=a.method, **({"pattern": a.pattern} if a.pattern else {"sparsity": a.sparsity}))
    calib = pk.calibration_windows(str(C4), tok, nsamples=a.calib_windows, seqlen=a.calib_seqlen, seed=a.seed)
    t0 = time.perf_counter()
    rep = pk.prune_(model, cfg, calib, tok, progress=False, report_tokens=0)
    sec = time.perf_counter() - t0
    _log(f"pruned {prune_id(a)} in {sec:.0f}s")
    pk.save_pretrained_atomic(model, tok, folder, {"report": rep.to_dict(), "bench": {"prune_seconds": sec}},
                              overwrite=True)  # fmt: skip
    res["prune"] = {"cached": None, "seconds": sec, "folder": str(folder.relative_to(ROOT))}
    del model
    return folder


def selection_stats(sel, labels: list[int], is_gsm: list[bool], jsd: list[float], lengths: list[int]) -> dict:
    """Where a selection lies in PASER's clusters, how much of it is GSM8K, its tokens and JSD."""
    idx = sel.indices
    clusters: dict[str, dict] = {}
    for c in sorted(set(labels)):
        members = [i for i, lab in enumerate(labels) if lab == c]
        picked = [i for i in idx if labels[i] == c]
        clusters[str(c)] = {
            "size": len(members), "gsm8k_fraction": sum(is_gsm[i] for i in members) / len(members),
            "mean_jsd": sum(jsd[i] for i in members) / len(members), "selected": len(picked),
        }  # fmt: skip
    return {
        "selected": len(idx), "gsm8k_selected": sum(is_gsm[i] for i in idx),
        "gsm8k_fraction": sum(is_gsm[i] for i in idx) / max(1, len(idx)),
        "tokens": sum(lengths[i] for i in idx), "mean_jsd": sum(jsd[i] for i in idx) / max(1, len(idx)),
        "clusters": clusters,
    }  # fmt: skip


def reused_measurements(a: argparse.Namespace) -> dict[str, dict]:
    """With ``--reuse JSON``: the dense and random-selection models of an earlier run whose settings
    equal this one's except the PASER signal (neither depends on it). The pruned model is measured
    again, as a check that the cached or re-made prune is the one the earlier run recovered."""
    if not getattr(a, "reuse", None):
        return {}
    old = json.loads(Path(a.reuse).read_text())
    mine = {k: getattr(a, k) for k in SIZE_FLAGS if k != "signal"}
    theirs = {k: old["args"].get(k) for k in mine}
    theirs["pattern"] = theirs["pattern"] or None
    if theirs.get("embedder") in (None, "auto"):  # runs before --embedder, or auto: the one they used
        theirs["embedder"] = _embedder(old)
    if mine["embedder"] == "auto":  # the one this run will use
        from prunekit.recovery.paser import resolve_embedder

        mine["embedder"] = resolve_embedder("auto")[0]
    if mine != theirs:
        diff = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
        raise SystemExit(f"--reuse {a.reuse}: its settings differ from this run's (theirs, mine): {diff}")
    if not old.get("finished"):
        raise SystemExit(f"--reuse {a.reuse}: that run did not finish")
    if old["args"].get("signal", "jsd") != "jsd":
        raise SystemExit(f"--reuse {a.reuse}: reuse the paper-signal (jsd) run, not a variant")
    return {m: old["models"][m] for m in ("dense", "random")} | {"_pruned_before": old["models"]["pruned"]}


def run(a: argparse.Namespace) -> dict:
    import torch

    import prunekit as pk
    from prunekit.recovery.lora import RecoveryConfig, recover_, target_names, zero_fraction
    from prunekit.recovery.paser import paser_select, pool_documents, random_select

    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.perf_counter()
    out_json = RESULTS / f"{protocol_id(a)}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"protocol_id": protocol_id(a), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                           "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "torch_threads": a.threads,
                           "cpu_count": os.cpu_count(), "models": {}}  # fmt: skip

    def save() -> None:
        res["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        res["loadavg"] = list(os.getloadavg())
        out_json.write_text(json.dumps(res, indent=1) + "\n")

    reused = reused_measurements(a)
    before = reused.pop("_pruned_before", None)
    if reused:
        res["reused_from"] = str(a.reuse)
        res["models"].update(reused)
    folder = pruned_folder(a, res)
    dense, tok = pk.load_model("smollm2-135m")
    wiki_ids = pk.eval_token_ids(f"wikitext2:{WIKI}", tok)
    cfg = RecoveryConfig(tokens=a.tokens, seqlen=a.seqlen, batch_size=a.batch_size, lr=a.lr, r=a.r, seed=a.seed,
                         checkpoint_every=1 << 30)  # fmt: skip
    res["recovery_config"] = cfg.to_dict()

    def measured(name: str, model) -> None:
        t0 = time.perf_counter()
        res["models"].setdefault(name, {})["eval"] = measure(model, tok, wiki_ids, a)
        m = res["models"][name]["eval"]
        _log(f"{name}: GSM8K answers {m['gsm8k']['perplexity']:.3f}, WikiText-2 {m['wikitext2']['perplexity']:.2f}, "
             f"PIQA {m['piqa']['acc']:.4f}/{m['piqa']['acc_norm']:.4f} ({time.perf_counter() - t0:.0f}s)")  # fmt: skip
        save()

    if "dense" not in reused:
        measured("dense", dense)
    pruned, _ = pk.load_model(str(folder))
    measured("pruned", pruned)
    if before is not None:  # the same prune as the reused run's? (same metrics up to float noise)
        now = res["models"]["pruned"]["eval"]
        res["reuse_check"] = {c: {"before": before["eval"][c]["perplexity"], "now": now[c]["perplexity"]}
                              for c in ("gsm8k", "wikitext2")}  # fmt: skip
        _log(f"reuse check, pruned model before/now: {res['reuse_check']}")
        save()

    # the pool (GSM8K train + C4, never evaluation text) and the two selections
    gsm = pool_documents([f"gsm8k:{GSM_TRAIN}"], a.pool_gsm8k, a.seed)
    c4 = pool_documents([str(C4)], a.pool_c4, a.seed)
    pool, is_gsm = gsm + c4, [True] * len(gsm) + [False] * len(c4)
    lengths = [len(tok(d, add_special_tokens=False, verbose=False)["input_ids"]) for d in pool]
    res["pool"] = {"gsm8k": len(gsm), "c4": len(c4), "tokens_gsm8k": sum(lengths[: len(gsm)]),
                   "tokens_c4": sum(lengths[len(gsm) :])}  # fmt: skip
    t0 = time.perf_counter()
    sel_p = paser_select(pool, tok, pruned, dense, a.budget, max_tokens=a.jsd_tokens, seed=a.seed, signal=a.signal,
                         embedder=a.embedder)
    t_sel = time.perf_counter() - t0
    sel_r = random_select(len(pool), a.budget, a.seed)
    labels, jsd = sel_p.labels, sel_p.jsd
    gsm_jsd = [j for j, g in zip(jsd, is_gsm) if g]
    c4_jsd = [j for j, g in zip(jsd, is_gsm) if not g]
    res["selection"] = {
        "paser": {**selection_stats(sel_p, labels, is_gsm, jsd, lengths), "seconds": round(t_sel, 1),
                  "summary": sel_p.to_dict()},
        "random": selection_stats(sel_r, labels, is_gsm, jsd, lengths),
        "pool_mean_jsd": {"gsm8k": sum(gsm_jsd) / len(gsm_jsd), "c4": sum(c4_jsd) / len(c4_jsd)},
    }  # fmt: skip
    s = res["selection"]
    _log(f"PASER chose {s['paser']['selected']} ({s['paser']['gsm8k_fraction']:.0%} GSM8K, {s['paser']['tokens']} tokens) "
         f"in {t_sel:.0f}s; random {s['random']['selected']} ({s['random']['gsm8k_fraction']:.0%} GSM8K, "
         f"{s['random']['tokens']} tokens); pool JSD GSM8K {s['pool_mean_jsd']['gsm8k']:.4f}, C4 {s['pool_mean_jsd']['c4']:.4f}")  # fmt: skip
    save()
    del pruned

    for name, sel in (("random", sel_r), ("paser", sel_p)):
        if name in reused:
            continue
        model, _ = pk.load_model(str(folder))
        names = target_names(model)
        z0 = zero_fraction(model, names)
        rep = recover_(model, tok, [pool[i] for i in sel.indices], cfg, progress=False)
        z1 = zero_fraction(model, names)
        res["models"][name] = {"recovery": {k: v for k, v in rep.to_dict().items() if k != "config"},
                               "zeros_before": z0, "zeros_after": z1,
                               "epochs": rep.tokens / max(1, s[name]["tokens"])}  # fmt: skip
        _log(f"{name}: recovered in {rep.seconds:.0f}s, loss {rep.first_loss:.3f} -> {rep.final_loss:.3f}, "
             f"zeros {z0:.4f} -> {z1:.4f}")  # fmt: skip
        measured(name, model)
        del model

    ev = {m: res["models"][m]["eval"] for m in MODELS}
    deg = degradation(ev["dense"], ev["pruned"])
    worst = max(deg, key=lambda c: deg[c])
    metric = lambda m, c: ev[m][c]["acc"] if c == "piqa" else ev[m][c]["perplexity"]  # noqa: E731
    better = lambda x, y, c: x > y if c == "piqa" else x < y  # noqa: E731
    res["verdict"] = {
        "degradation": deg, "degraded_most": worst,
        "gap_closed": {m: {c: gap_closed(metric("dense", c), metric("pruned", c), metric(m, c), log=c != "piqa")
                           for c in CAPS} for m in ("random", "paser")},
        "paser_beats_random": {c: better(metric("paser", c), metric("random", c), c) for c in CAPS},
        "gsm8k_bootstrap_paser_vs_random": paired_bootstrap(
            [tuple(x) for x in ev["paser"]["gsm8k"]["per_question"]], [tuple(x) for x in ev["random"]["gsm8k"]["per_question"]]),
    }  # fmt: skip
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    save()
    v = res["verdict"]
    _log(f"degraded most: {worst} ({deg[worst]:.3f}); PASER beats random there: {v['paser_beats_random'][worst]}")
    return res


# --- the section --------------------------------------------------------------------------------------
def _fmt_piqa(e: dict) -> str:
    p = e["piqa"]
    return f"{100 * p['acc']:.1f} ± {100 * p['acc_stderr']:.1f} / {100 * p['acc_norm']:.1f} ± {100 * p['acc_norm_stderr']:.1f}"


def write_section(res: dict, path: Path = SECTION, variant: dict | None = None,
                  replicates: list[tuple[dict, dict | None]] = ()) -> None:
    a = argparse.Namespace(**res["args"])
    ev = {m: res["models"][m]["eval"] for m in MODELS}
    rc, sel, v = res["recovery_config"], res["selection"], res["verdict"]
    what = f"SparseGPT {a.pattern}" if a.method == "sparsegpt" and a.pattern else f"{a.method} {a.pattern or a.sparsity}"
    piqa_n = ev["dense"]["piqa"]["n"]
    worst = v["degraded_most"]
    L = [
        "## PASER: recovery data selection vs random at the same budget (issue 14)",
        "",
        "PASER (He et al., arXiv:2502.12594) spends a recovery budget on the samples the pruned model "
        f"got most wrong: candidates are embedded ({_embedder_name(res)}), spectrally clustered, the budget "
        "is split over clusters in proportion to their mean JSD between dense and pruned next-token "
        "distributions, and the most degraded samples of each cluster are taken (near-duplicates and "
        "the least degraded 5% dropped). Baseline: the same number of samples drawn uniformly at random.",
        "",
        f"Protocol (`benchmarks/paser.py`, one process): SmolLM2-135M pruned once with {what} "
        f"(calibration {a.calib_windows} x {a.calib_seqlen} C4 windows, seed {a.seed}). Candidate pool: "
        f"{res['pool']['gsm8k']} GSM8K **train** records (`Question: …\\nAnswer: …`, "
        f"{res['pool']['tokens_gsm8k']:,} tokens) + {res['pool']['c4']} C4 documents "
        f"({res['pool']['tokens_c4']:,} tokens), seeded subsets; PASER embeds and scores the first "
        f"{getattr(a, 'jsd_tokens', 256)} tokens of each. Budget: {a.budget} samples for each "
        f"selection, then the same LoRA recovery for both (masked LoRA, r {rc['r']}, α {rc['alpha']:g}, "
        f"dropout {rc['dropout']:g}, lr {rc['lr']:g}, {rc['tokens']:,} training tokens = "
        f"{math.ceil(rc['tokens'] / (rc['batch_size'] * rc['seqlen']))} steps x {rc['batch_size']} x "
        f"{rc['seqlen']}, the selected documents packed and cycled, seed {rc['seed']}). Metrics: GSM8K "
        f"**test** answer perplexity (first {a.gsm8k_questions} questions, answer tokens only, the question as "
        f"context), WikiText-2 test perplexity (first {a.wiki_windows} windows of 2048), PIQA validation "
        f"acc / acc_norm ± standard error ({'all ' + str(piqa_n) if not a.piqa_limit else 'first ' + str(piqa_n)} "
        "questions). No evaluation text is in the pool. The machine is a shared 2-core CPU, one torch "
        "thread, other benchmark jobs running at the same time: times are inflated.",
        "",
        "| model | GSM8K answer ppl | WikiText-2 ppl | PIQA acc / acc_norm (%) |",
        "|---|---:|---:|---:|",
    ]
    for m in MODELS:
        e = ev[m]
        L.append(f"| {LABELS[m]} | {e['gsm8k']['perplexity']:.3f} | {e['wikitext2']['perplexity']:.2f} | {_fmt_piqa(e)} |")
    deg = v["degradation"]
    gc = v["gap_closed"]
    ps, rs = sel["paser"], sel["random"]
    bs = v["gsm8k_bootstrap_paser_vs_random"]
    L += [
        "",
        "Selections: PASER chose "
        f"{ps['selected']} samples, {100 * ps['gsm8k_fraction']:.0f}% GSM8K ({ps['tokens']:,} tokens, mean JSD "
        f"{ps['mean_jsd']:.4f}, selection {ps['seconds']:.0f} s); random chose {rs['selected']}, "
        f"{100 * rs['gsm8k_fraction']:.0f}% GSM8K ({rs['tokens']:,} tokens, mean JSD {rs['mean_jsd']:.4f}). "
        f"Pool mean JSD: GSM8K {sel['pool_mean_jsd']['gsm8k']:.4f}, C4 {sel['pool_mean_jsd']['c4']:.4f} nats. "
        f"PASER's {len(ps['clusters'])} clusters (size, GSM8K share, mean JSD → samples allocated): "
        + "; ".join(f"{c['size']}, {100 * c['gsm8k_fraction']:.0f}%, {c['mean_jsd']:.4f} → {c['selected']}"
                    for c in sorted(ps["clusters"].values(), key=lambda c: -c["mean_jsd"]))
        + ".",
        "",
        "Degradation (fraction of the dense value lost; perplexities: relative increase of the mean NLL "
        "per token, PIQA: relative loss of above-chance accuracy): "
        + ", ".join(f"{CAP_NAMES[c]} {deg[c]:.3f}" for c in CAPS)
        + f". Degraded most: **{CAP_NAMES[worst]}**.",
        "",
        "Gap to dense closed by recovery (log-perplexity gap; PIQA accuracy gap): random "
        + ", ".join(f"{c} {_pct(gc['random'][c])}" for c in CAPS)
        + "; PASER " + ", ".join(f"{c} {_pct(gc['paser'][c])}" for c in CAPS) + ".",
        "",
        f"GSM8K paired bootstrap over the {a.gsm8k_questions} questions (PASER − random, ln ppl): "
        f"{bs['log_ppl_diff']:+.4f}, 95% interval [{bs['ci95'][0]:+.4f}, {bs['ci95'][1]:+.4f}], PASER better in "
        f"{100 * bs['p_a_better']:.0f}% of resamples.",
        "",
    ]
    won = v["paser_beats_random"][worst]
    L.append(f"Target (PASER beats random on the capability that degraded most, {CAP_NAMES[worst]}): "
             f"**{'met' if won else 'missed'}** ({_metric_text(ev, worst)}).")  # fmt: skip
    others = [c for c in CAPS if c != worst]
    L.append("On the others: " + "; ".join(
        f"{CAP_NAMES[c]} {'PASER better' if v['paser_beats_random'][c] else 'random better or equal'} "
        f"({_metric_text(ev, c)})" for c in others) + ".")  # fmt: skip
    for note in res.get("notes") or []:
        L += ["", note]
    if variant is not None:
        L += ["", *variant_lines(res, variant)]
        for note in variant.get("notes") or []:
            L += ["", note]
    if replicates:
        L += ["", *replicate_lines([(res, variant), *replicates])]
    cmd = (f"`{reproduce_command(res['args'])}` (wall {res['wall_seconds'] / 60:.0f} min, "
           f"pruning {'cached' if (res.get('prune') or {}).get('cached') else 'included'}).")  # fmt: skip
    L += ["", "Reproduce: " + cmd, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L))
    _log(f"wrote {path}")


def variant_lines(res: dict, var: dict) -> list[str]:
    """The ``--signal`` variant beside the main run: its row, selection and verdict."""
    sig = var["args"]["signal"]
    ev = {m: var["models"][m]["eval"] for m in MODELS}
    v, ps = var["verdict"], var["selection"]["paser"]
    worst = res["verdict"]["degraded_most"]
    gc = v["gap_closed"]["paser"]
    bs = v["gsm8k_bootstrap_paser_vs_random"]
    e = ev["paser"]
    won = v["paser_beats_random"][worst]
    return [
        f"**Variant: PASER with `signal={sig}`** (prunekit's option: the budget follows each sample's relative "
        "damage, the pruned model's mean next-token NLL over the dense model's, instead of the JSD; "
        + _shared_with(res, var) + "; the dense and random rows reused from the run above"
        + (", the pruned model re-made and re-measured: GSM8K " + ", WikiText-2 ".join(
            f"{ck['now']:.3f} (above: {ck['before']:.3f})" for ck in (var["reuse_check"][c] for c in ("gsm8k", "wikitext2")))
           if var.get("reuse_check") else "")
        + "; "
        f"`{reproduce_command(var['args'])} --reuse {Path(var.get('reused_from') or '').name}`, "
        f"wall {var['wall_seconds'] / 60:.0f} min).",
        "",
        "| model | GSM8K answer ppl | WikiText-2 ppl | PIQA acc / acc_norm (%) |",
        "|---|---:|---:|---:|",
        f"| pruned + LoRA on the PASER ({sig}) selection | {e['gsm8k']['perplexity']:.3f} | "
        f"{e['wikitext2']['perplexity']:.2f} | {_fmt_piqa(e)} |",
        "",
        f"Selection: {ps['selected']} samples, {100 * ps['gsm8k_fraction']:.0f}% GSM8K ({ps['tokens']:,} tokens, "
        f"selection {ps['seconds']:.0f} s); pool mean {sig}: GSM8K {var['selection']['pool_mean_jsd']['gsm8k']:.4f}, "
        f"C4 {var['selection']['pool_mean_jsd']['c4']:.4f}. Gap closed: "
        + ", ".join(f"{c} {_pct(gc[c])}" for c in CAPS)
        + f". GSM8K paired bootstrap (variant − random, ln ppl): {bs['log_ppl_diff']:+.4f}, 95% interval "
        f"[{bs['ci95'][0]:+.4f}, {bs['ci95'][1]:+.4f}].",
        "",
        f"Target with the variant ({CAP_NAMES[worst]}): **{'met' if won else 'missed'}** ({_metric_text(ev, worst)}).",
    ]


def replicate_lines(runs: list[tuple[dict, dict | None]]) -> list[str]:
    """One row per (jsd run, its nll-ratio variant) pair: the seed changes the prune's calibration,
    the pool subsets, the random selection and the LoRA's seed all at once."""
    L = ["**Seeds.** The whole protocol again with another `--seed` (calibration windows, pool subsets, random "
         "selection and LoRA seed all change; the dense row does not). GSM8K-test answer perplexity (the "
         "capability that degraded most in every run) of the pruned model and after each recovery:", "",
         "| seed | embeddings jsd / nll-ratio | GSM8K pruned | GSM8K random | GSM8K PASER jsd (the paper's) | GSM8K PASER nll-ratio | "
         "WikiText-2 random / jsd / nll-ratio | PIQA acc random / jsd / nll-ratio (%) |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    wins, wiki_worse = {"jsd": 0, "nll-ratio": 0}, 0
    for res, var in runs:
        ev = {m: res["models"][m]["eval"] for m in MODELS}
        ve = var["models"]["paser"]["eval"] if var else None
        wins["jsd"] += ev["paser"]["gsm8k"]["perplexity"] < ev["random"]["gsm8k"]["perplexity"]
        wins["nll-ratio"] += bool(ve) and ve["gsm8k"]["perplexity"] < ev["random"]["gsm8k"]["perplexity"]
        wiki_worse += bool(ve) and ve["wikitext2"]["perplexity"] > ev["random"]["wikitext2"]["perplexity"]
        cols = {c: [ev["random"], ev["paser"], ve] for c in ("gsm8k", "wikitext2", "piqa")}

        def f(e, c, nd):
            if e is None:
                return "–"
            return f"{100 * e['piqa']['acc']:.1f}" if c == "piqa" else f"{e[c]['perplexity']:.{nd}f}"

        emb = _embedder(res) + " / " + (_embedder(var) if var else "–")
        L.append(f"| {res['args']['seed']} | {emb} | {f(ev['pruned'], 'gsm8k', 3)} | "
                 + " | ".join(f(e, "gsm8k", 3) for e in cols["gsm8k"]) + " | "
                 + " / ".join(f(e, "wikitext2", 2) for e in cols["wikitext2"]) + " | "
                 + " / ".join(f(e, "piqa", 1) for e in cols["piqa"]) + " |")
    n = len(runs)

    def boot(r):
        b = r["verdict"]["gsm8k_bootstrap_paser_vs_random"]
        return f"{b['log_ppl_diff']:+.3f} [{b['ci95'][0]:+.3f}, {b['ci95'][1]:+.3f}]"

    L += ["", "GSM8K paired bootstrap, PASER − random in ln ppl, 95% interval: " + "; ".join(
        f"seed {res['args']['seed']}: jsd {boot(res)}" + (f", nll-ratio {boot(var)}" if var else "") for res, var in runs) + "."]
    L += ["", f"PASER beats random on GSM8K in {wins['jsd']} of {n} seeds with the paper's JSD signal and in "
          f"{wins['nll-ratio']} of {n} with `nll-ratio`; `nll-ratio`'s price is WikiText-2, worse than random in "
          f"{wiki_worse} of {n} (it moves the budget from web text to the math). Each seed: "
          f"`{reproduce_command(runs[-1][0]['args'])}`, then the same with `--signal nll-ratio --reuse` its JSON."]
    return L


def _embedder(res: dict) -> str:
    """The embedder a run's PASER selection used ("minilm" or "model"), from its recorded summary."""
    return ((res.get("selection") or {}).get("paser", {}).get("summary") or {}).get("embedder", "?")


def _same_clusters(a: dict, b: dict) -> bool:
    """Did two runs' PASER selections see the same clusters (embedder and cluster sizes)?"""
    sizes = [{k: c["size"] for k, c in (r["selection"]["paser"].get("summary") or {}).get("clusters", {}).items()}
             for r in (a, b)]  # fmt: skip
    return _embedder(a) == _embedder(b) and sizes[0] == sizes[1]


def _shared_with(res: dict, var: dict) -> str:
    """What a variant shares with the run it reuses: the pool, budget and LoRA always; the clusters
    only when its selection saw the same ones."""
    if _same_clusters(res, var):
        return f"same pool, {_embedder_name(var)}, clusters, budget and LoRA"
    if _embedder(var) != _embedder(res):
        return (f"same pool, budget and LoRA, but {_embedder_name(var)} where the run above used "
                f"{_embedder_name(res)}, so the clusters differ")
    return f"same pool, {_embedder_name(var)}, budget and LoRA, but the clusters differ"


def _embedder_name(res: dict) -> str:
    e = _embedder(res)
    return {"minilm": "all-MiniLM-L6-v2 embeddings", "model": "the pruned model's own mean-pooled hidden states"}.get(e, f"embedder {e}")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if math.isfinite(x) else "n/a (no gap)"


def _metric_text(ev: dict, c: str) -> str:
    if c == "piqa":
        return f"acc {100 * ev['paser']['piqa']['acc']:.1f} vs {100 * ev['random']['piqa']['acc']:.1f}"
    return f"{ev['paser'][c]['perplexity']:.3f} vs {ev['random'][c]['perplexity']:.3f}"


SIZE_FLAGS = ("method", "pattern", "sparsity", "calib_windows", "calib_seqlen", "seed", "pool_gsm8k", "pool_c4", "budget",
              "tokens", "seqlen", "batch_size", "lr", "r", "jsd_tokens", "wiki_windows", "gsm8k_questions", "piqa_limit",
              "signal", "embedder")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="sparsegpt")
    ap.add_argument("--pattern", default="2:4", help="N:M pattern ('' for --sparsity)")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--calib-windows", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool-gsm8k", type=int, default=100, help="GSM8K train records in the pool")
    ap.add_argument("--pool-c4", type=int, default=100, help="C4 documents in the pool")
    ap.add_argument("--budget", type=int, default=32, help="samples each selection trains on")
    ap.add_argument("--tokens", type=int, default=16384, help="training tokens of each recovery")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--jsd-tokens", type=int, default=256, help="PASER: tokens of each sample embedded and scored (JSD; paser_select's default)")
    ap.add_argument("--signal", choices=("jsd", "nll-ratio"), default="jsd",
                    help="PASER's degradation signal: jsd (the paper's) or nll-ratio (relative NLL increase, prunekit's option)")
    ap.add_argument("--embedder", choices=("auto", "minilm", "model"), default="minilm",
                    help="PASER's embeddings: minilm (default; needs `prunekit[paser]`, so a run never falls back "
                         "silently), model (the pruned model's mean-pooled hidden states) or auto")
    ap.add_argument("--reuse", type=Path, default=None, metavar="JSON",
                    help="take the dense and random-selection measurements from this earlier jsd run (same settings but "
                         "--signal); the pruned model is re-measured as a check")
    ap.add_argument("--wiki-windows", type=int, default=10)
    ap.add_argument("--gsm8k-questions", type=int, default=100)
    ap.add_argument("--piqa-limit", type=int, default=200, help="first N PIQA questions (0: all 1838)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pilot", action="store_true", help="tiny sizes end to end (needs --results-dir)")
    ap.add_argument("--results-dir", type=Path, default=None, help="write JSON here (no section)")
    ap.add_argument("--section-only", type=Path, default=None, metavar="JSON", help="rebuild the section from a result")
    ap.add_argument("--variant", type=Path, default=None, metavar="JSON",
                    help="with --section-only: a --signal variant's result, shown after the main run (with --variant-note)")
    ap.add_argument("--variant-note", action="append", default=[],
                    help="with --variant: a paragraph about the variant, stored in its JSON and shown after it")
    ap.add_argument("--replicate", action="append", default=[], type=Path, metavar="JSON",
                    help="with --section-only: another seed's jsd run (its <stem>_sig-nll-ratio.json variant beside "
                         "it is read too), shown in a replicates table after the main run (repeatable)")
    ap.add_argument("--note", action="append", default=[],
                    help="with --section-only: a paragraph of interpretation, stored in the JSON and shown in the section")
    return ap


def reproduce_command(args: dict) -> str:
    """The command line that repeats a run: the size flags that differ from the defaults."""
    d = vars(build_parser().parse_args([]))
    flags = [f"--{k.replace('_', '-')} {args[k] if args[k] not in (None, '') else chr(39) * 2}" for k in SIZE_FLAGS
             if k in args and args[k] != d[k]]
    return " ".join(["OMP_NUM_THREADS=1 python benchmarks/paser.py", *flags])


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.section_only:
        res = json.loads(a.section_only.read_text())
        if a.note:
            res["notes"] = list(a.note)
            a.section_only.write_text(json.dumps(res, indent=1) + "\n")
        var = json.loads(a.variant.read_text()) if a.variant else None
        if var is not None and a.variant_note:
            var["notes"] = list(a.variant_note)
            a.variant.write_text(json.dumps(var, indent=1) + "\n")
        reps = []
        for r in a.replicate:
            vpath = r.with_name(f"{r.stem}_sig-nll-ratio.json")
            reps.append((json.loads(r.read_text()), json.loads(vpath.read_text()) if vpath.is_file() else None))
        write_section(res, variant=var, replicates=reps)
        return 0
    global RESULTS
    if a.pilot:
        if a.results_dir is None:
            ap.error("--pilot needs --results-dir (pilot numbers are not a measurement)")
        a.calib_windows, a.calib_seqlen, a.pool_gsm8k, a.pool_c4, a.budget = 2, 256, 16, 16, 6
        a.tokens, a.seqlen, a.wiki_windows, a.gsm8k_questions, a.piqa_limit, a.jsd_tokens = 1024, 256, 1, 4, 8, 64
    a.pattern = a.pattern or None
    if a.results_dir is not None:
        RESULTS = a.results_dir
    res = run(a)
    base, variant = (res, None) if a.signal == "jsd" or not a.reuse else (json.loads(Path(a.reuse).read_text()), res)
    if a.results_dir is None:
        write_section(base, variant=variant)
    else:
        write_section(base, a.results_dir / "section.md", variant=variant)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
