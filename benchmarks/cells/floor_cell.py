"""Benchmark cell: the "floor" of a layer-sequential prune.

Two forward passes of every decoder block over the calibration set, with nothing else: capture
the inputs of block 0 (``prunekit.engine.capture_block_inputs``), then for each block run it
over all windows once (the statistics pass, without statistics) and once more to produce the
next block's inputs (the propagation pass).  A sequential pruner that calibrates every block on
the outputs of the already-pruned blocks cannot do less work; prunekit's prune time divided by
this is its overhead factor. (prunekit's statistics pass stops once the block's last target
Linear has seen its input, so it does a little less than this floor's first pass; the floor
stays the plain two full passes.)

    python benchmarks/cells/floor_cell.py --model DENSE_DIR --calib ids.pt --result FILE.json
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
    ap.add_argument("--result", required=True, type=Path)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    quiet()
    threads = setup_threads(args.threads)
    import torch

    import prunekit as pk
    from prunekit.engine import capture_block_inputs
    from prunekit.models import get_adapter

    calib = load_ids(args.calib)
    model, _ = pk.load_model(args.model, dtype="float32")
    adapter = get_adapter(model)
    with torch.no_grad():
        t0, c0 = time.perf_counter(), time.process_time()
        inputs = capture_block_inputs(model, adapter, calib, args.batch_size)
        capture_s = time.perf_counter() - t0
        blocks = adapter.blocks(model)
        prop_s = prop_cpu = 0.0  # pass 2 alone: the one-pass engine's floor is capture + one forward per block
        for i, block in enumerate(blocks):
            for inp in inputs:  # pass 1 (where a pruner collects statistics)
                block(inp.hidden, **inp.kwargs)
            t1, c1 = time.perf_counter(), time.process_time()
            for inp in inputs:  # pass 2 (propagation to the next block)
                out = block(inp.hidden, **inp.kwargs)
                inp.hidden = out[0] if isinstance(out, (tuple, list)) else out
            prop_s, prop_cpu = prop_s + time.perf_counter() - t1, prop_cpu + time.process_time() - c1
            log(f"block {i + 1}/{len(blocks)}")
        total = time.perf_counter() - t0
        cpu = time.process_time() - c0
    result = {
        "tool": "floor",
        "what": "capture block-0 inputs + 2 forward passes of every block over the calibration set",
        "floor_s": round(total, 2),
        "floor_cpu_s": round(cpu, 2),  # all threads of this process
        "capture_s": round(capture_s, 2),
        "one_forward_floor_s": round(capture_s + prop_s, 2),  # the one-pass engine's floor
        "one_forward_floor_cpu_s": round(prop_cpu, 2),
        "blocks": len(blocks),
        "nsamples": int(calib.shape[0]),
        "seqlen": int(calib.shape[1]),
        "batch_size": args.batch_size,
        "torch_threads": threads,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "peak_rss_mb": peak_rss_mb(),
    }
    write_json(args.result, result)
    log(f"floor {total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
