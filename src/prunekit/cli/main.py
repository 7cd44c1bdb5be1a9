"""`prunekit` command line: a thin shell over the Python API.

Every user error ends as one line on stderr (``prunekit: error: ...``) and exit code 2;
nothing is written unless the whole job succeeded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from ..errors import PrunekitError

EXIT_USAGE = 2


def _parse_set(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for it in items or []:
        if "=" not in it:
            raise PrunekitError(f"--set expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="prune a model and save a Hugging Face folder")
    p.add_argument("model", help="HF folder, .gguf file, alias (smollm2-135m) or hub id")
    p.add_argument("--method", "-m", help="pruning method (see `prunekit ls`)")
    p.add_argument("--sparsity", "-s", type=float, default=None, help="fraction in [0, 1); default 0.5 (N:M implies it)")
    p.add_argument("--pattern", "-p", default=None, help="unstructured | unstructured:layer | N:M (e.g. 2:4)")
    p.add_argument("--calib", default=None, help="calibration SOURCE (default: builtin)")
    p.add_argument("--nsamples", type=int, default=None, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per calibration window (default 2048)")
    p.add_argument("--seed", type=int, default=None, help="calibration sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=None, help="calibration windows per forward (default 8)")
    p.add_argument("--include", action="append", default=[], help="only Linears matching (substring or re:REGEX)")
    p.add_argument("--exclude", action="append", default=[], help="skip Linears matching (substring or re:REGEX)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method setting, e.g. block_size=64")
    p.add_argument("--recipe", help="YAML recipe (PruneConfig); flags override it")
    p.add_argument("--out", "-o", required=True, help="output folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--eval", dest="eval_data", default=None, help="also report perplexity on this SOURCE")
    p.add_argument("--eval-windows", type=int, default=None, help="windows for --eval (default all)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-layer table")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity with the SparseGPT/Wanda protocol")
    p.add_argument("model")
    p.add_argument("--data", default="builtin", help="evaluation SOURCE (default: builtin eval half)")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=None, help="evaluate only the first N windows")
    p.add_argument("--json", action="store_true", help="last stdout line is a JSON object")
    p.add_argument("--quiet", "-q", action="store_true")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="parameters and per-Linear sparsity")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="prunekit", description="Prune transformer models and prove what it bought.")
    ap.add_argument("--version", action="version", version=f"prunekit {_version()}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_prune(sub)
    _add_eval(sub)
    _add_info(sub)
    sub.add_parser("ls", help="registered methods, patterns, data sources, model families")
    d = sub.add_parser("demo", help="prune the embedded default model and print before/after")
    d.add_argument("--model", default="smollm2-135m")
    d.add_argument("--method", default="sparsegpt")
    d.add_argument("--pattern", default="unstructured")
    d.add_argument("--sparsity", type=float, default=None)
    d.add_argument("--nsamples", type=int, default=8)
    d.add_argument("--seqlen", type=int, default=2048)
    d.add_argument("--eval-windows", type=int, default=8)
    d.add_argument("--calib", default="builtin")
    d.add_argument("--data", default="builtin")
    d.add_argument("--out", default="demo-out")
    return ap


def _version() -> str:
    from .. import __version__

    return __version__


def _config_from_args(a) -> Any:
    from ..config import CalibConfig, PruneConfig, TargetSpec

    base = PruneConfig.from_yaml(a.recipe) if a.recipe else PruneConfig()
    if a.method is None and not a.recipe:
        raise PrunekitError("--method is required (e.g. --method wanda); `prunekit ls` lists methods")
    calib = CalibConfig(
        source=a.calib if a.calib is not None else base.calib.source,
        nsamples=a.nsamples if a.nsamples is not None else base.calib.nsamples,
        seqlen=a.seqlen if a.seqlen is not None else base.calib.seqlen,
        seed=a.seed if a.seed is not None else base.calib.seed,
        batch_size=a.batch_size if a.batch_size is not None else base.calib.batch_size,
    )
    targets = TargetSpec(
        tuple(base.targets.include) + tuple(a.include), tuple(base.targets.exclude) + tuple(a.exclude)
    )
    return PruneConfig(
        method=a.method or base.method,
        sparsity=a.sparsity if a.sparsity is not None else base.sparsity,
        pattern=a.pattern or base.pattern,
        method_args={**base.method_args, **_parse_set(a.set)},
        allocation=base.allocation,
        targets=targets,
        calib=calib,
        propagate=base.propagate,
    ).validate()


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def cmd_prune(a) -> dict[str, Any]:
    from .. import api
    from ..data import calibration_windows, eval_token_ids, load_source
    from ..eval import model_size_bytes, perplexity, sparsity_summary
    from ..export import check_output_dir, save_pretrained_atomic, versions
    from ..models import load_model, resolve_model

    cfg = _config_from_args(a)  # validates method, sparsity, pattern before any heavy work
    src = resolve_model(a.model)
    check_output_dir(a.out, a.overwrite, protect=[src.path] if src.kind != "hub" else [])
    # every method uses calibration tokens (statistics, or the reconstruction-error report)
    calib_src = load_source(cfg.calib.source, "calib")
    t0 = time.perf_counter()
    if not (a.quiet or a.json):
        print(f"loading {a.model} ...", flush=True)
    model, tok = load_model(a.model)
    t_load = time.perf_counter() - t0
    calib = calibration_windows(calib_src, tok, cfg.calib.nsamples, cfg.calib.seqlen, cfg.calib.seed)
    report = api.prune_(model, cfg, calib, tok, progress=not a.quiet)
    report.calib["description"] = calib_src.description
    summary = sparsity_summary(model)
    result: dict[str, Any] = {
        "model": a.model,
        "method": cfg.method,
        "pattern": report.pattern,
        "target_sparsity": report.target_sparsity,
        "sparsity": report.sparsity,
        "parameters": summary["parameters"],
        "prune_seconds": report.timings.get("total"),
        "load_seconds": t_load,
    }
    if a.eval_data:
        ev = perplexity(model, eval_token_ids(a.eval_data, tok), cfg.calib.seqlen, a.eval_windows, progress=not a.quiet)
        result["perplexity"] = ev["perplexity"]
        result["eval"] = {**ev, "data": a.eval_data}
    meta = {
        "prunekit_format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_model": a.model,
        "config": cfg.to_dict(),
        "report": report.to_dict(),
        "measured": {k: summary[k] for k in ("linear_sparsity", "block_linear_sparsity", "parameters")},
        "eval": result.get("eval"),
        "versions": versions(),
    }
    out = save_pretrained_atomic(model, tok, a.out, meta, overwrite=a.overwrite)
    result["out"] = str(out)
    result["size_bytes"] = model_size_bytes(out)
    if not a.quiet:
        print(report.table())
        print(f"calibration: {calib_src.description}; {calib.shape[0]} x {calib.shape[1]} tokens, seed {cfg.calib.seed}")
        t = report.timings
        print(
            f"time: prune {t.get('total', 0):.1f}s (block forwards {t.get('stats_forward', 0) + t.get('propagate_forward', 0):.1f}s, "
            f"pruning math {t.get('prune', 0):.1f}s); load {t_load:.1f}s"
        )
        if "perplexity" in result:
            print(f"perplexity ({a.eval_data}, {result['eval']['windows']} x {cfg.calib.seqlen}): {result['perplexity']:.3f}")
        print(f"saved {out} ({_fmt_bytes(result['size_bytes'])})")
    return result


def cmd_eval(a) -> dict[str, Any]:
    from ..data import eval_token_ids, load_source
    from ..eval import perplexity
    from ..models import load_model, resolve_model

    resolve_model(a.model)
    src = load_source(a.data, "eval")
    model, tok = load_model(a.model)
    ids = eval_token_ids(src, tok)
    res = perplexity(model, ids, a.seqlen, a.max_windows, progress=not (a.quiet or a.json))
    res = {**res, "model": a.model, "data": a.data, "data_description": src.description}
    if not a.json:
        print(
            f"{a.model}: perplexity {res['perplexity']:.4f} on {src.description}; "
            f"{res['windows']} of {res['available_windows']} windows x {a.seqlen} tokens "
            f"(non-overlapping), {res['seconds']:.1f}s"
        )
    return res


def cmd_info(a) -> dict[str, Any]:
    from ..eval import sparsity_summary
    from ..models import load_model

    model, _ = load_model(a.model)
    s = sparsity_summary(model)
    cfg = model.config
    res = {"model": a.model, "model_type": cfg.model_type, **s}
    try:
        from ..structured.describe import block_widths

        res["blocks"] = block_widths(model)
    except ImportError:
        pass
    if not a.json:
        print(f"{a.model}: {cfg.model_type}, {s['parameters']:,} parameters")
        print(f"sparsity: {s['linear_sparsity']:.2%} of all Linear weights, {s['block_linear_sparsity']:.2%} inside decoder blocks")
        for layer in s["linears"]:
            print(f"  {layer['name']:<48} {'x'.join(map(str, layer['shape'])):>11} {layer['sparsity']:>8.2%}")
        for b in res.get("blocks", []):
            print(f"  block {b['index']:>3}: {b}")
    return res


def cmd_ls(a) -> dict[str, Any]:
    from ..data import SOURCE_KINDS
    from ..methods import METHODS
    from ..models import ALIASES, list_families

    from ..structured import STRUCTURED_METHODS

    methods = {n: getattr(METHODS.get(n), "summary", "") for n in METHODS.names()}
    methods.update({n: "structured: " + (getattr(STRUCTURED_METHODS.get(n), "summary", "") or "")
                    for n in STRUCTURED_METHODS.names()})  # fmt: skip
    patterns = {"unstructured": "per output row (magnitude: per matrix)", "unstructured:layer": "per matrix",
                "N:M": "keep N of every M consecutive inputs, e.g. 2:4, 4:8"}  # fmt: skip
    print("methods:")
    for n, s in methods.items():
        print(f"  {n:<14} {s}")
    print("patterns:")
    for n, s in patterns.items():
        print(f"  {n:<20} {s}")
    print("data sources:")
    for n, s in SOURCE_KINDS.items():
        print(f"  {n:<20} {s}")
    print("model families: " + ", ".join(list_families()))
    print("model aliases: " + ", ".join(ALIASES))
    return {"methods": list(methods)}


def cmd_demo(a) -> dict[str, Any]:
    from ..demo import run_demo

    return run_demo(a)


def _quiet_transformers() -> None:
    """Our own progress bars and messages only: keep stderr for the one-line error."""
    import warnings

    warnings.filterwarnings("ignore", message=".*(Converting|gguf|GGUF).*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        import transformers.modeling_gguf_pytorch_utils as gguf_utils  # plain tqdm, not the above

        gguf_utils.tqdm = lambda it, *a, **k: it
    except Exception:  # pragma: no cover
        pass


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("PRUNEKIT_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    a = parser.parse_args(argv)
    _quiet_transformers()
    handlers = {"prune": cmd_prune, "eval": cmd_eval, "info": cmd_info, "ls": cmd_ls, "demo": cmd_demo}
    try:
        res = handlers[a.cmd](a)
    except PrunekitError as e:
        print(f"prunekit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("prunekit: interrupted; nothing was written", file=sys.stderr)
        return 130
    if getattr(a, "json", False):
        print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
