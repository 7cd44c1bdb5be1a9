"""Does structured pruning make a mid-size model faster? Prefill/decode dense vs pruned.

    python benchmarks/structured_speedup.py [--arch smollm2-360m] [--methods flap,wanda-sp]
        [--sparsity 0.3] [--prefill 512] [--decode 32] [--runs 3] [--threads N] [--device cpu]

Latency does not depend on weight values, only on shapes, so the model is built in code from a
published architecture (random init, seeded; no download) and pruned by prunekit's structured
methods with a small random-token calibration set; the pruned model is the same one prunekit
would ship (heads and channels physically removed, stock config). Its perplexity is meaningless
here — quality is measured on the real SmolLM2-135M by ``benchmarks/run.py``. Timing is
``benchmarks/speed.py``'s ``measure_speed`` (batch 1, float32, SDPA, logits for every prompt
position, medians of ``--runs``), dense and pruned in one process, timed round-robin (dense, pruned A,
pruned B, dense, ...) after a warm-up so that load drift on a shared machine hits all alike. Writes ``benchmarks/results/structured_speedup/<arch>.json``,
which ``benchmarks/report.py`` turns into a table in ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "results" / "structured_speedup"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Llama-family architectures (hub configs, restated): name -> LlamaConfig fields.
ARCHS: dict[str, dict] = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         tie_word_embeddings=True, source="HuggingFaceTB/SmolLM2-135M"),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, vocab_size=49152,
                         tie_word_embeddings=True, source="HuggingFaceTB/SmolLM2-360M"),
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                           tie_word_embeddings=False, source="TinyLlama/TinyLlama-1.1B"),
}


def build(arch: str, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = {k: v for k, v in ARCHS[arch].items() if k != "source"}
    torch.manual_seed(seed)
    cfg = LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5, **spec)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


def block_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="smollm2-360m", choices=sorted(ARCHS))
    ap.add_argument("--methods", default="flap,wanda-sp")
    ap.add_argument("--sparsity", type=float, default=0.3, help="fraction of decoder-block parameters removed")
    ap.add_argument("--prefill", default="512", help="comma list of prompt lengths")
    ap.add_argument("--decode", type=int, default=32, help="decode steps (0: skip)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--calib", default="8x256", help="random-token calibration windows NxL")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    import prunekit as pk
    from benchmarks.speed import measure_round_robin

    if args.threads:
        torch.set_num_threads(args.threads)
    prefill = tuple(int(x) for x in args.prefill.split(",") if x.strip())
    n, L = (int(x) for x in args.calib.lower().split("x"))
    dense = build(args.arch).to(args.device)
    calib = torch.randint(0, dense.config.vocab_size, (n, L), generator=torch.Generator().manual_seed(0))
    say = lambda s: print(s, flush=True)  # noqa: E731
    say(f"{args.arch}: {sum(p.numel() for p in dense.parameters()) / 1e6:.1f} M parameters, "
        f"{torch.get_num_threads()} threads, device {args.device}")
    # prune first, then time every model round-robin (dense, method 1, method 2, dense, ...),
    # so that load drifting on a shared machine hits all of them alike; medians per model
    models: dict = {"dense": dense}
    info: dict = {"dense": {"model": "dense"}}
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        pruned = copy.deepcopy(dense)
        t0 = time.perf_counter()
        rep = pk.prune_(pruned, pk.PruneConfig(method=method, sparsity=args.sparsity),
                        calib=calib.to(args.device), progress=False)
        models[method] = pruned
        info[method] = {"model": method, "sparsity": args.sparsity,
                        "prune_s": round(time.perf_counter() - t0, 1), "notes": list(rep.notes)}
        say(f"  pruned {method} {args.sparsity:.0%} in {info[method]['prune_s']} s")
    speeds = measure_round_robin(models, prefill=prefill, decode_tokens=args.decode, runs=args.runs,
                                 log=lambda m: say("  " + m))
    rows = []
    for k, m in models.items():
        speed = speeds[k]
        cfg = m.config
        rows.append({**info[k], "params": sum(p.numel() for p in m.parameters()),
                     "block_params": block_params(m), "heads": cfg.num_attention_heads,
                     "kv_heads": cfg.num_key_value_heads, "intermediate": cfg.intermediate_size,
                     "speed": speed})
    d = rows[0]
    for row in rows[1:]:
        s = row["speed"]
        row["prefill_speedup"] = {n: round(d["speed"]["prefill_ms"][n] / v, 3) for n, v in s["prefill_ms"].items()}
        row["decode_speedup"] = (round(s["decode_tok_s"] / d["speed"]["decode_tok_s"], 3)
                                 if args.decode else None)
        say(f"  {row['model']} {args.sparsity:.0%}: heads {row['heads']}/{d['heads']}, MLP "
            f"{row['intermediate']}/{d['intermediate']}, block params "
            f"-{1 - row['block_params'] / d['block_params']:.1%}; prefill {s['prefill_ms']} ms "
            f"(x{row['prefill_speedup']}), decode x{row['decode_speedup']}")
    out = args.out or OUT / f"{args.arch}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"arch": args.arch, "source": ARCHS[args.arch]["source"], "device": args.device,
              "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "calib": f"{n} x {L} random token ids (speed only)", "runs": args.runs, "rows": rows}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    say(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
