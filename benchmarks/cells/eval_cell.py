"""Benchmark cell: evaluate one saved model folder, the same way for every tool.

    python benchmarks/cells/eval_cell.py --model DIR --eval-ids ids.pt --seqlen 2048 \
        --windows 40 --result FILE.json [--speed-runs 3] [--threads N] [--device cpu]

The folder is loaded with plain transformers (float32, SDPA attention), whichever tool wrote
it; perplexity is ``prunekit.perplexity`` on the harness's evaluation token ids; parameters are
counted once per tensor (tied embeddings once), sparsity is the zero fraction of the Linears in
the decoder blocks, size is the bytes of the weight files on disk.  With ``--speed-runs`` > 0
the speed benchmark (``benchmarks/speed.py``) runs too; with ``--tasks lambada,piqa`` the zero-shot
tasks (``prunekit.eval.evaluate_tasks``, lm-eval's rules, full sets) are scored too, with the
``--tokenizer DIR``'s tokenizer (default: the folder's).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _util import load_hf_folder, load_ids, log, peak_rss_mb, quiet, setup_threads, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ for speed.py


def evaluate_folder(folder: Path, eval_ids, seqlen: int, windows: int) -> dict:
    """The one shared evaluation: perplexity, parameters, sparsity, size of a saved folder."""
    import torch

    import prunekit as pk
    from prunekit.models import get_adapter

    t0 = time.perf_counter()
    model = load_hf_folder(folder)
    load_s = time.perf_counter() - t0
    ppl = pk.perplexity(model, eval_ids, seqlen=seqlen, max_windows=windows, progress=True)
    summary = pk.sparsity_summary(model)
    blocks = get_adapter(model).blocks(model)
    block_params = sum(p.numel() for p in blocks.parameters())
    cfg = model.config
    return {
        "perplexity": ppl["perplexity"],
        "nll": ppl["nll"],
        "eval_windows": ppl["windows"],
        "eval_available_windows": ppl["available_windows"],
        "eval_seqlen": ppl["seqlen"],
        "eval_tokens": ppl["tokens"],
        "eval_s": round(ppl["seconds"], 1),
        "load_s": round(load_s, 2),
        "params": summary["parameters"],
        "block_params": int(block_params),
        "zero_sparsity_block_linears": summary["block_linear_sparsity"],
        "zero_sparsity_all_linears": summary["linear_sparsity"],
        "size_bytes": pk.model_size_bytes(folder),
        "geometry": {k: getattr(cfg, k, None) for k in
                     ("num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                      "intermediate_size", "hidden_size")},
        "torch_threads": torch.get_num_threads(),
        "_model": model,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--eval-ids", required=True, type=Path)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--result", required=True, type=Path)
    ap.add_argument("--speed-runs", type=int, default=0)
    ap.add_argument("--prefill", default="512,2048")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tasks", default="", help="zero-shot task specs to score too, e.g. lambada,piqa")
    ap.add_argument("--tokenizer", type=Path, default=None, help="tokenizer folder (default: --model's)")
    ap.add_argument("--reference", type=Path, default=None,
                    help="dense folder timed in turns with the model (speed ratios robust to load drift)")
    args = ap.parse_args()
    quiet()
    setup_threads(args.threads)
    ids = load_ids(args.eval_ids)
    res = evaluate_folder(args.model, ids, args.seqlen, args.windows)
    model = res.pop("_model")
    log(f"perplexity {res['perplexity']:.3f} over {res['eval_windows']} windows "
        f"({res['eval_s']:.0f} s)")
    if args.tasks:
        from transformers import AutoTokenizer

        from prunekit.eval.tasks import evaluate_tasks

        tok = AutoTokenizer.from_pretrained(str(args.tokenizer or args.model))  # the harness: one tokenizer for all
        t0 = time.perf_counter()
        res["tasks"] = evaluate_tasks(model, tok, args.tasks, progress=True)
        log("tasks " + ", ".join(f"{k} {v['metrics']}" for k, v in res["tasks"].items())
            + f" ({time.perf_counter() - t0:.0f} s)")
    if args.speed_runs > 0:
        from speed import measure_round_robin, measure_speed

        model.to(args.device)
        prefill = tuple(int(x) for x in args.prefill.split(",") if x)
        if args.reference is not None:  # dense and pruned in turns: their ratio survives a busy machine
            ref = load_hf_folder(args.reference).to(args.device)
            sp = measure_round_robin({"reference": ref, "model": model}, prefill=prefill,
                                     decode_tokens=args.decode, runs=args.speed_runs, log=log)
            res["speed"], res["speed_reference"] = sp["model"], sp["reference"]
            del ref
        else:
            res["speed"] = measure_speed(model, prefill=prefill, decode_tokens=args.decode,
                                         runs=args.speed_runs)
        log(f"speed {res['speed']}")
    res["eval_peak_rss_mb"] = peak_rss_mb()
    write_json(args.result, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
