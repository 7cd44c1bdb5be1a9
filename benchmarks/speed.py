"""Inference speed of saved models: prefill latency and decode tokens/s, dense vs pruned.

    python benchmarks/speed.py DENSE_DIR PRUNED_DIR [...] [--runs 5] [--prefill 512,2048]
        [--decode 64] [--threads N] [--device cpu|cuda] [--json FILE]

For each folder (loaded in float32, SDPA attention, batch 1, greedy): prefill = one forward pass
over P tokens building the KV cache (median wall time of ``--runs`` runs after one warm-up);
decode = ``--decode`` single-token steps with the KV cache after a 128-token prompt (tokens/s
of the steps alone, median of the runs).  Token ids are random (seeded): the speed of a dense
kernel does not depend on their values.  ``torch.get_num_threads()`` is recorded.  Unstructured
and N:M zeros in dense float32 matrices give no speedup on CPU; structured pruning (smaller
matrices) does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DECODE_PROMPT = 128


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _cache_of(out):
    """The KV cache of a model output (``cache`` since transformers 5.2x, ``past_key_values`` before)."""
    c = out.get("cache")
    return c if c is not None else out.get("past_key_values")


def measure_speed(model, *, prefill=(512, 2048), decode_tokens=64, runs=3, warmup=1,
                  seed=0) -> dict:
    """Prefill latency (ms) per length and decode tokens/s of ``model`` (median of ``runs``)."""
    import torch

    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    import inspect

    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
    g = torch.Generator().manual_seed(seed)
    out: dict = {"runs": runs, "torch_threads": torch.get_num_threads(), "device": str(device),
                 "prefill_ms": {}, "prefill_tok_s": {}}
    with torch.inference_mode():
        for n in prefill:
            if n > max_pos:
                continue
            ids = torch.randint(0, vocab, (1, n), generator=g).to(device)
            times = []
            for r in range(warmup + runs):
                _sync(device)
                t0 = time.perf_counter()
                model(input_ids=ids, use_cache=True)
                _sync(device)
                if r >= warmup:
                    times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            out["prefill_ms"][str(n)] = round(med * 1000, 1)
            out["prefill_tok_s"][str(n)] = round(n / med, 1)
        if decode_tokens > 0:
            prompt = torch.randint(0, vocab, (1, DECODE_PROMPT), generator=g).to(device)
            rates = []
            for r in range(warmup + runs):
                o = model(input_ids=prompt, use_cache=True)
                past, nxt = _cache_of(o), o.logits[:, -1:].argmax(-1)
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(decode_tokens):
                    o = model(input_ids=nxt, **{cache_kw: past}, use_cache=True)
                    past, nxt = _cache_of(o), o.logits[:, -1:].argmax(-1)
                _sync(device)
                if r >= warmup:
                    rates.append(decode_tokens / (time.perf_counter() - t0))
            out["decode_tok_s"] = round(statistics.median(rates), 2)
            out["decode_tokens"] = decode_tokens
            out["decode_prompt"] = DECODE_PROMPT
    return out


def measure_round_robin(models: dict, *, prefill=(512, 2048), decode_tokens=64, runs=3,
                        log=None) -> dict:
    """Time several models in turns (A, B, C, A, B, C, ...) after one warm-up each.

    On a shared machine the load drifts; timing the models one after the other lets that drift
    hit all of them alike, so their *ratios* stay honest. Returns ``{name: speed}`` in
    ``measure_speed``'s format (medians), plus every run's figures (``*_all``).
    """
    import statistics

    for m in models.values():  # warm-up, discarded
        measure_speed(m, prefill=prefill, decode_tokens=min(decode_tokens, 4), runs=1, warmup=0)
    samples: dict[str, list[dict]] = {k: [] for k in models}
    for r in range(runs):
        for k, m in models.items():
            samples[k].append(measure_speed(m, prefill=prefill, decode_tokens=decode_tokens,
                                            runs=1, warmup=0))
        if log:
            log(f"round {r + 1}/{runs}: " + ", ".join(f"{k} {samples[k][-1]['prefill_ms']} ms" for k in models))
    out = {}
    for k, ss in samples.items():
        lens = list(ss[0]["prefill_ms"])
        sp = {**{f: ss[0][f] for f in ("torch_threads", "device")}, "runs": len(ss), "round_robin": list(models),
              "prefill_ms": {n: round(statistics.median(x["prefill_ms"][n] for x in ss), 1) for n in lens},
              "prefill_ms_all": {n: [x["prefill_ms"][n] for x in ss] for n in lens}}
        sp["prefill_tok_s"] = {n: round(int(n) / (v / 1000), 1) for n, v in sp["prefill_ms"].items()}
        if decode_tokens > 0:
            sp["decode_tok_s"] = round(statistics.median(x["decode_tok_s"] for x in ss), 2)
            sp["decode_tok_s_all"] = [x["decode_tok_s"] for x in ss]
            sp["decode_tokens"], sp["decode_prompt"] = decode_tokens, DECODE_PROMPT
        out[k] = sp
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prefill", default="512,2048")
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    prefill = tuple(int(x) for x in args.prefill.split(",") if x)
    rows = {}
    for folder in args.folders:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                     attn_implementation="sdpa").eval()
        model.to(args.device)
        r = measure_speed(model, prefill=prefill, decode_tokens=args.decode, runs=args.runs)
        r["params"] = sum(p.numel() for p in model.parameters())
        rows[str(folder)] = r
        del model
        pf = "  ".join(f"prefill {k}: {v:.0f} ms" for k, v in r["prefill_ms"].items())
        print(f"{folder}: {pf}  decode: {r.get('decode_tok_s', float('nan')):.1f} tok/s "
              f"({r['torch_threads']} threads, {r['device']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


if __name__ == "__main__":
    sys.exit(main())
