"""Recovery benchmark (issue 14): prune SmolLM2-135M with the routine protocol, recover with LoRA
on C4 documents (never the evaluation text), and measure WikiText-2 perplexity along the budget.

    OMP_NUM_THREADS=1 python benchmarks/recovery.py --cell flap-20 --tokens 98304
    OMP_NUM_THREADS=1 python benchmarks/recovery.py --cell sparsegpt-2of4 --tokens 65536
    OMP_NUM_THREADS=1 python benchmarks/recovery.py --cell flap-20 --distill 1 --tag -distill
    OMP_NUM_THREADS=1 python benchmarks/recovery.py --cell flap-20 --adapter full --lr 5e-5 --tag -full
    OMP_NUM_THREADS=1 python benchmarks/recovery.py --cell flap-20 --adapter full --precision bf16 --tag=-bf16

Routine protocol: calibration 32 x 2048 C4 (seed 0) from ../shared/data/c4-sample; evaluation
WikiText-2 test (rows joined with "\\n\\n"), the first 40 windows of 2048. The curve points use
the first ``--curve-windows`` windows (a cheaper estimate, measured on the unmerged LoRA model);
the final number uses all 40 on the merged model. The dense 40-window perplexity is read from
``benchmarks/results/<protocol>/``; the pruned one is measured on the pruned folder this run
recovers (cached in it as ``bench_ppl.json``), since the harness's cell may come from older code
(its value is kept as ``pruned_harness``).

Writes ``benchmarks/results/recovery/<cell>.json`` and ``<cell>.png``; the pruned model is kept
in ``.bench/recovery/<cell>-pruned`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PROTOCOL = "smollm2-135m_c4-sample-32x2048-s0_wikitext2-test-40x2048"
RESULTS = ROOT / "benchmarks" / "results"
CELLS = {
    "flap-20": ({"method": "flap", "sparsity": 0.2}, "prunekit__flap__structured-20"),
    "sparsegpt-2of4": ({"method": "sparsegpt", "pattern": "2:4"}, "prunekit__sparsegpt__2of4"),
    "wanda-2of4": ({"method": "wanda", "pattern": "2:4"}, "prunekit__wanda__2of4"),
}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _known_ppl(key: str) -> float | None:
    f = RESULTS / PROTOCOL / f"{key}.json"
    if not f.is_file():
        return None
    d = json.loads(f.read_text())
    return (d.get("eval") or {}).get("perplexity")


def _pruned_ppl(cell: str, model, ids, windows: int) -> float:
    """Perplexity of the pruned folder this run recovers (measured once, cached beside it): the
    harness's cell may come from older code, and the recovery gap must start from this model."""
    import prunekit as pk

    f = ROOT / ".bench" / "recovery" / f"{cell}-pruned" / "bench_ppl.json"
    known = json.loads(f.read_text()) if f.is_file() else {}
    if str(windows) not in known:
        known[str(windows)] = pk.perplexity(model, ids, 2048, windows)["perplexity"]
        f.write_text(json.dumps(known) + "\n")
    return known[str(windows)]


