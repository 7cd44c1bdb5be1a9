"""Does structured pruning make a mid-size model faster? Prefill/decode dense vs pruned.

    python benchmarks/structured_speedup.py [--arch smollm2-360m] [--methods flap,wanda-sp]
        [--variant NAME=METHOD:K=V,K=V ...] [--sparsity 0.3] [--prefill 512] [--decode 32]
        [--runs 3] [--threads N] [--device cpu] [--section]

Latency does not depend on weight values, only on shapes, so the model is built in code from a
published architecture (random init, seeded; no download) and pruned by prunekit's structured
methods with a small random-token calibration set; the pruned model is the same one prunekit
would ship (heads and channels physically removed, stock config). Its perplexity is meaningless
here — quality is measured on the real SmolLM2-135M by ``benchmarks/run.py``. Timing is
``benchmarks/speed.py``'s ``measure_speed`` (batch 1, float32, SDPA, logits for every prompt
position, medians of ``--runs``), dense and pruned in one process, timed round-robin (dense, pruned A,
pruned B, dense, ...) after a warm-up so that load drift on a shared machine hits all alike. Writes ``benchmarks/results/structured_speedup/<arch>.json``,
which ``benchmarks/report.py`` turns into a table in ``BENCHMARKS.md``.

Every row also gets its *FLOP-proportional* prefill speedup — dense prefill FLOPs over pruned
prefill FLOPs, counted from the actual (per-block) shapes: every Linear of the blocks, the
attention score and value products (``2·n²·heads·head_dim`` each, full square as SDPA computes
it) and the LM head — and ``efficiency_ratio`` = measured / FLOP-proportional (the target is
>= 0.85: the removed FLOPs turn into time; ``gain_fraction`` = (measured - 1) / (FLOP - 1) is the
stricter share of the possible gain). ``--variant`` adds a named method with settings (per-block
outputs: ``flap-adaptive=flap:structure=adaptive``, ``cfsp``, ``adapt-pruner``; unaligned
controls: ``flap-a1=flap:align=1``). ``--section`` also writes
``benchmarks/results/sections/40-structured-speedup.md`` from every JSON in the results folder.
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


def prefill_flops(model, n: int) -> int:
    """Multiply-add FLOPs (x2) of a prefill of ``n`` tokens, from the model's actual shapes."""
    import torch.nn as nn

    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    total = 0
    for layer in model.model.layers:
        for m in layer.modules():
            if isinstance(m, nn.Linear):
                total += 2 * n * m.in_features * m.out_features
        heads = layer.self_attn.q_proj.out_features // hd
        total += 2 * 2 * n * n * heads * hd  # q·kᵀ and p·v
    head = model.get_output_embeddings()
    return total + 2 * n * head.in_features * head.out_features


