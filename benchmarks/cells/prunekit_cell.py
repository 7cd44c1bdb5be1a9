"""Benchmark cell: prune the dense folder with prunekit and save the result (one process per cell).

    python benchmarks/cells/prunekit_cell.py --model DENSE_DIR --calib ids.pt --method M \
        [--pattern unstructured|N:M] [--sparsity F] --out DIR --result FILE.json [--threads N]

Same contract as the peer runners in ``benchmarks/peers/``: ``prune_wall_s`` is the pruning call
alone (``prune_(...)``: block-input capture, statistics, pruning; not the load or the save),
``peak_rss_mb`` the peak resident memory of this process at the end (after the save).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _util import load_ids, log, peak_rss_mb, quiet, setup_threads, write_json


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--calib", required=True, type=Path)
    ap.add_argument("--calib-source", default="", help="recorded in the report only")
    ap.add_argument("--seed", type=int, default=0, help="recorded in the report only")
    ap.add_argument("--method", required=True)
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method setting")
    ap.add_argument("--sparsity", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--report-tokens", type=int, default=0,
                    help="tokens per Linear for prunekit's reconstruction-error report (0: off, "
                         "so that the timing compares pruning with pruning)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--result", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    quiet()
    threads = setup_threads(args.threads)
    import torch

    import prunekit as pk

    calib = load_ids(args.calib)
    t0 = time.perf_counter()
    model, tok = pk.load_model(args.model, dtype="float32")
    log(f"model loaded in {time.perf_counter() - t0:.1f} s; {threads} torch threads")
    method, _, allocation = args.method.partition("+")  # e.g. sparsegpt+owl
    structured = pk.methods.is_structured(method)
    sparsity = args.sparsity
    if not structured and ":" in args.pattern:
        sparsity = None  # implied by N:M
    cfg = pk.PruneConfig(
        method=method, pattern="unstructured" if structured else args.pattern,
        sparsity=sparsity, allocation=allocation or "uniform",
        method_args=dict(kv.split("=", 1) for kv in args.set),
        calib=pk.CalibConfig(source=args.calib_source or str(args.calib),
                             nsamples=int(calib.shape[0]), seqlen=int(calib.shape[1]),
                             seed=args.seed, batch_size=args.batch_size),
    )
    t0, c0 = time.perf_counter(), time.process_time()
    report = pk.prune_(model, cfg, calib, tok, progress=True, report_tokens=args.report_tokens)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    prune_s = float(report.timings.get("total", wall))
    summary = pk.sparsity_summary(model)
    log(f"pruned in {prune_s:.1f} s; decoder-Linear sparsity {summary['block_linear_sparsity']:.4f}")
    pk.save_pretrained_atomic(model, tok, args.out, report.to_dict(), overwrite=True)
    result = {
        "tool": "prunekit",
        "tool_version": pk.__version__,
        "method": args.method,
        "pattern": "structured" if structured else args.pattern,
        "sparsity": report.target_sparsity,
        "nsamples": int(calib.shape[0]),
        "seqlen": int(calib.shape[1]),
        "prune_wall_s": round(prune_s, 2),
        "prune_cpu_s": round(cpu, 2),  # all threads of this process
        "timings": {k: round(v, 2) for k, v in report.timings.items()},
        "achieved_sparsity": round(summary["block_linear_sparsity"], 6),
        "params": summary["parameters"],
        "settings": report.settings,
        "allocation": report.allocation,
        "report_tokens": args.report_tokens,
        "batch_size": args.batch_size,
        "torch_threads": threads,
        "notes": list(report.notes),
        "torch_version": torch.__version__,
    }
    result["peak_rss_mb"] = peak_rss_mb()
    write_json(args.result, result)
    log(f"result written to {args.result}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
