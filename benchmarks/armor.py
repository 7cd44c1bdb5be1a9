"""ARMOR benchmark (issue 13, item 1): 2:4 perplexity, cost, wrapper overhead and inference cost.

    OMP_NUM_THREADS=1 python benchmarks/armor.py --latency     # overhead + CPU prefill latency
    OMP_NUM_THREADS=1 python benchmarks/armor.py --layers      # layer errors of each variant
    OMP_NUM_THREADS=1 python benchmarks/armor.py --iters-curve # layer error and time vs iterations
    python benchmarks/armor.py                                 # section + PNG from stored results

The perplexity cells come from the generic harness (``benchmarks/run.py --methods armor
--patterns 2:4``; iteration variants ``--variant armor-itN=armor:iters=N``, on the routine
protocol or the reduced ``--quick`` one). This script reads them beside SparseGPT's, Wanda's and
ALPS's 2:4 cells of the same protocol (iters = 0 of the curve is SparseGPT: ARMOR's default core starts
from SparseGPT's solution with identity wrappers), plots perplexity against iterations, one line
per protocol with at least two points (``results/armor/ppl_vs_iters.png``), and writes
``results/sections/30-armor.md``.

``--latency`` loads SmolLM2-135M, wraps every decoder Linear in identity ARMOR wrappers of block
size 64 (latency does not depend on the wrapper values), and measures prefill latency (one
sequence of ``--tokens`` tokens, ``--runs`` runs, median, ``--threads`` torch threads) dense vs
wrapped; it also records :func:`prunekit.methods.armor.armor_overhead`. Stored in
``results/armor/latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "armor"
SECTION = RESULTS / "sections" / "30-armor.md"
ROUTINE = "smollm2-135m_c4-sample-32x2048-s0_wikitext2-test-40x2048"
QUICK = "smollm2-135m_c4-sample-8x2048-s0_wikitext2-test-10x2048"
DEFAULT_ITERS = 50  # ARMOR's default (prunekit.methods.armor.ARMOR.iters)


def _cell(protocol: str, key: str) -> dict | None:
    p = RESULTS / protocol / f"{key}.json"
    if not p.exists():
        return None
    d = json.loads(p.read_text())
    return d if d.get("status") == "ok" else None


def _iters_of(cell: dict) -> int:
    return int(cell["prune"].get("settings", {}).get("iters", DEFAULT_ITERS))


def latency(tokens: int, runs: int, threads: int, block: int) -> dict:
    import torch

    import prunekit as pk
    from prunekit.api import target_linears
    from prunekit.config import PruneConfig
    from prunekit.methods.armor import armor_overhead
    from prunekit.methods.remote_code_armor import make_armor

    torch.set_num_threads(threads)
    model, _ = pk.load_model("smollm2-135m")
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))

    def bench() -> list[float]:
        out = []
        with torch.inference_mode():
            model(ids)  # warm-up
            for _ in range(runs):
                t = time.perf_counter()
                model(ids, use_cache=False)
                out.append(time.perf_counter() - t)
        return out

    dense = bench()
    for lin in target_linears(model, PruneConfig(method="armor", pattern="2:4")).values():
        make_armor(lin, block)
    wrapped = bench()
    res = {
        "model": "smollm2-135m", "tokens": tokens, "runs": runs, "torch_threads": threads,
        "block_size": block, "dense_s": dense, "armor_s": wrapped,
        "dense_median_s": statistics.median(dense), "armor_median_s": statistics.median(wrapped),
        "overhead": armor_overhead(model), "loadavg_1min": os.getloadavg()[0],
        "note": "identity wrappers on a dense core: the dense matmul runs as before; the cost "
                "measured is the wrappers' block-diagonal matmuls (no 2:4 kernel on CPU)",
    }  # fmt: skip
    res["slowdown"] = res["armor_median_s"] / res["dense_median_s"]
    return res


LAYER_CONFIGS = {
    "wanda": ("wanda", {}),
    "sparsegpt": ("sparsegpt", {}),
    "armor paper proxy (diag, init=wanda)": ("armor", {"proxy": "diag", "init": "wanda", "iters": 20}),
    "armor block proxy (init=sparsegpt)": ("armor", {"proxy": "block", "iters": 20}),
    "armor default (hessian, init=sparsegpt)": ("armor", {"iters": 20}),
    "armor default, swaps=0": ("armor", {"swaps": 0, "iters": 20}),
    "armor default, block_size=32": ("armor", {"block_size": 32, "iters": 20}),
}


ALL_MATS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
CURVE_ITERS = (0, 5, 10, 20, 40, 80)


def layer_errors(layer: int, windows: int, seqlen: int, configs: dict | None = None,
                 names: list[str] | None = None) -> dict:  # fmt: skip
    """Relative layer error tr(ΔHΔᵀ)/tr(WHWᵀ) of each method on matrices of one dense block."""
    import torch

    import prunekit as pk
    from prunekit.data import calibration_windows
    from prunekit.engine.stats import LayerStats, Stat
    from prunekit.methods import get_method
    from prunekit.methods.armor import _left, _right
    from prunekit.patterns import NM

    torch.set_num_threads(1)
    model, tok = pk.load_model("smollm2-135m")
    ids = calibration_windows(str(ROOT.parent / "shared" / "data" / "c4-sample"), tok, windows, seqlen, 0)
    blk = model.model.layers[layer]
    names = names or ["self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj"]
    configs = configs or LAYER_CONFIGS
    Hs: dict = {}

    def hook(n):
        def f(mod, inp, out):
            X = inp[0].reshape(-1, inp[0].shape[-1]).double()
            Hs[n] = Hs.get(n, 0) + X.T @ X
        return f

    handles = [blk.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    res: dict = {"layer": layer, "calibration": f"{windows} x {seqlen} C4 (seed 0)", "errors": {}, "seconds": {}}
    for n in names:
        W = blk.get_submodule(n).weight.detach().float()
        H = Hs[n]
        st = LayerStats(n, ids.numel(), {Stat.HESSIAN: (H * 2 / ids.numel()).float(), Stat.INPUT_SQNORM: torch.diagonal(H).float()})
        for label, (meth, kw) in configs.items():
            t = time.perf_counter()
            Wn, info = get_method(meth, **kw).prune(W, st, NM(2, 4), 0.5)
            dt = time.perf_counter() - t
            if "armor_A" in info:
                Wn = _left(info["armor_A"].double(), _right(Wn.double(), info["armor_B"].double()))
            D = W.double() - Wn.double()
            err = float(torch.trace(D @ H @ D.T) / torch.trace(W.double() @ H @ W.double().T))
            res["errors"].setdefault(label, {})[n] = err
            res["seconds"].setdefault(label, {})[n] = round(dt, 2)
            print(f"{n} {label}: {err:.4f} ({dt:.1f}s)", flush=True)
    return res


def _plot_curve(d: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [int(k.split("=")[1]) for k in d["errors"]]
    fig, ax1 = plt.subplots(figsize=(5.8, 3.6))
    for n in d["errors"][next(iter(d["errors"]))]:
        ax1.plot(its, [d["errors"][k][n] / d["errors"]["iters=0"][n] for k in d["errors"]], "o-", ms=3, label=n)
    ax1.set_xlabel("BCD iterations per matrix (0 = SparseGPT 2:4)")
    ax1.set_ylabel("layer error / SparseGPT's")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=6)
    ax2 = ax1.twinx()
    ax2.plot(its, [sum(d["seconds"][k].values()) for k in d["seconds"]], "k--", lw=1)
    ax2.set_ylabel("seconds for the block's 7 matrices (dashed)")
    ax1.set_title(f"SmolLM2-135M block {d['layer']}, ARMOR defaults except iterations", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _plot(curves: dict[str, tuple[list[tuple[int, float]], float | None]], path: Path) -> None:
    """One line per protocol: ARMOR perplexity against iterations (0 = SparseGPT), ALPS 2:4 dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (label, (points, ref)) in enumerate(curves.items()):
        xs, ys = zip(*points)
        ax.plot(xs, ys, "o-", color=f"C{i}", label=f"ARMOR, {label}")
        if ref is not None:
            ax.axhline(ref, color=f"C{i}", ls=":", alpha=0.6, label=f"ALPS 2:4, {label} ({ref:.1f})")
    ax.set_xlabel("BCD iterations per matrix (0 = SparseGPT 2:4)")
    ax.set_ylabel("WikiText-2 perplexity")
    ax.set_yscale("log")
    ax.set_title("SmolLM2-135M 2:4: ARMOR perplexity vs iterations", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


PROTOCOL_LABELS = {ROUTINE: "routine (32x2048 calib, 40 windows)", QUICK: "reduced (8x2048 calib, 10 windows)"}


def _iters_points(protocol: str) -> dict[int, tuple[float, float]]:
    """``{iterations: (ppl, prune CPU s)}`` of a protocol's ARMOR 2:4 cells; 0 is SparseGPT 2:4 (CPU
    seconds: one thread each, and less inflated than wall time when other jobs share the machine)."""
    def point(c: dict) -> tuple[float, float]:
        return c["eval"]["perplexity"], c["prune"].get("prune_cpu_s") or c["prune"]["prune_wall_s"]

    pts: dict[int, tuple[float, float]] = {}
    sg = _cell(protocol, "prunekit__sparsegpt__2of4")
    if sg:
        pts[0] = point(sg)
    pdir = RESULTS / protocol
    for f in sorted(pdir.glob("prunekit__armor*__2of4.json")) if pdir.is_dir() else []:
        c = json.loads(f.read_text())
        if c.get("status") == "ok" and c["prune"].get("settings", {}).get("init", "sparsegpt") == "sparsegpt":
            pts[_iters_of(c)] = point(c)
    return pts


def section() -> str:
    L = ["## ARMOR 2:4 (issue 13)", ""]
    L.append(
        "ARMOR (Liu et al., arXiv:2510.05528) stores each Linear as `A · (W′ ⊙ M) · B`: a 2:4 core "
        "plus block-diagonal wrappers (block 64), fitted per matrix by block coordinate descent (Adam "
        "on A, B; exact re-selection of 4-groups, one per wrapper block cell per round; a "
        "preconditioned step on the kept weights). prunekit's default (`proxy=hessian`, `init=sparsegpt`) fits the full "
        "layer loss tr((W−Ŵ)H(W−Ŵ)ᵀ) from SparseGPT's 2:4 solution; the paper's diagonal proxy "
        "Σ(W−Ŵ)²‖X_j‖² from a Wanda-like core (`proxy=diag init=wanda`) was tried first; on "
        "SmolLM2 it leaves a larger real layer error than plain SparseGPT (table below), so it is "
        "not the default."
    )
    L.append("")
    lp = OUT / "layer_errors.json"
    if lp.exists():
        d = json.loads(lp.read_text())
        mats = list(next(iter(d["errors"].values())))
        L.append(f"Relative layer error tr(ΔHΔᵀ)/tr(WHWᵀ) on block {d['layer']} of the dense model "
                 f"(calibration {d['calibration']}; ARMOR rows {d.get('armor_iters', 20)} iterations):")
        L.append("")
        L.append("| method | " + " | ".join(mats) + " | seconds (sum) |")
        L.append("|---|" + "---:|" * (len(mats) + 1))
        for label, errs in d["errors"].items():
            secs = sum(d["seconds"][label].values())
            L.append(f"| {label} | " + " | ".join(f"{errs[m]:.4f}" for m in mats) + f" | {secs:.1f} |")
        L.append("")
    cp = OUT / "iters_curve.json"
    if cp.exists():
        d = json.loads(cp.read_text())
        keys = list(d["errors"])
        L.append(f"Layer error against iterations (block {d['layer']}, all 7 matrices, calibration "
                 f"{d['calibration']}; iterations 0 = SparseGPT 2:4; the 7 matrices' summed relative errors "
                 f"over SparseGPT's, and seconds for the block on one loaded core):")
        L.append("")
        L.append("| iterations | " + " | ".join(k.split("=")[1] for k in keys) + " |")
        L.append("|---|" + "---:|" * len(keys))
        base = sum(d["errors"]["iters=0"].values())
        L.append("| error / SparseGPT | " + " | ".join(f"{sum(d['errors'][k].values()) / base:.3f}" for k in keys) + " |")
        L.append("| seconds | " + " | ".join(f"{sum(d['seconds'][k].values()):.1f}" for k in keys) + " |")
        L.append("")
        L.append("![ARMOR layer error vs iterations](results/armor/iters_curve.png)")
        L.append("")
    rows = []
    arm = _cell(ROUTINE, "prunekit__armor__2of4")
    sg = _cell(ROUTINE, "prunekit__sparsegpt__2of4")
    wa = _cell(ROUTINE, "prunekit__wanda__2of4")
    L.append("Routine protocol (calibration 32 x 2048 C4, WikiText-2 test first 40 windows of 2048; one "
             "torch thread; the 2-core machine was shared with other benchmark jobs, so wall times are "
             "inflated and only roughly comparable between cells):")
    L.append("")
    L.append("| method | settings | ppl | prune wall s | ARMOR/SparseGPT time | peak RSS MB |")
    L.append("|---|---|---:|---:|---:|---:|")
    for name, c in (("SparseGPT", sg), ("Wanda", wa), ("ARMOR", arm)):
        if c is None:
            rows.append(f"| {name} | | not run yet | | | |")
            continue
        p = c["prune"]
        st = ", ".join(f"{k}={v}" for k, v in p.get("settings", {}).items()) if name == "ARMOR" else ""
        ratio = f"{p['prune_wall_s'] / sg['prune']['prune_wall_s']:.1f}x" if sg and name == "ARMOR" else ""
        rows.append(f"| {name} | {st} | {c['eval']['perplexity']:.2f} | {p['prune_wall_s']:.0f} | {ratio} | "
                    f"{p.get('peak_rss_mb', float('nan')):.0f} |")  # fmt: skip
    L += rows
    L.append("")
    if arm and sg:
        a, s = arm["eval"]["perplexity"], sg["eval"]["perplexity"]
        verdict = "met" if a <= 70 else f"missed by {a - 70:.1f}"
        L.append(f"Target ≤ 70 (≥ 25% below SparseGPT's {s:.2f}): ARMOR {a:.2f} ({(a / s - 1) * 100:+.1f}% vs "
                 f"SparseGPT) — {verdict}.")
    else:
        L.append("The routine ARMOR cell has not finished on this machine yet (the benchmark lock was held "
                 "by other jobs); run `benchmarks/run.py --methods armor --patterns 2:4` to fill it.")
    L.append("")
    # perplexity vs iterations: every protocol with at least two points (iterations 0 = SparseGPT)
    curves: dict[str, tuple[list[tuple[int, float]], float | None]] = {}
    table: list[str] = []
    points = {protocol: _iters_points(protocol) for protocol in PROTOCOL_LABELS}
    for protocol, label in PROTOCOL_LABELS.items():
        pts = points[protocol]
        if len(pts) < 2:
            continue
        ref = _cell(protocol, "prunekit__alps__2of4")  # the other solver that beats SparseGPT at 2:4
        curves[label] = ([(k, v[0]) for k, v in sorted(pts.items())], ref["eval"]["perplexity"] if ref else None)
        t0 = pts[0][1] if 0 in pts else None
        table.append(f"| {label} | " + " · ".join(f"{k}: {v[0]:.2f}" + (f" ({v[1] / t0:.1f}x time)" if t0 and k else "")
                                                for k, v in sorted(pts.items())) + " |")  # fmt: skip
    if curves:
        OUT.mkdir(parents=True, exist_ok=True)
        _plot(curves, OUT / "ppl_vs_iters.png")
        L.append("Perplexity against iterations (iterations: perplexity, and prune CPU time over SparseGPT's on "
                 "the same protocol, one thread each; iterations 0 = SparseGPT 2:4, the core ARMOR starts from):")  # fmt: skip
        L.append("")
        L.append("| protocol | iterations: ppl |")
        L.append("|---|---|")
        L += table
        L.append("")
        rp = points[ROUTINE]
        if 0 in rp and DEFAULT_ITERS in rp:
            base, full = rp[0][0], rp[DEFAULT_ITERS][0]
            parts = [f"{k} iterations give {(base - v[0]) / (base - full) * 100:.0f}% of its gain over SparseGPT "
                     f"at {v[1] / rp[0][1]:.1f}x" for k, v in sorted(rp.items()) if 0 < k < DEFAULT_ITERS]  # fmt: skip
            L.append(f"The default, {DEFAULT_ITERS} iterations, costs {rp[DEFAULT_ITERS][1] / rp[0][1]:.1f}x "
                     f"SparseGPT's CPU time on the routine protocol (the issue's ceiling is 10x)"
                     + (f"; {', '.join(parts)}" if parts else "") + ". Returns diminish, but the layer error "
                     "still falls at 80 iterations (table above), so `--set iters=N` buys more quality "
                     "for more time past the default.")  # fmt: skip
            L.append("")
        L.append("![ARMOR perplexity vs iterations](results/armor/ppl_vs_iters.png)")
        L.append("")
    lat = OUT / "latency.json"
    if lat.exists():
        d = json.loads(lat.read_text())
        ov = d["overhead"]
        wrap = ov["wrapper_params"]
        base = wrap / ov["wrapper_over_model"] - wrap  # the model's own parameters
        nz24 = ov["core_params"] / 2  # non-zeros of 2:4 cores
        L.append(
            f"Wrapper overhead (block {d['block_size']}, {ov['wrapped_linears']} Linears): "
            f"+{wrap / 1e6:.2f} M parameters = +{wrap / base * 100:.1f}% over the {base / 1e6:.1f} M-parameter "
            f"model, {wrap / nz24 * 100:.1f}% of the 2:4 cores' {nz24 / 1e6:.1f} M non-zeros "
            f"(`armor_overhead(model)`). CPU prefill ({d['tokens']} tokens, {d['torch_threads']} torch "
            f"thread, median of {d['runs']}): dense {d['dense_median_s'] * 1e3:.0f} ms, with the wrappers "
            f"{d['armor_median_s'] * 1e3:.0f} ms ({d['slowdown']:.2f}x). The core runs as a dense matmul on "
            f"CPU, so this is the wrappers' cost with no 2:4 speedup to offset it; a GPU with 2:4 "
            f"kernels was not available to this session (1-min load average {d['loadavg_1min']:.1f} on "
            f"2 cores: other jobs were running)."
        )
        L.append("")
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", action="store_true", help="measure overhead and prefill latency")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--layers", action="store_true", help="per-matrix layer errors on one block")
    ap.add_argument("--iters-curve", action="store_true", help="layer error and time vs iterations, one block")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.iters_curve:
        cfg = {f"iters={k}": ("armor", {"iters": k}) for k in CURVE_ITERS}
        res = layer_errors(10, 4, 512, cfg, ALL_MATS)
        (OUT / "iters_curve.json").write_text(json.dumps(res, indent=2) + "\n")
        _plot_curve(res, OUT / "iters_curve.png")
    if args.layers:
        res = layer_errors(10, 4, 512)
        res["armor_iters"] = 20
        (OUT / "layer_errors.json").write_text(json.dumps(res, indent=2) + "\n")
    if args.latency:
        res = latency(args.tokens, args.runs, args.threads, args.block_size)
        (OUT / "latency.json").write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps({k: v for k, v in res.items() if not k.endswith("_s")}, indent=1))
    SECTION.parent.mkdir(parents=True, exist_ok=True)
    SECTION.write_text(section())
    print(f"wrote {SECTION}")


if __name__ == "__main__":
    main()