def widths_of(model) -> tuple:
    """(heads, kv_heads, intermediate) from the blocks: ints when uniform, else 'min–max' strings."""
    hd = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    cols = list(zip(*[(b.self_attn.q_proj.out_features // hd, b.self_attn.k_proj.out_features // hd,
                       b.mlp.down_proj.in_features) for b in model.model.layers]))  # fmt: skip
    return tuple(c[0] if len(set(c)) == 1 else f"{min(c)}–{max(c)}" for c in cols)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="smollm2-360m", choices=sorted(ARCHS))
    ap.add_argument("--methods", default="flap,wanda-sp")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=METHOD:K=V,K=V",
                    help="a named method with settings (repeatable), timed after --methods")
    ap.add_argument("--section", action="store_true", help="write the markdown section from all results")
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
    jobs = [(m.strip(), m.strip(), {}) for m in args.methods.split(",") if m.strip()]
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        base, _, sets = rest.partition(":")
        if not name or not base:
            raise SystemExit(f"--variant {spec!r}: write NAME=METHOD:K=V,K=V (e.g. flap-a1=flap:align=1)")
        jobs.append((name.strip(), base.strip(), dict(x.split("=", 1) for x in sets.split(",") if "=" in x)))
    for name, method, sets in jobs:
        pruned = copy.deepcopy(dense)
        t0 = time.perf_counter()
        rep = pk.prune_(pruned, pk.PruneConfig(method=method, sparsity=args.sparsity, method_args=sets),
                        calib=calib.to(args.device), progress=False)
        models[name] = pruned
        info[name] = {"model": name, "method": method, "settings": sets, "sparsity": args.sparsity,
                      "align": rep.settings.get("align"), "per_block": bool(rep.settings.get("widths", {}).get("per_block")),
                      "prune_s": round(time.perf_counter() - t0, 1), "notes": list(rep.notes)}
        say(f"  pruned {name} {args.sparsity:.0%} in {info[name]['prune_s']} s")
    speeds = measure_round_robin(models, prefill=prefill, decode_tokens=args.decode, runs=args.runs,
                                 log=lambda m: say("  " + m))
    rows = []
    for k, m in models.items():
        speed = speeds[k]
        heads, kv, inter = widths_of(m)
        rows.append({**info[k], "params": sum(p.numel() for p in m.parameters()),
                     "block_params": block_params(m), "heads": heads, "kv_heads": kv, "intermediate": inter,
                     "prefill_flops": {str(n): prefill_flops(m, n) for n in prefill}, "speed": speed})
    d = rows[0]
    for row in rows[1:]:
        s = row["speed"]
        row["prefill_speedup"] = {n: round(d["speed"]["prefill_ms"][n] / v, 3) for n, v in s["prefill_ms"].items()}
        row["flop_speedup"] = {n: round(d["prefill_flops"][n] / f, 3) for n, f in row["prefill_flops"].items()}
        row["gain_fraction"] = {n: round((row["prefill_speedup"][n] - 1) / (row["flop_speedup"][n] - 1), 3)
                             if row["flop_speedup"][n] > 1.001 else None for n in row["flop_speedup"]}
        row["efficiency_ratio"] = {n: round(row["prefill_speedup"][n] / row["flop_speedup"][n], 3)
                                   for n in row["flop_speedup"]}
        row["decode_speedup"] = (round(s["decode_tok_s"] / d["speed"]["decode_tok_s"], 3)
                                 if args.decode else None)
        say(f"  {row['model']} {args.sparsity:.0%}: heads {row['heads']}/{d['heads']}, MLP "
            f"{row['intermediate']}/{d['intermediate']}, block params "
            f"-{1 - row['block_params'] / d['block_params']:.1%}; prefill {s['prefill_ms']} ms "
            f"(x{row['prefill_speedup']}; FLOP-proportional x{row['flop_speedup']}, measured/FLOP "
            f"{row['efficiency_ratio']}), decode x{row['decode_speedup']}")
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
    if args.section:
        say(f"wrote {write_section(out.parent)}")
    return 0


TARGET = 0.85  # measured speedup / FLOP-proportional speedup


def write_section(results: Path, out: Path | None = None) -> Path:
    """``benchmarks/results/sections/40-structured-speedup.md``: measured vs FLOP-proportional."""
    out = out or REPO / "benchmarks" / "results" / "sections" / "40-structured-speedup.md"
    L = ["## Structured speedup vs FLOPs (hardware-aligned widths)", "",
         "Written by `benchmarks/structured_speedup.py` from `benchmarks/results/structured_speedup/`. "
         "For each pruned model, the measured CPU prefill speedup over dense is set beside the "
         "FLOP-proportional one (dense prefill FLOPs / pruned prefill FLOPs, counted from the actual "
         "per-block shapes: block Linears, attention products, LM head). **ratio** = measured / "
         f"FLOP-proportional; target ≥ {TARGET} for every structured output, uniform and per-block. "
         "`align` is the MLP channel multiple (64 by default from 1024 channels; 1 = off). Shapes "
         "are built in code (random weights: latency depends on shapes only); per-block rows load with "
         "`prunekit.load`. Timing is batch 1, float32, SDPA, medians of round-robin runs on a CPU "
         "shared with other jobs (load drift hits all models alike, but single figures are noisy).", ""]
    for f in sorted(results.glob("*.json")):
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        rows = r.get("rows") or []
        if not rows or "prefill_flops" not in rows[0]:
            continue  # written before FLOP counts were recorded
        lens = list(rows[0]["prefill_flops"])
        L += [f"**{f.stem}** ({r['arch']} shapes, {r['device']}, {r['threads']} threads, {r['runs']} runs, "
              f"{r['date']})", "",
              "| model | align | widths (heads / MLP) | block params removed | "
              + " | ".join(f"prefill {n}: measured × / FLOP × / ratio" for n in lens) + " |",
              "|---|---|---|---|" + "---|" * len(lens)]
        d = rows[0]
        for row in rows[1:]:
            cells = []
            for n in lens:
                ratio = row["efficiency_ratio"][n]
                mark = "" if ratio >= TARGET else " (miss)"
                cells.append(f"{row['prefill_speedup'][n]:.2f} / {row['flop_speedup'][n]:.2f} / **{ratio:.2f}**{mark}")
            kind = "per-block" if row.get("per_block") else "uniform"
            L.append(f"| {row['model']} {row['sparsity']:.0%} ({kind}) | {row.get('align')} | "
                     f"{row['heads']} / {row['intermediate']} | {1 - row['block_params'] / d['block_params']:.1%} | "
                     + " | ".join(cells) + " |")
        L.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(L) + "\n")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
