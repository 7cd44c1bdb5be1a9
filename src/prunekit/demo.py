"""`make demo`: prune the embedded default model and print a before/after table.

Defaults keep it under 10 minutes on 2 CPU cores and use the best 50% configuration measured in
BENCHMARKS.md that fits that budget: SparseGPT with the least-squares refit of the kept weights
(``refit=pcg``) and OWL's outlier-weighted per-layer sparsity, at 50%, calibrated on 8 windows x
2048 tokens of the builtin corpus's calibration half, perplexity on the first 8 windows x 2048
of its evaluation half (never the same text). ``--method`` (with ``--set``/``--allocation``)
demos any other configuration.

It ends with speculative decoding of the *dense* model (``--decode-tokens``, default 48; 0 skips):
plain greedy against prompt-lookup trees and against RASD with the demo's pruned model as the draft,
token ids compared (identical, always, in float32) and tokens/s side by side. About 30 CPU-seconds
on SmolLM2-135M (measured 2026-12-07, AMD EPYC, 1 thread: prompt lookup 1.13x, RASD with the
unstructured demo draft 0.44x, every method's ids identical to plain greedy).
"""


from __future__ import annotations

import time
from typing import Any

# The demo's default: the best 50% row of BENCHMARKS.md's routine protocol that runs in 10 min
# (SmolLM2-135M: SparseGPT 43.60, + refit 41.62, + refit + OWL 41.41).
DEFAULT = {"method": "sparsegpt", "set": ["refit=pcg"], "allocation": "owl"}


def run_demo(a) -> dict[str, Any]:
    from .config import CalibConfig, PruneConfig
    from .data import load_source
    from .export import OutputSlot

    from .allocation import get_allocator
    from .settings import parse_key_values as _parse_set
    from .methods import check_settings

    default = a.method is None
    a.method = a.method or DEFAULT["method"]
    sets = a.set if a.set is not None else (DEFAULT["set"] if default else [])
    allocation = a.allocation or (DEFAULT["allocation"] if default and a.pattern == "unstructured" else "uniform")
    given = _parse_set(sets)
    typed = check_settings(a.method, given)
    get_allocator(allocation, {})
    cfg = PruneConfig(
        method=a.method, sparsity=a.sparsity, pattern=a.pattern, method_args={k: typed[k] for k in given},
        allocation=allocation, calib=CalibConfig(source=a.calib, nsamples=a.nsamples, seqlen=a.seqlen, seed=0),
    ).validate()  # fmt: skip
    calib_src, eval_src = load_source(a.calib, "calib"), load_source(a.data, "eval")
    extra = "".join(f" {k}={v}" for k, v in cfg.method_args.items()) + (f" + {allocation} allocation" if allocation != "uniform" else "")
    print(f"prunekit demo: {a.method}{extra} {a.pattern} on {a.model}")
    print(f"  calibration: {calib_src.description}, {a.nsamples} x {a.seqlen} tokens, seed 0")
    print(f"  evaluation:  {eval_src.description}, first {a.eval_windows} non-overlapping windows x {a.seqlen}")
    from .export.hf import is_prunekit_output
    from .models import resolve_model

    src = resolve_model(a.model)
    from .models.loading import check_hub_reachable

    check_hub_reachable(src)
    # `make demo` twice replaces its own earlier output; any other non-empty folder needs --overwrite,
    # and the input model is never a valid output (the same guards as `prune`)
    overwrite = bool(getattr(a, "overwrite", False)) or is_prunekit_output(a.out)
    t0 = time.perf_counter()
    with OutputSlot(a.out, overwrite, protect=[src.path] if src.kind != "hub" else []) as slot:  # fails now, not after pruning
        return _run(a, slot, cfg, calib_src, eval_src, t0)


