"""Write ``BENCHMARKS.md`` and the perplexity-vs-sparsity plot from ``benchmarks/results/``.

    python benchmarks/report.py [--results benchmarks/results] [--out BENCHMARKS.md]

Reads every ``<results>/<protocol-id>/`` folder that ``benchmarks/run.py`` wrote (protocol.json,
dense.json, floor.json and one JSON per cell) and writes one section per protocol, the protocol
with the most finished cells first.  The plot of that protocol is
``<results>/ppl_vs_sparsity.png``; each protocol folder gets its own copy too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
TOOL_ORDER = {"prunekit": 0, "llm-compressor": 1, "torch-pruning": 2}
METHOD_ORDER = {m: i for i, m in enumerate(
    ["magnitude", "wanda", "wanda+owl", "sparsegpt", "sparsegpt+owl", "sparsegpt-refit",
     "sparsegpt-refit+owl", "alps", "flap", "wanda-sp", "magnitude-sp", "taylor-sp", "shortgpt"])}


def _read(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def load_protocol(d: Path) -> dict:
    cells = []
    for f in sorted(d.glob("*__*.json")):
        r = _read(f)
        if r and "cell" in r:
            cells.append(r)
    cells.sort(key=lambda r: (METHOD_ORDER.get(r["cell"]["method"], 99),
                              {"unstructured": 0, "nm": 1, "structured": 2}[r["cell"]["kind"]],
                              r["cell"]["sparsity"], TOOL_ORDER.get(r["cell"]["tool"], 9)))
    return {"dir": d, "protocol": _read(d / "protocol.json") or {}, "dense": _read(d / "dense.json"),
            "floors": load_floors(d), "cells": cells}


def load_floors(d: Path) -> dict[str, dict]:
    """The protocol's floors by the CPU model that measured them (``floor-<cpu>.json``; the older
    ``floor.json`` predates per-CPU floors and its CPU was not recorded)."""
    out: dict[str, dict] = {}
    for f in sorted(d.glob("floor*.json")):
        r = _read(f)
        if r and r.get("status") == "ok":
            out.setdefault(r.get("machine_cpu") or "unrecorded", r)
    return out


# --------------------------------------------------------------------------------------------
# formatting
def f_ppl(x) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 10000 else f"{x:.2f}"


def f_num(x, nd=1) -> str:
    return "–" if x is None else f"{x:,.{nd}f}"


def f_ratio(a, b) -> str:
    if a is None or b is None or b == 0:
        return "–"
    r = a / b
    return f"{r:.2f}×" if r < 100 else f"{r:,.0f}×"


def pattern_label(c: dict) -> str:
    if c["kind"] == "nm":
        return c["pattern"]
    return f"{c['sparsity'] * 100:g}%" + (" width" if c["kind"] == "structured" else "")


def figures(r: dict, dense: dict | None) -> dict:
    """The per-cell figures of the tables (None where unknown)."""
    ev = r.get("eval") or {}
    pr = r.get("prune") or {}
    kind = r["cell"]["kind"]
    dense_ev = (dense or {}).get("eval") or {}
    if kind == "structured" and ev.get("block_params") and dense_ev.get("block_params"):
        sp = 1 - ev["block_params"] / dense_ev["block_params"]
    else:
        sp = ev.get("zero_sparsity_block_linears", pr.get("achieved_sparsity"))
    loads = [x for run in (pr.get("runs") or [pr]) for x in (run.get("loadavg_1min") or [])]
    return {"ppl": ev.get("perplexity"), "prune_s": pr.get("prune_wall_s"),
            "cpu_s": pr.get("prune_cpu_s"), "load": max(loads) if loads else None,
            "rss": pr.get("peak_rss_mb"), "sparsity": sp,
            "params": ev.get("params") / 1e6 if ev.get("params") else None,
            "size": ev.get("size_bytes") / 2**20 if ev.get("size_bytes") else None}


def protocol_line(P: dict) -> str:
    p = P["protocol"].get("protocol", {})
    cal = P["protocol"].get("calibration", {})
    ev = P["protocol"].get("evaluation", {})
    w = p.get("eval_windows", 0)
    dense_ev = (P["dense"] or {}).get("eval") or {}
    avail = dense_ev.get("eval_available_windows")
    wtxt = (f"first {w}" + (f" of {avail}" if avail else "")) if w and w > 0 else "all"
    return (f"model `{p.get('model')}` · calibration {_src(p.get('calib_source'), cal)} "
            f"{p.get('nsamples')} × {p.get('seqlen')} tokens, seed {p.get('seed')} · evaluation "
            f"{_src(p.get('eval_source'), ev)}, seqlen {p.get('eval_seqlen')}, {wtxt} windows")


def _src(spec: str | None, meta: dict) -> str:
    if not spec:
        return "?"
    if spec == "builtin":
        return "**builtin corpus (fallback)**"
    if spec.lower().startswith("wikitext2:"):
        return f"WikiText-2 raw `{Path(spec.split(':', 1)[1]).name}`"
    return f"`{Path(spec).name}`"


def machine_line(P: dict) -> str:
    m = P["protocol"].get("machine", {})
    s = (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gb', '?')} GB RAM, "
         f"torch threads {m.get('torch_threads', '?')}")
    if m.get("cuda"):
        s += f", GPU {m['cuda']} (not used)"
    seen = [c for c in P["protocol"].get("cpus_seen") or [] if c != m.get("cpu")]
    if seen:
        s += (f"; earlier cells of this protocol ran on {', '.join(seen)} (same core count and memory; compare "
              "times across sessions with care)")
    return s


def versions_line(P: dict) -> str:
    v = P["protocol"].get("versions", {})
    s = ", ".join(f"{k} {v[k]}" for k in ("prunekit", "torch", "transformers", "python") if k in v)
    for peer, pv in sorted((P["protocol"].get("peer_envs") or {}).items()):
        if "error" in pv:
            continue
        tool = "llm-compressor" if peer == "llmcompressor" else peer
        main = pv.get("llmcompressor") or pv.get("torch-pruning") or "?"
        s += (f"; {tool} {main} (own venv: torch {pv.get('torch', '?')}, transformers "
              f"{pv.get('transformers', '?')})")
    return s


def section(P: dict, png_rel: str | None) -> list[str]:
    pr = P["protocol"]
    p = pr.get("protocol", {})
    routine = pr.get("routine", {"nsamples": 32, "seqlen": 2048, "eval_windows": 40})
    cal = pr.get("calibration", {})
    dense = P["dense"]
    floors = P["floors"]
    pline = f"_Protocol: {protocol_line(P)}._"
    L = [f"## Protocol `{pr.get('protocol_id', P['dir'].name)}`", ""]
    L += ["| | |", "|---|---|",
          f"| model | `{p.get('model')}` → dense float32 Hugging Face folder"
          + (f", {dense['eval']['params'] / 1e6:.1f} M parameters" if dense and dense.get("eval") else "")
          + " |",
          f"| calibration | {_src(p.get('calib_source'), cal)}: {p.get('nsamples')} windows × "
          f"{p.get('seqlen')} tokens, seed {p.get('seed')}"
          + (f", drawn from the {cal['documents_longer_than_seqlen']} of {cal['documents']} "
             f"documents longer than {p.get('seqlen')} tokens"
             if cal.get("documents_longer_than_seqlen") else "")
          + "; tokenized once, the same ids for every tool |",
          f"| evaluation | {protocol_line(P).split(' · evaluation ')[-1]}; one shared function "
          f"(`prunekit.perplexity`) on each tool's saved folder, loaded with plain transformers "
          f"(float32, SDPA) |",
          f"| machine | {machine_line(P)} |",
          f"| versions | {versions_line(P)} |",
          f"| date | {pr.get('first_run', '?')} – {pr.get('last_run', '?')} |", ""]
    for n in p.get("notes") or []:
        L += [f"**Data fallback:** {n}.", ""]
    reduced = (p.get("nsamples"), p.get("eval_windows")) != (routine["nsamples"], routine["eval_windows"])
    if reduced:
        L += [f"**Reduced protocol.** The routine protocol is {routine['nsamples']} × "
              f"{routine['seqlen']} calibration and the first {routine['eval_windows']} evaluation "
              f"windows; this table used {p.get('nsamples')} × {p.get('seqlen')} and "
              f"{p.get('eval_windows') or 'all'} windows to fit the time available on this machine. "
              f"The routine one is a flag away: `python benchmarks/run.py` (no flags; resumable, "
              f"`--methods wanda` runs one method at a time), and the papers' protocol is "
              f"`python benchmarks/run.py --nsamples 128 --eval-windows 0`.", ""]

    # -- main table
    L += ["### Perplexity, pruning time and memory", "", pline, "",
          "| method | pattern | tool | perplexity | prune s | prune CPU s | peak RSS MiB | sparsity | params M | size MiB | prune / floor |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    cores = (pr.get("machine") or {}).get("cores") or 0
    thr = min((pr.get("machine") or {}).get("torch_threads") or 0, cores or 1 << 30)
    if dense and dense.get("eval"):
        e = dense["eval"]
        L.append(f"| dense | – | – | {f_ppl(e['perplexity'])} | – | – | – | "
                 f"{e['zero_sparsity_block_linears']:.3f} | {e['params'] / 1e6:.1f} | "
                 f"{e['size_bytes'] / 2**20:,.0f} | – |")
    groups: dict[tuple, list[dict]] = {}
    for r in P["cells"]:
        c = r["cell"]
        groups.setdefault((c["method"], c["kind"], c["pattern"], c["sparsity"]), []).append(r)
    notes_used: set[str] = set()
    cpus_marked: set[str] = set()
    moved: list[str] = []  # re-pruned cells whose perplexity differs from their earlier record
    # sessions land on different CPU models: rows timed on a CPU other than most rows' get ⁴
    cpu_counts = Counter(r.get("machine_cpu") for r in P["cells"] if r.get("machine_cpu"))
    main_cpu = cpu_counts.most_common(1)[0][0] if cpu_counts else None
    for (method, kind, pattern, sp), rows in groups.items():
        pk_row = next((r for r in rows if r["cell"]["tool"] == "prunekit"), None)
        pk_fig = figures(pk_row, dense) if pk_row and pk_row.get("status") == "ok" else None
        for j, r in enumerate(rows):
            c = r["cell"]
            tool = c["tool"]
            ver = (r.get("prune") or {}).get("tool_version")
            tname = tool + (f" {ver}" if ver and tool != "prunekit" else "")
            first = f"| {method if j == 0 else ''} | {pattern_label(c) if j == 0 else ''} | {tname}"
            if r.get("status") != "ok":
                L.append(f"{first} | **failed** ({r.get('stage', '?')}): "
                         f"{_md(r.get('error', '?'))[:160]} | | | | | | | |")
                continue
            f = figures(r, dense)
            pf = "–"
            floor = floors.get(r.get("machine_cpu") or "unrecorded")  # only the same CPU's floor divides a cell
            if floors and tool == "prunekit" and method in ("wanda", "sparsegpt"):  # magnitude: no data
                if floor:
                    pf = f_ratio(f["prune_s"], floor["floor_s"])
                    if f.get("cpu_s") and floor.get("floor_cpu_s"):
                        pf += f" (CPU {f_ratio(f['cpu_s'], floor['floor_cpu_s'])})"
                else:
                    pf = "no floor on its CPU"
            mark = ""
            pr_ = r.get("prune") or {}
            if pr_.get("note"):
                mark = " ¹"
                notes_used.add("magnitude")
            if pr_.get("repeats", 1) > 1:
                mark += " ²"
                notes_used.add("repeats")
            if thr and f.get("cpu_s") and f.get("prune_s") and f["cpu_s"] < 0.75 * thr * f["prune_s"]:
                mark += " ³"
                notes_used.add("load")
            if r.get("machine_cpu") and r["machine_cpu"] != main_cpu:
                mark += " ⁴"
                cpus_marked.add(r["machine_cpu"])
            prev = r.get("previous") or {}
            if prev.get("perplexity") and f.get("ppl") and abs(f["ppl"] / prev["perplexity"] - 1) > 0.001:
                where = ", ".join(x for x in ((prev.get("finished_at") or "?")[:10], prev.get("machine_cpu")) if x)
                moved.append(f"{_cell_label(c)} {f_ppl(prev['perplexity'])} ({where}) → {f_ppl(f['ppl'])}")
            L.append(f"{first}{mark} | {f_ppl(f['ppl'])} | {f_num(f['prune_s'])} | {f_num(f['cpu_s'], 0)} | "
                     f"{f_num(f['rss'], 0)} | {f_num(f['sparsity'], 3)} | {f_num(f['params'])} | "
                     f"{f_num(f['size'], 0)} | {pf} |")
            if tool != "prunekit" and pk_fig:
                L.append(f"| | | *prunekit / {tool}* | {f_ratio(pk_fig['ppl'], f['ppl'])} | "
                         f"{f_ratio(pk_fig['prune_s'], f['prune_s'])} | "
                         f"{f_ratio(pk_fig['cpu_s'], f['cpu_s'])} | "
                         f"{f_ratio(pk_fig['rss'], f['rss'])} | "
                         f"{f_ratio(pk_fig['sparsity'], f['sparsity'])} | "
                         f"{f_ratio(pk_fig['params'], f['params'])} | "
                         f"{f_ratio(pk_fig['size'], f['size'])} | |")
    L.append("")
    if floors:
        floor = next(iter(floors.values()))
        each = "; ".join(f"{fl['floor_s']:.1f} s" + (f" ({fl['floor_cpu_s']:.0f} CPU s)" if fl.get("floor_cpu_s") else "")
                         + (f" (one forward per block: {fl['one_forward_floor_s']:.1f} s)" if fl.get("one_forward_floor_s") else "")
                         + f" on {'an unrecorded CPU' if cpu == 'unrecorded' else cpu}" + (f", peak RSS {fl['peak_rss_mb']:.0f} MiB" if fl.get("peak_rss_mb") else "")
                         for cpu, fl in floors.items())  # fmt: skip
        L += [f"**Floor** (per CPU model; a cell is divided only by the floor of the CPU that pruned it, "
              f"an unrecorded CPU: measured before the harness kept one floor per CPU): {each}. It is capturing the inputs of block 0 plus two "
              f"forward passes of every block over the {floor['nsamples']} × {floor['seqlen']} "
              f"calibration windows (batch {floor['batch_size']}, {floor.get('attn_implementation')} "
              f"attention), nothing else — the least a layer-sequential prune that calibrates each "
              f"block on the pruned outputs of the blocks before it can do. \"prune / floor\" is "
              f"prunekit's pruning time over it (wall; CPU time in brackets). prunekit's statistics "
              f"pass stops once the block's last target Linear has seen its input (the pass's output "
              f"is not needed), so a method can come in under 1.0×. The one-pass engine's floor is one "
              f"forward of every block (`benchmarks/onepass.py`).", ""]
    L += ["How to read it: *perplexity* — lower is better; *prune s* — wall time of the pruning "
          "call alone (model loading and saving excluded), in its own process; *prune CPU s* — "
          "CPU time of that call summed over the process's threads (less sensitive than wall time "
          "to other jobs sharing the machine); *peak RSS MiB* — "
          "peak resident memory (`ru_maxrss`) of that process, loading and saving included; "
          "*sparsity* — zero fraction of the Linear weights inside the decoder blocks (for "
          "structured rows: the fraction of decoder-block parameters removed); *params M* — "
          "parameters of the saved model (tied embeddings once); *size MiB* — weight files on "
          "disk (MiB). Ratio rows divide prunekit's figure by the peer's: below 1× means prunekit "
          "is lower (better for perplexity, time and memory)."]
    if "magnitude" in notes_used:
        L += ["", "¹ llm-compressor has no one-shot magnitude pruning (its "
              "`MagnitudePruningModifier` masks only during training steps, so under `oneshot` it "
              "prunes nothing): the harness applies the per-matrix |W| mask itself (N:M: the "
              "largest |W| of every M inputs) in the peer's process, so this row measures that "
              "mask, not an llm-compressor code path. The two |W| masks differ only in how ties "
              "are broken: the dequantized Q4_1 weights of this model take 16 values per block of "
              "32, so equal |W| are everywhere. prunekit prunes the lower index first "
              "(deterministic); the harness's unstructured mask does the same (hence identical "
              "50% rows), its N:M mask uses `torch.topk`, whose order among ties is unspecified — "
              "that alone moves magnitude 2:4 between ~1,500 and ~1,800 (and prunekit's own 2:4 "
              "was 2,860 with `topk` tie order): read magnitude N:M rows as one number ± that."]
    if "load" in notes_used:
        L += ["", f"³ the machine was shared while this prune ran: its CPU time is under 75% of "
              f"wall time × {thr} thread(s), so the wall time is inflated by other jobs; compare "
              f"CPU seconds (the 1-min load average before and after each job is in the JSON)."]
    if cpus_marked:
        L += ["", f"⁴ pruned and timed on {', '.join(sorted(cpus_marked))}; unmarked rows on {main_cpu} "
              "(sessions land on different machines; each cell records its CPU). Compare prune times (and "
              "ratios) between a marked and an unmarked row with care."]
    if moved:
        L += ["", "Re-pruned with the same prunekit code and settings, these cells' perplexity moved (float "
              "rounding differs across CPUs and library versions, and SparseGPT-style updates amplify it; the "
              f"table shows the newer figure): {'; '.join(moved)}. The other re-pruned cells reproduced theirs."]
    if "repeats" in notes_used:
        L += ["", "² cheap prune: repeated in fresh processes, medians of prune time and peak RSS "
              "shown (all runs are in the JSON)."]
    L += ["", "Settings: prunekit runs `prunekit.prune_` with its defaults (calibration batch "
          f"{pr.get('settings', {}).get('batch_size', 8)}, outputs of pruned blocks propagated) "
          "and its per-Linear reconstruction-error report "
          + ("off" if not pr.get("settings", {}).get("report_tokens") else "on")
          + " (peers compute none); llm-compressor runs `oneshot` with `WandaPruningModifier` / "
          "`SparseGPTModifier` targeting every Linear in the decoder blocks (lm_head excluded) and "
          "switches attention to eager while calibrating, which is why its Wanda costs about as "
          "much as its SparseGPT; every pruned model is saved as a plain dense float32 folder."]
    L.append("")

    # -- speed
    sp_rows = []
    if dense and (dense.get("eval") or {}).get("speed"):
        sp_rows.append(("dense", "", "", dense["eval"]["speed"], dense["eval"]["params"], None))
    for r in P["cells"]:
        s = (r.get("eval") or {}).get("speed")
        if r.get("status") == "ok" and s:
            c = r["cell"]
            sp_rows.append((c["tool"], c["method"], pattern_label(c), s, r["eval"]["params"],
                            r["eval"].get("speed_reference")))
    if sp_rows:
        ds = sp_rows[0][3] if sp_rows[0][0] == "dense" else None
        lens = sorted({k for row in sp_rows for k in row[3].get("prefill_ms", {})}, key=int)
        paired = any(row[5] for row in sp_rows)
        thr = sp_rows[0][3].get("torch_threads")
        dev = sp_rows[0][3].get("device", "cpu")
        runs = sp_rows[0][3].get("runs")
        L += ["### Inference speed", "", pline, "",
              f"Batch 1, float32, SDPA attention, {dev}, torch threads {thr}; median of {runs} "
              f"run{'s' if runs != 1 else ''} after a warm-up. Prefill = one forward pass over P tokens building the KV "
              f"cache; decode = {sp_rows[0][3].get('decode_tokens', 64)} greedy single-token steps "
              f"after a {sp_rows[0][3].get('decode_prompt', 128)}-token prompt. Zeros in dense "
              f"float32 matrices (unstructured, 2:4) give no speedup with these kernels; only "
              f"removed parameters (structured) do. "
              + ("Speedups marked † divide by the dense model timed *in turns* with the pruned one "
                 "in the same job (dense, pruned, dense, ...), which keeps the ratio honest on a "
                 "shared machine; unmarked ones divide by the dense row, timed in another job, "
                 "and can be off by ±30% when other jobs share the cores. "
                 if paired else
                 "The dense row and each cell were timed in separate jobs while other benchmark "
                 "jobs shared the cores, so ratios can be off by ±30%: the round-robin table in "
                 "*Structured pruning speedup on larger shapes* is the reliable speedup figure. "),
              "",
              "| tool | method | pattern | params M | "
              + " | ".join(f"prefill {n} ms" for n in lens)
              + " | decode tok/s | " + " | ".join(f"prefill {n} speedup" for n in lens)
              + " | decode speedup |",
              "|---|---|---|---|" + "---|" * (2 * len(lens) + 2)]
        for tool, method, pat, s, params, ref in sp_rows:
            pm = s.get("prefill_ms", {})
            base, mark = (ref, " †") if ref else (ds, "")
            cells = [f_num(pm.get(n), 0) for n in lens]
            ups = [f_ratio(base["prefill_ms"].get(n), pm.get(n)) + mark if base else "–" for n in lens]
            dec = f_ratio(s.get("decode_tok_s"), base.get("decode_tok_s")) + mark if base else "–"
            L.append(f"| {tool} | {method} | {pat} | {params / 1e6:.1f} | " + " | ".join(cells)
                     + f" | {f_num(s.get('decode_tok_s'))} | " + " | ".join(ups) + f" | {dec} |")
        L.append("")
    if png_rel:
        L += [f"![perplexity vs sparsity]({png_rel})", ""]
    L += [f"Raw numbers: `{_rel(P['dir'])}/*.json` (one file per cell; logs of every job under "
          f"`.bench/work/{P['dir'].name}/`).", ""]
    return L


def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)


# --------------------------------------------------------------------------------------------
def plot(P: dict, out: Path) -> Path | None:
    ok = [r for r in P["cells"] if r.get("status") == "ok"]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = P["dense"]
    dppl = ((dense or {}).get("eval") or {}).get("perplexity")
    colors = {"magnitude": "tab:gray", "wanda": "tab:blue", "sparsegpt": "tab:red",
              "flap": "tab:green", "wanda-sp": "tab:purple", "magnitude-sp": "tab:brown",
              "taylor-sp": "tab:orange", "shortgpt": "tab:olive"}
    markers = {"prunekit": "o", "llm-compressor": "s", "torch-pruning": "^"}
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=120)
    series: dict[tuple, list] = {}
    for r in ok:
        c = r["cell"]
        f = figures(r, dense)
        if f["ppl"] is None or f["sparsity"] is None:
            continue
        key = (c["tool"], c["method"], "nm" if c["kind"] == "nm" else "curve")
        series.setdefault(key, []).append((f["sparsity"], f["ppl"], c))
    for (tool, method, kind), pts in sorted(series.items()):
        pts.sort(key=lambda t: t[0])
        col = colors.get(method, "black")
        mk = markers.get(tool, "D")
        if kind == "curve":
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            if dppl:
                xs, ys = [0.0, *xs], [dppl, *ys]
            pk_ = tool == "prunekit"
            ax.plot(xs, ys, color=col, marker=mk, linestyle="-" if pk_ else "--",
                    label=f"{tool} {method}", markersize=6 if pk_ else 11,
                    markerfacecolor=col if pk_ else "none", markeredgewidth=1 if pk_ else 2,
                    alpha=0.9, zorder=3 if pk_ else 2)
        else:
            for x, y, c in pts:
                pk_ = tool == "prunekit"
                ax.plot([x], [y], color=col, marker=mk, markerfacecolor=col if pk_ else "none",
                        markersize=6 if pk_ else 11, markeredgewidth=1 if pk_ else 2,
                        linestyle="none", zorder=3 if pk_ else 2,
                        label=f"{tool} {method} {c['pattern']}")
                ax.annotate(c["pattern"], (x, y), textcoords="offset points", xytext=(6, -3),
                            fontsize=7, color=col)
    if dppl:
        ax.plot([0], [dppl], "k*", markersize=12, label=f"dense ({dppl:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (zero fraction of decoder Linears; structured: block params removed)")
    ax.set_ylabel("perplexity (log scale)")
    ax.text(0.99, 0.01, "filled: prunekit · hollow: peers · lines: unstructured / structured "
            "from dense · N:M points labelled", transform=ax.transAxes, ha="right", va="bottom",
            fontsize=7, color="0.35")
    p = P["protocol"].get("protocol", {})
    ax.set_title(f"{p.get('model')}: {p.get('nsamples')}×{p.get('seqlen')} calibration, "
                 f"{p.get('eval_windows') or 'all'} eval windows", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    h, lab = ax.get_legend_handles_labels()
    uniq = dict(zip(lab, h))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def write_report(results: Path = RESULTS, out_md: Path = REPO / "BENCHMARKS.md") -> tuple[Path, Path | None]:
    results = Path(results)
    protos = [load_protocol(d) for d in sorted(results.iterdir())
              if d.is_dir() and (d / "protocol.json").is_file()] if results.is_dir() else []
    protos.sort(key=lambda P: (-sum(r.get("status") == "ok" for r in P["cells"]),
                               -(P["protocol"].get("protocol", {}).get("nsamples") or 0)))
    main_png = None
    out_md = Path(out_md)
    L = ["# Benchmarks", "",
         "prunekit side by side with the maintained peer pruning tools on one protocol: the same "
         "dense model, the very same calibration token ids handed to every tool, and one shared "
         "evaluation of every tool's saved model. Generated by `python benchmarks/run.py` "
         f"(`benchmarks/report.py`) on {time.strftime('%Y-%m-%d %H:%M')}; each pruning job runs "
         "in its own process, so time and memory are that job's alone.", "",
         "**Noise in one perplexity figure.** SparseGPT's mask is chaotic in float rounding. On "
         "SmolLM2-135M, perturbing every Hessian by a relative 1e-7 (the size of a change in "
         "summation order) changed 1.5% of prunekit's SparseGPT 50% mask and its perplexity by "
         "0.8% (45.29 vs 44.91, 8 × 2048 calibration); rewriting the OBS loop with identical "
         "masks on identical inputs moved the 32-window 50% and 2:4 figures by 1.3% and 1.8% and "
         "the 8-window 2:4 figure by 2.6%. Read perplexity ratios within about ±2% (±3% with 8 "
         "calibration windows) as ties.", ""]
    if not protos:
        L += ["No results yet: run `python benchmarks/run.py --quick`.", ""]
    for i, P in enumerate(protos):
        png = P["dir"] / "ppl_vs_sparsity.png"
        got = plot(P, png)
        png_rel = None
        if got:
            if i == 0:
                main_png = results / "ppl_vs_sparsity.png"
                shutil.copyfile(got, main_png)
                png_rel = _relto(main_png, out_md.parent)
            else:
                png_rel = _relto(got, out_md.parent)
        if i == 1:
            L += ["---", "", "# Other protocols", ""]
        L += section(P, png_rel)
    if protos:
        routine = [P for P in protos if (P["protocol"].get("protocol", {}).get("nsamples"),
                                         P["protocol"].get("protocol", {}).get("eval_windows")) == (32, 40)]  # fmt: skip
        main_p = (routine or protos)[0]
        L += beyond_sparsegpt_section(main_p, [Q for Q in protos if Q is not main_p])
    else:
        main_p = None
    L += speedup_section(results / "structured_speedup")
    L += scale_section(results / "scale")
    L += tasks_section(results / "tasks", main_p)
    L += recovery_section(results / "recovery")
    L += extra_sections(results / "sections")
    L += ["## Reproduce", "",
          "```sh",
          "make setup-dev                        # project venv (torch 2.13.0 CPU first)",
          "python benchmarks/run.py --quick      # < 15 min on 2 cores: Wanda 50%, 8 x 2048, 10 windows",
          "python benchmarks/run.py              # routine protocol: 32 x 2048, 40 windows (hours on CPU; resumable)",
          "python benchmarks/run.py --methods wanda --patterns 2:4   # one method / pattern at a time",
          "python benchmarks/structured_speedup.py --arch smollm2-360m   # structured speedup, mid-size shapes",
          "python benchmarks/report.py           # rewrite this file from benchmarks/results/",
          "```", "",
          "Peers run in their own virtualenvs under `.bench/venvs/` (created on first use, torch "
          "2.13.0 installed first), so their pins never touch the project's environment.", ""]
    out_md.write_text("\n".join(L))
    return out_md, main_png


def _cell_of(P: dict, method: str, kind: str, sparsity: float) -> dict | None:
    for r in P["cells"]:
        c = r["cell"]
        if (c["tool"], c["method"], c["kind"]) == ("prunekit", method, kind) and abs(c["sparsity"] - sparsity) < 1e-9 \
                and r.get("status") == "ok":  # fmt: skip
            return r
    return None


def _ppl_of(P: dict, method: str, kind: str, sparsity: float) -> float | None:
    return ((_cell_of(P, method, kind, sparsity) or {}).get("eval") or {}).get("perplexity")


def beyond_sparsegpt_section(P: dict, others: list[dict] | None = None) -> list[str]:
    """Issue-13 targets (the 'beat SparseGPT' methods) against their baselines, from the cells.

    A candidate not measured on the routine protocol shows its reduced-protocol figure (beside
    that protocol's own SparseGPT), or – when it has none."""
    pid = P["protocol"].get("protocol_id", P["dir"].name)
    rows = [
        ("50% unstructured", "sparsegpt", "unstructured", 0.5,
         ["sparsegpt-refit", "sparsegpt+owl", "sparsegpt-refit+owl", "alps", "gblm", "gblm-a1e4",
          "sparsegpt-dsnot", "wanda-dsnot", "wanda-dsnot-attn"],
         "best one-shot configuration ≥ 5% below SparseGPT"),
        ("70% unstructured", "sparsegpt", "unstructured", 0.7, ["sparsegpt+owl", "sparsegpt-refit+owl"],
         "OWL + SparseGPT ≥ 20% below uniform SparseGPT"),
        ("2:4", "sparsegpt", "nm", 0.5, ["armor", "sparsegpt-refit", "alps", "gblm", "sparsegpt-dsnot"],
         "ARMOR ≤ 70 (≥ 25% below SparseGPT)"),
    ]
    L = ["## Beyond SparseGPT: targets and where prunekit stands", "",
         f"_Protocol `{pid}` (the routine protocol); perplexity from the cells "
         "of the main table; a method measured only on the reduced protocol shows that figure in "
         "brackets beside that protocol's SparseGPT; – = not measured yet. Read differences within "
         "±2% as ties._", "",
         "| budget | SparseGPT | method | perplexity | vs SparseGPT | vs its base method | target |",
         "|---|---|---|---|---|---|---|"]
    other_cpu = False
    for label, base, kind, sp, cands, target in rows:
        rb = _cell_of(P, base, kind, sp) or {}
        b, b_cpu = (rb.get("eval") or {}).get("perplexity"), rb.get("machine_cpu")
        for j, m in enumerate(cands):
            rm = _cell_of(P, m, kind, sp) or {}
            v, m_cpu = (rm.get("eval") or {}).get("perplexity"), rm.get("machine_cpu")
            cell, rel = (f_ppl(v) if v is not None else "–"), (f"{(v / b - 1) * 100:+.1f}%" if (v is not None and b) else "–")
            if v is not None and b_cpu and m_cpu and m_cpu != b_cpu:
                cell += " ⁴"
                other_cpu = True
            if v is None:
                for Q in others or []:
                    v2, b2 = _ppl_of(Q, m, kind, sp), _ppl_of(Q, base, kind, sp)
                    if v2 is not None and b2:
                        q = Q["protocol"].get("protocol", {})
                        cell = f"({f_ppl(v2)}; reduced {q.get('nsamples')}x{q.get('seqlen')}, {q.get('eval_windows')} windows; SparseGPT {f_ppl(b2)})"
                        rel = f"({(v2 / b2 - 1) * 100:+.1f}%)"
                        break
            own = m.split("-dsnot")[0] if "-dsnot" in m else None  # a refinement: vs its base too
            vb = _ppl_of(P, own, kind, sp) if own else None
            vs_base = f"{own} {f_ppl(vb)}: {(v / vb - 1) * 100:+.1f}%" if (own and v is not None and vb) else ""
            L.append(f"| {label if j == 0 else ''} | {f_ppl(b) if j == 0 and b else ('–' if j == 0 else '')} | {m} | "
                     f"{cell} | {rel} | {vs_base} | {target if j == 0 else ''} |")
    L += ["", "`sparsegpt-refit` is SparseGPT with `--set refit=pcg` (the kept weights re-solved to the "
          "least-squares optimum on SparseGPT's mask); `+owl` is `--allocation owl` (M = 5, λ = 0.08); "
          "`-dsnot` is `--set refine=dsnot` (`-dsnot-attn`: with `refine_layers=attention`, the reference "
          "code's default, MLPs left as the base method pruned them); `gblm-a1e4` is GBLM with `--set alpha=10000` (at the paper's "
          "α = 100 the gradient term is 0.1–1% of the activation term on SmolLM2). "
          "OWL adds one dense forward pass of every block before the prune; the refit adds conjugate-"
          "gradient steps per Linear (their times are in the main table, measured on a machine shared "
          "with other jobs: see the ³ marks). D-Pruner and Týr have their own sections below."]
    if other_cpu:
        L += ["", "⁴ pruned on a different CPU model than this budget's SparseGPT cell (each cell records its CPU). The "
              "same code and settings re-pruned on the other CPU moved SparseGPT 50% by 1.8% (43.60 ↔ 44.39) "
              "and SparseGPT + refit 2:4 by 3.1% (84.30 ↔ 86.91): read these differences within ±3% as ties."]
    L.append("")
    return L


def scale_section(d: Path) -> list[str]:
    """``benchmarks/scale.py``: streaming prune of a 7B-shaped checkpoint (peak RSS, time), and the
    GPU runs of ``benchmarks/gpu_check.sh`` (``--device cuda``: wall, peak GPU memory, peak RSS)."""
    files = sorted(d.glob("*.json")) if d.is_dir() else []
    recs = [r for r in (_read(f) for f in files) if r]
    cpu = [r for r in recs if not str(r.get("device") or "cpu").startswith("cuda")]
    gpu = [r for r in recs if str(r.get("device") or "cpu").startswith("cuda")]
    if not recs:
        return []

    def ok(r: dict) -> str:
        out = r.get("output") or {}
        s = f"sparsity {out.get('min_linear_sparsity', '?')} in every Linear, {', '.join(out.get('dtypes') or [])}"
        if out.get("nm_2_4_valid"):
            s += ", valid 2:4"
        if out.get("keys_and_shapes_match_from_pretrained") is False:
            s += ", **keys/shapes differ from from_pretrained's**"
        return s

    L = ["## Scale: models larger than memory (`--stream`)", ""]
    est: dict[str, dict[str, float]] = {}
    if cpu:
        L += ["_A Llama-2-7B-shaped bf16 checkpoint with random weights (32 blocks, hidden 4096, "
              "intermediate 11008, vocab 32000), written tensor by tensor into shards by "
              "`benchmarks/scale.py`, pruned by `prunekit prune DIR --stream` in its own process on this "
              "2-core CPU, one torch thread; 2 × 128-token calibration windows (enough to prove the memory "
              "bound; not a quality figure). Peak RSS is the child's `ru_maxrss`._", "",
              "| method | blocks | checkpoint GB | peak RSS GB | target | wall s | output |", "|---|---|---|---|---|---|---|"]
        for r in cpu:
            target = "< 4 GB" if r.get("method") == "wanda" else "< 6 GB"
            L.append(f"| {r.get('method')} {r.get('pattern')} | {r.get('blocks')} of 32 | {r.get('checkpoint_gb')} | "
                     f"**{r.get('peak_rss_gb')}** | {target} | {f_num(r.get('wall_s'), 0)} | {ok(r)} |")
            for shape, v in ((r.get("extrapolation") or {}).get("shapes") or {}).items():
                est.setdefault(shape, {})[r.get("method")] = v.get("peak_rss_gb_estimate")
        L += ["", "RSS after each block stays flat (Wanda: 375–555 MB between blocks), so peak memory does not "
              "grow with the number of blocks; SparseGPT was run on 4 of the 32 blocks (same shapes; the "
              "whole model would take about 75 minutes on this shared machine). Reproduce: "
              "`OMP_NUM_THREADS=1 python benchmarks/scale.py --method wanda` (and `--method sparsegpt "
              "--layers 4`).", ""]
    if est:
        L += ["Paper extrapolation of peak RSS (the per-step formula is in the JSON files, fitted to the "
              "7B measurement; 256 calibration tokens — more tokens add the block inputs, "
              "2 × tokens × hidden × 4 bytes):", "",
              "| shape | Wanda GB | SparseGPT GB |", "|---|---|---|"]
        for shape, v in est.items():
            L.append(f"| {shape} | {v.get('wanda', '–')} | {v.get('sparsegpt', '–')} |")
        L.append("")
    if gpu:
        L += ["GPU runs (`bash benchmarks/gpu_check.sh` on the lent GPU machine: random bf16 weights, "
              "`prune_streaming(..., device='cuda')`, each block on the GPU while the model stays on disk; "
              "random calibration token ids; peak GPU memory is `torch.cuda.max_memory_allocated`, peak RSS "
              "the child's `ru_maxrss`). Anchor: SparseGPT's paper prunes a 175B model on one 80 GB GPU in "
              "about 4 hours.", "",
              "| shape | method | calibration | blocks | GPU | wall s | peak GPU GB (reserved) | peak RSS GB | output |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in gpu:
            g = r.get("gpu") or {}
            L.append(f"| {r.get('shape_name', '?')}{' (tiny)' if r.get('tiny') else ''} | {r.get('method')} "
                     f"{r.get('pattern')} | {r.get('calibration', '?').removesuffix(' random token ids')} | "
                     f"{r.get('blocks')} | {g.get('name', '?')} | {f_num(r.get('wall_s'), 0)} | "
                     f"**{f_num(g.get('max_allocated_gb'), 1)}** ({f_num(g.get('max_reserved_gb'), 1)}) | "
                     f"{r.get('peak_rss_gb')} | {ok(r)} |")
        L.append("")
    else:
        L += ["GPU figures (Llama-3-8B shapes, 128 × 2048 calibration): not measured — no session so far had "
              "the GPU machine; the `--device cuda` path runs each block on the GPU and is tested on CPU only. "
              "`bash benchmarks/gpu_check.sh` is the prepared run for a session that has one.", ""]
    return L


def dense_task_scores(d: Path, model: str | None) -> dict:
    """``benchmarks/tasks.py``'s full-set task scores of the dense ``model`` in ``d`` (``{}`` if none)."""
    r = _read(d / "dense.json") if (d / "dense.json").is_file() else None
    return (r.get("tasks") or {}) if r and r.get("model") == model and not r.get("limit") else {}


def _scoring_minutes(cells: list[dict]) -> str:
    """How long the full sets took per model on one core, per CPU, from the cells' own records."""
    span: dict[str, dict[str, list[float]]] = {}
    for r in cells:
        for task, v in ((r.get("eval") or {}).get("tasks") or {}).items():
            if isinstance(v, dict) and v.get("seconds"):
                span.setdefault(r.get("machine_cpu") or "an unrecorded CPU", {}).setdefault(task, []).append(v["seconds"] / 60)
    if not span:
        return ""
    def one(task: str) -> str:
        return ", ".join(f"{min(v):.0f}–{max(v):.0f} min on the {cpu.removesuffix(' Processor')}"
                         for cpu, d in sorted(span.items()) if (v := d.get(task)))
    return (f"Per model on one core, the full LAMBADA set took {one('lambada')}; PIQA {one('piqa')} (the run.py "
            "cells' own records), besides the prune and its perplexity.")


def _cell_label(c: dict) -> str:
    return f"{c.get('tool')} {c.get('method')} {pattern_label(c)}"


def tasks_section(d: Path, P: dict | None = None) -> list[str]:
    """Zero-shot task scores (lm-eval's rules). First the routine-protocol rows: each cell of
    protocol ``P`` with the scores ``run.py --tasks`` stored in it, else those of a
    ``benchmarks/tasks.py`` result that names the cell (``"cell": KEY``, a folder pruned again for
    scoring, its own WikiText-2 perplexity in ``wikitext2_ppl``), and the cells not scored yet;
    then every other ``benchmarks/tasks.py`` result (the recovery benchmark's folders)."""
    files = [(f, _read(f) or {}) for f in sorted(d.glob("*.json"))] if d.is_dir() else []
    files = [(f, r) for f, r in files if not r.get("limit")]  # full sets only
    cells = [r for r in (P or {}).get("cells", []) if r.get("status") == "ok"]
    model = (((P or {}).get("protocol") or {}).get("protocol") or {}).get("model")
    by_cell = {r["cell"]: (f, r) for f, r in files if r.get("cell")}
    dense_f = next(((f, r) for f, r in files if f.stem == "dense" and r.get("model") == model), None)
    dense_t = dict(((P or {}).get("dense") or {}).get("eval") or {})
    if not dense_t.get("tasks") and dense_f:
        dense_t["tasks"] = dense_f[1].get("tasks") or {}  # benchmarks/tasks.py: same model, full sets

    def task_seconds(t):  # scoring time of the tasks in a result (a file may gather several runs)
        return sum(v.get("seconds") or 0 for v in t.values())

    def pc(task, m):
        v = (task.get("metrics") or {}).get(m)
        se = (task.get("stderr") or {}).get(m)
        return f"{100 * v:.2f}% ± {100 * se:.2f}" if v is not None and se is not None else "–"

    def scores(t):
        la, pi = t.get("lambada") or {}, t.get("piqa") or {}
        lppl = (la.get("metrics") or {}).get("perplexity")
        return (f"{pc(la, 'acc')} | {f_ppl(lppl) if lppl else '–'} | {pc(pi, 'acc')} | {pc(pi, 'acc_norm')} | "
                f"{f_num(task_seconds(t), 0)}")

    rows, missing, notes, partial = [], [], [], []
    for r in cells:
        c, e = r["cell"], r["eval"]
        mine = e.get("tasks") or {}
        f, other = by_cell.get(r.get("key"), (None, None))
        if other is not None and len(other.get("tasks") or {}) > len(mine):  # the fuller of the two
            ppl, t, src = other.get("wikitext2_ppl"), other.get("tasks") or {}, f"tasks.py `{f.stem}`"
            if other.get("note"):
                notes.append(f"`{f.stem}`: {other['note']}")
        elif mine:
            ppl, t, src = e.get("perplexity"), mine, "run.py"
        else:
            missing.append(_cell_label(c))
            continue
        rows.append(f"| {c['method']} | {pattern_label(c)} | {c['tool']} | {f_ppl(ppl)} | {scores(t)} | {src} |")
        if not {"lambada", "piqa"} <= set(t):
            partial.append(f"{_cell_label(c)} (no {' or '.join(sorted({'lambada', 'piqa'} - set(t))).upper()} yet)")
    named = {by_cell[r["key"]][0] for r in cells if r.get("key") in by_cell}  # a file naming no cell here stays below
    others = [(f, r) for f, r in files if f not in named and f.stem != "dense"]
    if not rows and not others and not dense_t.get("tasks"):
        return []
    L = ["## Beyond perplexity: zero-shot tasks", "",
         "_`prunekit eval --tasks lambada,piqa` with lm-evaluation-harness's scoring rules (checked "
         "equal to lm-eval 0.4.13 in the tests): LAMBADA (OpenAI) last-word accuracy and perplexity, "
         "PIQA acc / acc_norm, full sets, one torch thread. ± is the standard error._", ""]
    head = ("| method | pattern | tool | WikiText-2 ppl | LAMBADA acc | LAMBADA ppl | PIQA acc | PIQA acc_norm | "
            "scoring s | scored by |")
    if P and (rows or dense_t.get("tasks")):
        L += [f"Routine-protocol rows ({len(rows) - len(partial)} of {len(cells)} cells scored on both tasks"
              + (f", {len(partial)} on one" if partial else "") + f"; _{protocol_line(P)}_). "
              "`python benchmarks/run.py --tasks lambada,piqa` prunes a cell again and scores the saved folder "
              "right after its perplexity (run.py); tasks.py rows are folders pruned again with the cell's "
              "settings and scored by `python benchmarks/tasks.py --model DIR --cell KEY`, their own "
              "perplexity beside:", "", head, "|---|---|---|---|---|---|---|---|---|---|"]
        if dense_t.get("tasks"):
            L.append(f"| dense | – | dense | {f_ppl(dense_t.get('perplexity'))} | {scores(dense_t['tasks'])} | "
                     f"{'tasks.py `dense`' if dense_f and dense_t['tasks'] is dense_f[1].get('tasks') else 'run.py'} |")
        L += rows
        if missing:
            L += ["", f"Not scored yet ({len(missing)}): " + "; ".join(missing) + ". " + _scoring_minutes(cells)]
        if partial:
            L += ["", f"Scored on one task so far ({len(partial)}): " + "; ".join(partial) + "."]
        if notes:
            L += ["", "Notes: " + " ".join(notes)]
        L.append("")
    if others:
        L += ["Other scored folders (the recovery benchmark's `.bench/recovery/<cell>-pruned` and "
              "`<cell><tag>-recovered`; their WikiText-2 perplexities are in the Recovery section):", "",
              "| folder | LAMBADA acc | LAMBADA ppl | PIQA acc | PIQA acc_norm | scoring s |",
              "|---|---|---|---|---|---|"]
        L += [f"| {f.stem} (`{r.get('model', '')}`) | {scores(r.get('tasks') or {})} |" for f, r in others]
        extra = [f"`{f.stem}`: {r['note']}" for f, r in others if r.get("note")]
        L += ["", "Notes: " + " ".join(extra)] if extra else []
        L.append("")
    return L


def _piqa_by_folder(d: Path) -> dict[str, float]:
    """Full-set PIQA acc of ``benchmarks/tasks.py``'s results, keyed by the scored folder's name."""
    out: dict[str, float] = {}
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        r = _read(f) or {}
        acc = (((r.get("tasks") or {}).get("piqa") or {}).get("metrics") or {}).get("acc")
        if acc is not None and not r.get("limit") and r.get("model"):
            out[Path(r["model"]).name] = acc
    return out


def recovery_section(d: Path) -> list[str]:
    """``benchmarks/recovery.py``: perplexity against recovery tokens (LoRA, mask kept)."""
    files = sorted(d.glob("*.json")) if d.is_dir() else []
    if not files:
        return []
    import math

    L = ["## Recovery (`prunekit recover`)", "",
         "_LoRA through peft on the pruned model, merged back into a plain folder, or full fine-tuning of the "
         "block Linears (`--adapter full`); for unstructured / N:M models the sparsity mask is kept exactly "
         "either way. `bf16 autocast` (`--precision bf16`): the training passes in bfloat16, weights, "
         "gradients and optimizer in float32, evaluation in float32. `batch B × S`: B windows of S tokens per "
         "optimizer step, random windows from the documents longer than S (`--windows random`) unless `packed` "
         "(`--windows packed`: every document end to end with EOS between, each token once per epoch). "
         "Recovery data: C4 documents (never the evaluation text); "
         "WikiText-2 perplexity on the routine protocol's first 40 windows unless the curve says "
         "otherwise; one torch thread on a machine shared with other jobs unless a note says otherwise._", "",
         "| cell | recipe | dense | pruned | recovered | tokens | train s | log-gap closed | PIQA acc pruned → recovered | target |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    piqa = _piqa_by_folder(d.parent / "tasks")
    best: dict[str, tuple[float, float]] = {}
    capped, stopped, rebased, notes = False, False, [], []
    for f in files:
        r = _read(f) or {}
        if r.get("note"):
            notes.append(f"`{f.stem}`: {r['note']}")
        curve = r.get("curve") or []
        rec = r.get("recovered")
        last = rec.get("perplexity") if isinstance(rec, dict) else rec
        # a run stopped before its final evaluation: its curve's last point is on fewer windows,
        # not comparable with the 40-window pruned figure, so it gets no gap and no "best"
        partial = None if last or not curve else curve[-1]
        dense, pruned = r.get("dense"), r.get("pruned")
        closed = "–"
        if last and dense and pruned and pruned > dense:
            frac = (math.log(pruned) - math.log(last)) / (math.log(pruned) - math.log(dense))
            closed = f"{frac * 100:.0f}%"
            if frac > best.get(r.get("cell"), (-1.0, 0.0))[0]:
                best[r.get("cell")] = (frac, last)
        toks = r.get("trained_tokens") or r.get("recovered_tokens") or (curve[-1]["tokens"] if curve else None)
        c = r.get("config") or {}
        recipe = (f"full fine-tuning, lr {c.get('lr', 0):g}" if c.get("adapter") == "full"
                  else f"LoRA r={c.get('r', '?')}, lr {c.get('lr', 0):g}") + (
            f", distill λ={c['distill']:g}" + (f" T={c['temperature']:g}" if c.get("temperature", 1) != 1 else "")
            if c.get("distill") else ", LM loss") + (", bf16 autocast" if c.get("precision") == "bf16" else "") + (
            f", batch {c['batch_size']} × {c['seqlen']}" + (" packed" if c.get("windows") == "packed" else "")
            if c.get("batch_size") and c.get("seqlen") else "")  # fmt: skip
        secs = r.get("train_seconds")
        cap = f" of {c.get('tokens', 0):,} ‡" if r.get("stopped_early") else ""
        capped |= bool(cap)
        own = r.get("pruned_harness") and pruned and abs(r["pruned_harness"] / pruned - 1) > 1e-4
        if own:
            rebased.append(f"{r.get('cell')} {f_ppl(pruned)} (harness {f_ppl(r['pruned_harness'])})")
        shown = (f_ppl(last) if last else f"not finished ({f_ppl(partial['perplexity'])} on the curve's "
                                               f"{r.get('curve_windows')} windows) §" if partial else "–")  # fmt: skip
        stopped |= bool(partial)
        p0, p1 = piqa.get(f"{r.get('cell')}-pruned"), piqa.get(f"{f.stem}-recovered")
        tasks = f"{p0:.2%} → {p1:.2%}" if p0 is not None and p1 is not None else "–"
        L.append(f"| {r.get('cell')} | {recipe} | {f_ppl(dense) if dense else '–'} | "
                 f"{(f_ppl(pruned) + (' †' if own else '')) if pruned else '–'} | "
                 f"{shown} | {toks:,}{cap} | {f'{secs:.0f}' if secs else '–'} | {closed} | {tasks} | ≥ 50% |"
                 if toks else f"| {r.get('cell')} | {recipe} | – | – | – | – | – | – | – | ≥ 50% |")
    L.append("")
    if capped:
        L += ["‡ stopped by the benchmark's training-time cap (`--max-train-seconds`) before the planned budget "
              "(trained of planned tokens): since 2026-12-02 through `max_seconds`, whose schedule has decayed the "
              "learning rate to zero by then; earlier runs were cut on the token schedule (the one above at 99.5% "
              "of its steps, its learning rate nearly decayed).", ""]
    if stopped:
        L += ["§ stopped before the final evaluation (see its note): the figure is the last curve point, on fewer "
              "windows than the pruned and recovered columns, so no gap is computed from it.", ""]
    if notes:
        L += ["Notes: " + " ".join(notes), ""]
    if rebased:
        why = (" FLAP's default `align=64` (since 2026-12-01) keeps 1152 MLP channels, 18.7% of the block parameters "
               "removed, where the harness's flap 20% cell kept 1126 (19.9%): the folder is the `flap-a64` cell."
               if any(x.startswith("flap-20 ") for x in rebased) else "")
        L += ["† the pruned folder this run recovered, measured on the same 40 windows, differs from the harness's "
              "routine cell (older code or defaults); the gap is taken from the folder actually recovered: "
              + "; ".join(sorted(set(rebased))) + "." + why, ""]
    if best:
        L += ["Best per cell against the target (≥ 50% of the log-perplexity gap closed, ≤ 1 hour of training): "
              + "; ".join(f"{cell} {frac * 100:.1f}% ({f_ppl(ppl)}): "
                          + ("met" if frac >= 0.5 else f"missed by {(0.5 - frac) * 100:.1f} points")
                          for cell, (frac, ppl) in best.items()) + ".", ""]
    for f in files:
        png = f.with_suffix(".png")
        if png.is_file():
            L += [f"![{f.stem} recovery curve]({_relto(png, REPO)})", ""]
    L += ["Curve points in the JSON files next to the plots (perplexity vs recovery tokens; the curve "
          "uses fewer windows than the final figure when the JSON says so).", ""]
    return L


def extra_sections(d: Path) -> list[str]:
    """Sections that topic benchmark scripts write themselves (``results/sections/NN-topic.md``,
    each starting with its ``## `` heading), included in file-name order."""
    L: list[str] = []
    for f in sorted(d.glob("*.md")) if d.is_dir() else []:
        text = f.read_text().strip()
        if text:
            L += [text, ""]
    return L


def speedup_section(d: Path) -> list[str]:
    """Tables from ``benchmarks/structured_speedup.py`` (one per architecture)."""
    files = sorted(d.glob("*.json")) if d.is_dir() else []
    if not files:
        return []
    L = ["## Structured pruning speedup on larger shapes", "",
         "Written by `benchmarks/structured_speedup.py`: the published architecture built in code "
         "(random init: latency depends on shapes, not values), pruned by prunekit's structured "
         "methods (heads and MLP channels physically removed, stock config) and timed beside the "
         "dense model in one process, in turns (dense, A, B, dense, ...; batch 1, float32, SDPA, "
         "logits for every prompt position, medians; every run is in the JSON). Perplexity of "
         "these methods is in the tables above, on the real SmolLM2-135M.", ""]
    for f in files:
        r = _read(f)
        if not r:
            continue
        rows = r["rows"]
        dense = rows[0]
        lens = list(dense["speed"]["prefill_ms"])
        L += [f"**{r['arch']}** (architecture of `{r['source']}`, {dense['params'] / 1e6:.0f} M "
              f"parameters) on {r['device']} ({r['cpu']}), {r['threads']} torch threads, "
              f"{r['runs']} runs per figure, torch {r['torch']}, {r['date']}; calibration "
              f"{r['calib']}.", "",
              "| model | heads (q/kv) | MLP channels | block params removed | params (M) | "
              + " | ".join(f"prefill {n} ms" for n in lens) + " | "
              + " | ".join(f"prefill {n} speedup" for n in lens) + " | decode tok/s | decode speedup |",
              "|---|---|---|---|---|" + "---|" * (2 * len(lens)) + "---|---|"]
        for row in rows:
            sp = row["speed"]
            is_dense = row is dense
            removed = "—" if is_dense else f"{1 - row['block_params'] / dense['block_params']:.1%}"
            heads = f"{row.get('heads', '')}/{row.get('kv_heads', '')}"
            inter = str(row.get("intermediate", ""))
            name = "dense" if is_dense else f"{row['model']} {row['sparsity']:.0%}"
            L.append(f"| {name} | {heads} | {inter} | {removed} | {row['params'] / 1e6:.1f} | "
                     + " | ".join(f_num(sp["prefill_ms"].get(n)) for n in lens) + " | "
                     + " | ".join("1.00×" if is_dense else f"{row['prefill_speedup'][n]:.2f}×" for n in lens)
                     + f" | {f_num(sp.get('decode_tok_s'), 2)} | "
                     + ("1.00×" if is_dense or row.get("decode_speedup") is None else f"{row['decode_speedup']:.2f}×")
                     + " |")
        L.append("")
    return L


def _relto(p: Path, base: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(Path(p).resolve())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    a = ap.parse_args(argv)
    md, png = write_report(a.results, a.out)
    print(f"wrote {md}" + (f" and {png}" if png else ""))
    if a.results.resolve() == RESULTS.resolve():
        # the method guide (docs/METHODS.md, packaged guide_data.json) reads the same results:
        # refresh it in the same step so the two cannot drift (tests/test_guide.py checks it)
        import guide
        guide.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
