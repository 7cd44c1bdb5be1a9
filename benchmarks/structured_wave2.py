"""CFSP, Adapt-Pruner and aligned FLAP on the routine protocol, for outputs with per-block widths.

    python benchmarks/structured_wave2.py --name cfsp --method cfsp [--set K=V ...] [--sparsity 0.2]
    python benchmarks/structured_wave2.py --name cfsp --folder DIR    # evaluate a folder already pruned
    python benchmarks/structured_wave2.py --section                   # only rewrite the markdown section

Why a script of its own: the side-by-side harness (``benchmarks/run.py``) evaluates every folder
with plain ``transformers`` (``AutoModelForCausalLM`` without remote code), which cannot load
per-block widths (CFSP and Adapt-Pruner give every block its own MLP width). This script uses
the harness's own inputs — the dense SmolLM2-135M folder, the calibration ids (C4 sample,
32 x 2048, seed 0) and the evaluation ids (WikiText-2 test) under ``.bench/work/`` — prunes
with ``prunekit.prune_``, saves the folder, reloads it with ``prunekit.load`` (the path users
take) and measures ``prunekit.perplexity`` on the first 40 windows of 2048, like the harness.
Writes ``benchmarks/results/structured_wave2/<name>.json`` and the section
``benchmarks/results/sections/41-structured-wave2.md`` (with the harness's FLAP rows beside).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
WORK = REPO / ".bench" / "work"
PROTOCOL = "smollm2-135m_c4-sample-32x2048-s0_wikitext2-test-40x2048"
OUT = REPO / "benchmarks" / "results" / "structured_wave2"
HARNESS = REPO / "benchmarks" / "results" / PROTOCOL
SECTION = REPO / "benchmarks" / "results" / "sections" / "41-structured-wave2.md"


def _ids(kind: str, want: dict):
    import torch

    for meta in sorted(WORK.glob(f"{kind}_*.json")):
        d = json.loads(meta.read_text())
        if all(d.get(k) == v for k, v in want.items()):
            return torch.load(meta.with_suffix(".pt"), map_location="cpu", weights_only=True).long(), d
    raise SystemExit(f"no {kind} ids matching {want} under {WORK}: run benchmarks/run.py once to build them")


def run(args) -> Path:
    import torch

    import prunekit as pk

    torch.set_num_threads(args.threads)
    calib, calib_meta = _ids("calib", {"nsamples": 32, "seqlen": 2048, "seed": 0})
    ev, ev_meta = _ids("eval", {"source": "wikitext2:/work/shared/data/wikitext-2-raw/wiki.test.raw"})
    sets = dict(x.split("=", 1) for x in args.set)
    prune: dict = {}
    folder = Path(args.folder) if args.folder else WORK / "wave2" / args.name
    if not args.folder:
        model, tok = pk.load(WORK / "dense-smollm2-135m")
        t0 = time.perf_counter()
        rep = pk.prune_(model, pk.PruneConfig(method=args.method, sparsity=args.sparsity, method_args=sets),
                        calib=calib, progress=True)  # fmt: skip
        prune = {"method": args.method, "settings_given": sets, "prune_wall_s": round(time.perf_counter() - t0, 1),
                 "timings": {k: round(v, 1) for k, v in rep.timings.items()}, "notes": rep.notes,
                 "settings": {k: v for k, v in rep.settings.items() if k not in ("blocks",)},
                 "blocks": rep.settings.get("blocks")}  # fmt: skip
        pk.save_pretrained_atomic(model, tok, folder, {"method": args.method}, overwrite=True)
        del model
    else:
        p0 = folder.parent / "prune0.json"
        if p0.is_file():
            d = json.loads(p0.read_text())
            prune = {"method": d.get("method"), "prune_wall_s": d.get("prune_wall_s"), "timings": d.get("timings"),
                     "notes": d.get("notes"), "settings": d.get("settings"), "pruned_by": "benchmarks/run.py cell"}
    t0 = time.perf_counter()
    model, _ = pk.load(folder)
    load_s = time.perf_counter() - t0
    ppl = pk.perplexity(model, ev, seqlen=2048, max_windows=40, progress=True)
    blocks = model.model.layers
    hd = model.config.head_dim
    widths = [{"heads": b.self_attn.q_proj.out_features // hd, "kv_heads": b.self_attn.k_proj.out_features // hd,
               "intermediate": b.mlp.down_proj.in_features} for b in blocks]  # fmt: skip
    dense_blocks = json.loads((HARNESS / "dense.json").read_text())["eval"]["block_params"]
    block_params = sum(p.numel() for p in blocks.parameters())
    res = {"name": args.name, "protocol_id": PROTOCOL, "calib": calib_meta, "eval_source": ev_meta,
           "sparsity": args.sparsity, "prune": prune,
           "eval": {"perplexity": ppl["perplexity"], "nll": ppl["nll"], "eval_windows": ppl["windows"],
                    "eval_seqlen": ppl["seqlen"], "eval_s": round(ppl["seconds"], 1), "load_s": round(load_s, 2),
                    "loaded_with": "prunekit.load", "params": sum(p.numel() for p in model.parameters()),
                    "block_params": block_params, "block_params_removed": 1 - block_params / dense_blocks,
                    "widths": widths},
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"{args.name}.json"
    out.write_text(json.dumps(res, indent=1))
    print(f"{args.name}: perplexity {ppl['perplexity']:.2f}, block params removed {res['eval']['block_params_removed']:.2%}; wrote {out}")
    return out


def _harness_row(cell: str) -> dict | None:
    f = HARNESS / f"{cell}.json"
    if not f.is_file():
        return None
    d = json.loads(f.read_text())
    return d if d.get("status") == "ok" else None


def write_section() -> Path:
    dense = json.loads((HARNESS / "dense.json").read_text())["eval"]
    L = ["## Structured pruning, wave 2: CFSP, Adapt-Pruner, aligned widths", "",
         f"Routine protocol ({PROTOCOL}): SmolLM2-135M, calibration 32 x 2048 C4-sample windows (seed 0), "
         "WikiText-2 test, first 40 windows of 2048; 20% of decoder-block parameters removed; "
         f"dense perplexity {dense['perplexity']:.2f}. Per-block rows are written by "
         "`benchmarks/structured_wave2.py` (same inputs as the harness; the folder is saved and "
         "reloaded with `prunekit.load`, since per-block widths do not load in plain transformers); "
         "uniform rows are the harness's cells. Times are wall seconds on a 2-core CPU shared with "
         "other jobs (1 torch thread), so they are loose. `align` = MLP channels kept a multiple of N.", "",
         "| method | settings | widths (MLP channels per block) | block params removed | perplexity | prune s | source |",
         "|---|---|---|---|---|---|---|"]
    for f in sorted(HARNESS.glob("*__structured-20.json")):  # the harness's uniform cells beside
        d = _harness_row(f.stem)
        if not d:
            continue
        p, e = d["prune"], d["eval"]
        g = e.get("geometry", {})
        st = p.get("settings")
        st = st if isinstance(st, dict) else {}
        shown = f"align={st['align']}" if "align" in st else ("align=1 (before alignment)" if f.stem.startswith("prunekit__") else "")
        tool, method = f.stem.split("__")[:2]
        L.append(f"| {method}{'' if tool == 'prunekit' else f' ({tool})'} | {shown} | {g.get('intermediate_size')} (uniform), "
                 f"{g.get('num_attention_heads')} heads | {1 - e['block_params'] / dense['block_params']:.1%} | "
                 f"{e['perplexity']:.2f} | {p.get('prune_wall_s') or 0:.0f} | harness `{f.name}` |")
    for f in sorted(OUT.glob("*.json")) if OUT.is_dir() else []:
        r = json.loads(f.read_text())
        e, p = r["eval"], r.get("prune") or {}
        ws = [w["intermediate"] for w in e["widths"]]
        s = p.get("settings") or {}
        s = s if isinstance(s, dict) else {}
        shown = ", ".join(f"{k}={v}" for k, v in s.items() if k in ("align", "recover_tokens", "step", "amplitude", "score", "a"))
        t = p.get("prune_wall_s")
        L.append(f"| {p.get('method', r['name'])} | {shown} | {min(ws)}–{max(ws)} (per-block) | "
                 f"{e['block_params_removed']:.1%} | {e['perplexity']:.2f} | {t if t is not None else '–'} | "
                 f"`structured_wave2/{f.name}` |")
    L += ["", "CFSP prunes MLP channels only (the paper's FFN setting), so 20% of block parameters is "
          "~27% of the MLP; its budgets follow the angular distance of each block (the first blocks turn "
          "their input most and keep most). Adapt-Pruner's row includes its LoRA recovery between steps "
          "on calibration (C4) windows — the budget is in the row's settings and JSON — so it is not a "
          "no-recovery row like the others. Aligned FLAP rounds 1126 kept channels to the nearest "
          "multiple of 64, 1152, so it removes 18.7% instead of 19.9%: its lower perplexity comes "
          "mostly from the smaller cut, not from alignment itself (alignment is for speed, see the "
          "speedup section).", ""]
    SECTION.parent.mkdir(parents=True, exist_ok=True)
    SECTION.write_text("\n".join(L) + "\n")
    return SECTION


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name")
    ap.add_argument("--method")
    ap.add_argument("--set", action="append", default=[], metavar="K=V")
    ap.add_argument("--sparsity", type=float, default=0.2)
    ap.add_argument("--folder", help="evaluate this already-pruned folder instead of pruning")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--section", action="store_true", help="only rewrite the markdown section")
    args = ap.parse_args(argv)
    if not args.section:
        if not args.name or not (args.method or args.folder):
            raise SystemExit("give --name and --method (or --folder)")
        run(args)
    print(f"wrote {write_section()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