def _pruned_model(cell: str, calib_src: str):
    import prunekit as pk

    folder = ROOT / ".bench" / "recovery" / f"{cell}-pruned"
    if (folder / "config.json").is_file():
        _log(f"reusing {folder}")
        return pk.load_model(str(folder)) + (None,)
    model, tok = pk.load_model("smollm2-135m")
    cfg_kw, _ = CELLS[cell]
    cfg = pk.PruneConfig(**cfg_kw)
    calib = pk.calibration_windows(calib_src, tok, nsamples=32, seqlen=2048, seed=0)
    t0 = time.perf_counter()
    report = pk.prune_(model, cfg, calib, tok, progress=False, report_tokens=0)
    _log(f"pruned {cell} in {time.perf_counter() - t0:.0f}s")
    pk.save_pretrained_atomic(model, tok, folder, {"report": report.to_dict()}, overwrite=True)
    return model, tok, time.perf_counter() - t0


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["tokens"] for p in res["curve"]]
    ax.plot(xs, [p["perplexity"] for p in res["curve"]], "o-", label=f"recovering (first {res['curve_windows']} windows)")
    if res.get("recovered"):
        x_end = res.get("trained_tokens") or xs[-1]
        ax.plot([0, x_end], [res["pruned"], res["recovered"]["perplexity"]], "s--", color="C2",
                label=f"pruned -> recovered, merged ({res['final_windows']} windows)")  # fmt: skip
    for key, style, name in (("dense", "--", "dense"),):
        if res.get(key):
            ax.axhline(res[key], ls=style, color="gray", label=f"{name} {res[key]:.2f} (40 windows)")
    ax.set_xlabel("recovery tokens (C4)")
    ax.set_ylabel("WikiText-2 perplexity")
    ax.set_yscale("log")
    ax.set_title(f"SmolLM2-135M {res['cell']}: LoRA recovery" + (f" + distillation (λ={res['config']['distill']:g})" if res['config'].get('distill') else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell", choices=sorted(CELLS), required=True)
    ap.add_argument("--tokens", type=int, default=98304, help="recovery budget in tokens")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--curve-points", type=int, default=3, help="evaluations during training (besides step 0)")
    ap.add_argument("--curve-windows", type=int, default=5)
    ap.add_argument("--final-windows", type=int, default=40)
    ap.add_argument("--max-train-seconds", type=float, default=3300,
                    help="time budget of training (RecoveryConfig.max_seconds: the lr decays with time too, training stops when spent)")
    ap.add_argument("--distill", type=float, default=0.0,
                    help="weight of distillation from dense SmolLM2 (KL to its next-token distribution); 0: off")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--adapter", choices=("lora", "full"), default="lora", help="LoRA (merged) or full fine-tuning")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: bfloat16 autocast for the training passes (float32 weights); evaluation stays float32")
    ap.add_argument("--windows", choices=("random", "packed"), default="random",
                    help="training windows: random ones from documents longer than --seqlen, or all documents packed")
    ap.add_argument("--tag", default="", help="suffix of the result files (<cell><tag>.json), e.g. -distill")
    ap.add_argument("--save", action="store_true", help="keep the recovered model in .bench/recovery/<cell>-recovered")
    ap.add_argument("--calib", default=str(SHARED / "c4-sample"))
    ap.add_argument("--eval", default=f"wikitext2:{SHARED / 'wikitext-2-raw' / 'wiki.test.raw'}")
    ap.add_argument("--rescore", type=Path, default=None, metavar="JSON",
                    help="only re-base a finished result on the pruned folder's own perplexity (and its gap closed)")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import prunekit as pk

    if a.rescore is not None:
        res = json.loads(a.rescore.read_text())
        folder = ROOT / ".bench" / "recovery" / f"{res['cell']}-pruned"
        model, tok = pk.load_model(str(folder))
        ids = pk.eval_token_ids(res["eval"], tok)
        step0 = res["curve"][0]["perplexity"]  # the run's own measurement of the model it started from
        now = pk.perplexity(model, ids, 2048, res["curve_windows"])["perplexity"]
        if abs(now / step0 - 1) > 1e-5:
            raise SystemExit(f"--rescore: {folder} is not the model that run recovered (step-0 perplexity on "
                             f"{res['curve_windows']} windows {step0:.4f}, this folder {now:.4f})")
        res.setdefault("pruned_harness", res["pruned"])
        res["pruned"] = _pruned_ppl(res["cell"], model, ids, res["final_windows"])
        gap = math.log(res["pruned"]) - math.log(res["dense"])
        res["gap_closed"] = (math.log(res["pruned"]) - math.log(res["recovered"]["perplexity"])) / gap
        a.rescore.write_text(json.dumps(res, indent=2) + "\n")
        _plot(res, a.rescore.with_suffix(".png"))
        _log(f"{a.rescore.name}: pruned {res['pruned']:.3f} (harness {res['pruned_harness']:.3f}), "
             f"gap closed {res['gap_closed']:.1%}")  # fmt: skip
        return 0
    from prunekit.recovery.lora import RecoveryConfig, recover_

    out_dir = RESULTS / "recovery"
    out_dir.mkdir(parents=True, exist_ok=True)
    _, key = CELLS[a.cell]
    model, tok, prune_s = _pruned_model(a.cell, a.calib)
    ids = pk.eval_token_ids(a.eval, tok)
    cfg = RecoveryConfig(tokens=a.tokens, seqlen=a.seqlen, batch_size=a.batch_size, lr=a.lr, r=a.r,
                         checkpoint_every=50, distill=a.distill, temperature=a.temperature,
                         adapter=a.adapter, precision=a.precision, max_seconds=a.max_train_seconds,
                         windows=a.windows)  # fmt: skip
    teacher = pk.load_model("smollm2-135m")[0] if a.distill > 0 else None
    res: dict = {
        "cell": a.cell, "protocol_id": PROTOCOL, "recovery_data": a.calib, "eval": a.eval,
        "dense": _known_ppl("dense"), "pruned": _known_ppl(key), "prune_seconds": prune_s,
        "curve_windows": a.curve_windows, "final_windows": a.final_windows, "config": cfg.to_dict(),
        "torch_threads": torch.get_num_threads(), "curve": [], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    res["pruned_harness"] = res["pruned"]  # the routine-protocol cell, for reference
    res["pruned"] = _pruned_ppl(a.cell, model, ids, a.final_windows)
    json_path, png_path = out_dir / f"{a.cell}{a.tag}.json", out_dir / f"{a.cell}{a.tag}.png"

    def write() -> None:
        json_path.write_text(json.dumps(res, indent=2) + "\n")
        _plot(res, png_path)

    def curve_point(step: int, tokens: int, train_s: float) -> None:
        was = model.training
        model.eval()
        ev = pk.perplexity(model, ids, 2048, a.curve_windows)
        model.train(was)
        res["curve"].append({"step": step, "tokens": tokens, "perplexity": ev["perplexity"], "train_seconds": train_s,
                             "eval_seconds": ev["seconds"]})  # fmt: skip
        _log(f"step {step}: {tokens} tokens, ppl({a.curve_windows} windows) {ev['perplexity']:.3f}")
        write()

    curve_point(0, 0, 0.0)
    steps = cfg.steps
    at = {max(1, round(steps * (i + 1) / (a.curve_points + 1))) for i in range(a.curve_points)}
    per_step = cfg.batch_size * cfg.seqlen
    train = {"s": 0.0, "t": time.perf_counter()}

    def on_step(step: int, loss: float) -> None:
        now = time.perf_counter()
        train["s"] += now - train["t"]
        train["step"] = step
        if step % 10 == 0:
            _log(f"step {step}/{steps} loss {loss:.3f} ({train['s']:.0f}s training)")
        if step in at:
            curve_point(step, step * per_step, train["s"])
        train["t"] = time.perf_counter()

    ckpt = ROOT / ".bench" / "recovery" / f"{a.cell}{a.tag}-ckpt"
    rep = recover_(model, tok, a.calib, cfg, progress=False, checkpoint_dir=ckpt, on_step=on_step, teacher=teacher)
    res["recovery"] = rep.to_dict()
    res["trained_tokens"] = rep.tokens
    res["stopped_early"] = rep.time_capped  # the time schedule had already decayed the learning rate
    if rep.time_capped:
        _log(f"training stopped by the {a.max_train_seconds:.0f}s budget after {rep.steps} of {steps} steps")
    shutil.rmtree(ckpt, ignore_errors=True)
    res["train_seconds"] = rep.train_seconds
    model.eval()
    ev = pk.perplexity(model, ids, 2048, a.final_windows)
    res["recovered"] = ev
    if res["dense"] and res["pruned"]:
        gap = math.log(res["pruned"]) - math.log(res["dense"])
        res["gap_closed"] = (math.log(res["pruned"]) - math.log(ev["perplexity"])) / gap
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write()
    if a.save:
        pk.save_pretrained_atomic(model, tok, ROOT / ".bench" / "recovery" / f"{a.cell}{a.tag}-recovered",
                                  {"recovery": res}, overwrite=True)  # fmt: skip
    _log(f"recovered ppl {ev['perplexity']:.3f} (pruned {res['pruned']}, dense {res['dense']}); "
         f"log-gap closed {res.get('gap_closed', float('nan')):.1%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
