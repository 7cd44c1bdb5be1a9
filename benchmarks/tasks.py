"""Zero-shot task scores (LAMBADA, PIQA; GSM8K on request) of a dense or pruned model.

    python benchmarks/tasks.py [--model smollm2-135m|DIR] [--tasks lambada,piqa] [--limit N]
        [--name dense] [--threads 1] [--batch-tokens 2048] [--num-fewshot 5]
        [--cell KEY --wikitext2-ppl PPL] [--note TEXT]

Scores with ``prunekit.eval.evaluate_tasks`` (lm-eval's rules, see ``src/prunekit/eval/tasks.py``)
on the full sets by default and writes ``benchmarks/results/tasks/<name>.json`` (default name:
``dense`` for the alias, else the folder's name), rewritten after each task so that a killed run
keeps what it finished; a file already there for the same model and limit keeps its other tasks
(score PIQA now, LAMBADA later). ``--cell`` names the routine-protocol cell that a folder
pruned again re-makes, so the report puts the scores in that cell's row. Run it detached and single-threaded on the shared CPU, e.g.

    nohup setsid env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tasks.py > /tmp/tasks.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "tasks"


def _write(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="MODEL spec: alias, HF folder or .gguf")
    ap.add_argument("--tasks", default="lambada,piqa", help="task specs, e.g. lambada,piqa:PATH,gsm8k")
    ap.add_argument("--limit", type=int, default=None, help="first N examples per task (default: all)")
    ap.add_argument("--name", default=None, help="output file stem (default: dense, or the folder name)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--batch-tokens", type=int, default=2048, help="padded tokens per scoring batch")
    ap.add_argument("--num-fewshot", type=int, default=5, help="gsm8k shots (default 5)")
    ap.add_argument("--cell", default=None, metavar="KEY",
                    help="the routine-protocol cell this folder re-makes (e.g. prunekit__wanda__2of4): the "
                         "report shows the scores in that cell's row")
    ap.add_argument("--wikitext2-ppl", type=float, default=None, metavar="PPL",
                    help="the folder's own WikiText-2 perplexity on the cell's protocol (shown in its row)")
    ap.add_argument("--note", default=None, help="a sentence about the folder, shown under the table")
    args = ap.parse_args(argv)

    import torch
    import transformers

    import prunekit as pk
    from prunekit.eval.tasks import evaluate_tasks, parse_task_specs

    torch.set_num_threads(args.threads)
    specs = parse_task_specs(args.tasks)
    name = args.name or ("dense" if args.model == "smollm2-135m" else Path(args.model).name)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    t0 = time.perf_counter()
    model, tok = pk.load_model(args.model)
    payload = {
        "model": args.model,
        "limit": args.limit,
        "threads": args.threads,
        "batch_tokens": args.batch_tokens,
        "load_seconds": time.perf_counter() - t0,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "prunekit": pk.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "tasks": {},
    }
    old = json.loads(path.read_text()) if path.is_file() else {}
    if old.get("model") == args.model and old.get("limit") == args.limit:
        payload["tasks"] = dict(old.get("tasks") or {})  # the same model and limit: keep its other tasks
        for k in ("cell", "wikitext2_ppl", "note"):
            if old.get(k) is not None:
                payload[k] = old[k]
    for k, v in (("cell", args.cell), ("wikitext2_ppl", args.wikitext2_ppl), ("note", args.note)):
        if v is not None:
            payload[k] = v
    for spec in specs:
        one = f"{spec.name}:{spec.path}" if spec.path else spec.name
        res = evaluate_tasks(
            model, tok, one, limit=args.limit, progress=True,
            batch_tokens=args.batch_tokens, num_fewshot=args.num_fewshot,
        )  # fmt: skip
        payload["tasks"].update(res)
        payload["wall_seconds"] = time.perf_counter() - t0
        _write(path, payload)
        r = res[spec.name]
        print(f"{spec.name}: {r['metrics']} (n={r['n']}, {r['seconds']:.0f} s)", flush=True)
    print(f"wrote {path} in {payload['wall_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