def _run(a, slot, cfg, calib_src, eval_src, t0) -> dict[str, Any]:
    from .api import prune_
    from .data import calibration_windows, eval_token_ids
    from .eval import model_size_bytes, parameter_count, perplexity, sparsity_summary
    from .export import fmt_bytes, model_bytes, versions, write_hf_folder
    from .models import load_model

    model, tok = load_model(a.model)
    slot.check_space(model_bytes(model))
    print(f"  loaded in {time.perf_counter() - t0:.0f}s")
    ids = eval_token_ids(eval_src, tok)
    dense_params = parameter_count(model)
    dense_bytes = model_bytes(model)
    before = perplexity(model, ids, a.seqlen, a.eval_windows, progress=True)
    calib = calibration_windows(calib_src, tok, a.nsamples, a.seqlen, 0)
    report = prune_(model, cfg, calib, tok)
    after = perplexity(model, ids, a.seqlen, a.eval_windows, progress=True)
    s = sparsity_summary(model)
    meta = {"source_model": a.model, "config": cfg.to_dict(), "report": report.to_dict(),
            "eval": {"before": before, "after": after}, "versions": versions()}  # fmt: skip
    out = slot.commit(lambda tmp: write_hf_folder(model, tok, tmp, meta))
    size = model_size_bytes(out)
    rows = [
        ("perplexity", f"{before['perplexity']:.2f}", f"{after['perplexity']:.2f}"),
        ("sparsity (block Linears)", "0.00%", f"{s['block_linear_sparsity']:.2%}"),
        ("parameters", f"{dense_params:,}", f"{s['parameters']:,} ({s['parameters'] * (1 - s['linear_sparsity']):,.0f} non-zero)"),
        ("size on disk (fp32 safetensors)", fmt_bytes(dense_bytes), fmt_bytes(size)),
        ("time", f"eval {before['seconds']:.0f}s", f"prune {report.timings['total']:.0f}s, eval {after['seconds']:.0f}s"),
    ]
    w = max(len(r[0]) for r in rows)
    print()
    print(f"{'':<{w}}  {'dense':>16}  {'pruned':>16}")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>16}  {r[2]:>16}")
    print(f"\nsaved {out}: loads with AutoModelForCausalLM.from_pretrained('{a.out}')")
    print("unstructured zeros keep the dense layout (same size on disk); structured methods shrink it.")
    result = {"before": before, "after": after, "out": str(out)}
    if getattr(a, "decode_tokens", 0):
        result["decode"] = _decode_step(a, model, eval_src)
    return result


def _decode_step(a, pruned, eval_src) -> list[dict[str, Any]]:
    """Dense model, one prompt from the evaluation text: plain greedy vs lookup vs RASD(pruned draft)."""
    from . import decoding as D
    from .models import load_model

    dense, tok = load_model(a.model)  # the pruned copy above was pruned in place
    n = a.decode_tokens
    room = min(300, int(getattr(dense.config, "max_position_embeddings", 2048) or 2048) - n - 48)
    if room < 16:
        print(f"  (speculative decoding step skipped: {a.model}'s context window leaves no room for a prompt)")
        return []
    ids = tok(" ".join(eval_src.joined.split()[:400]), add_special_tokens=False)["input_ids"][:room]
    prompt = f"{tok.decode(ids)}\n\nRepeat the first sentence of the text above, then say what the text is about."
    runs = [("plain greedy", None), ("prompt lookup", D.prompt_lookup(2, 10)),
            ("RASD: lookup + this demo's pruned draft", D.rasd(D.prompt_lookup(2, 10), D.model(pruned, tok)))]
    print(f"\nspeculative decoding of the dense {a.model} ({n} new tokens, greedy, float32, tree 4; "
          "same prompt, ids compared with plain greedy):")
    rows, ref = [], None
    for name, draft in runs:
        r = D.generate(dense, tok, prompt, draft=draft, max_new_tokens=n, tree_budget=4,
                       chat=bool(getattr(tok, "chat_template", None)))
        ref = r.ids if ref is None else ref
        st = r.stats
        rows.append({"method": name, "identical": r.ids == ref, "tokens_per_second": st.tokens_per_second,
                     "tokens_per_forward": st.tokens_per_forward, "new_tokens": st.new_tokens})
    base = rows[0]["tokens_per_second"] or 1.0
    w = max(len(r["method"]) for r in rows)
    print(f"  {'':<{w}}  {'identical':>9}  {'tok/forward':>11}  {'tok/s':>6}  {'speed-up':>8}")
    for r in rows:
        print(f"  {r['method']:<{w}}  {'yes' if r['identical'] else 'NO':>9}  {r['tokens_per_forward']:>11.2f}  "
              f"{r['tokens_per_second']:>6.1f}  {r['tokens_per_second'] / base:>7.2f}x")
    print("  an unstructured draft costs a full dense forward per drafted token, so it slows decoding down; "
          "removed blocks or widths (ShortGPT, FLAP) make cheap drafts: `prunekit recommend --goal decode` ranks "
          "the measured ones (BENCHMARKS.md, speculative decoding)")
    return rows
