"""`prunekit` command line: a thin shell over the Python API.

Every user error ends as one line on stderr (``prunekit: error: ...``) and exit code 2;
nothing is written unless the whole job succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import sys
import time
from typing import Any

from ..errors import ConfigError, PrunekitError
from .flags import float_flag, int_flag
from .flags import note as _note

EXIT_USAGE = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
EXIT_SIGHUP = 129
EXIT_PIPE = 141  # 128 + SIGPIPE, what `yes | head` gives: the reader closed our stdout
EXIT_INTERNAL = 1


class UsageError(PrunekitError):
    """A flag argparse refused (unknown flag, missing value, bad number)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so every cleanup path runs as for Ctrl-C."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (``prunekit: error: ...``), not usage + message."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _fraction_flag(text: str) -> float:
    try:
        v = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0.5 for 50%)") from None
    if not 0.0 <= v < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is out of range: it must be a fraction in [0, 1), e.g. 0.5 for 50%")
    return v


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs; values stay strings and are typed by the method's settings."""
    from ..settings import parse_key_values

    return parse_key_values(items)


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="prune a model and save a Hugging Face folder")
    p.add_argument("model", help="HF folder, .gguf file, alias (smollm2-135m) or hub id")
    p.add_argument("--method", "-m", help="pruning method (see `prunekit ls`)")
    p.add_argument("--sparsity", "-s", type=_fraction_flag, default=None, help="fraction in [0, 1); default 0.5 (N:M implies it)")
    p.add_argument("--pattern", "-p", default=None, help="unstructured | unstructured:layer | N:M (e.g. 2:4)")
    p.add_argument("--calib", default=None, help="calibration SOURCE (default: builtin)")
    p.add_argument("--nsamples", type=int_flag(1), default=None, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int_flag(2), default=None, help="tokens per calibration window (default 2048)")
    p.add_argument("--seed", type=int_flag(0, 2**63 - 1), default=None, help="calibration sampling seed (default 0)")
    p.add_argument("--batch-size", type=int_flag(1), default=None, help="calibration windows per forward (default 8)")
    p.add_argument("--include", action="append", default=[], help="only Linears matching (substring or re:REGEX)")
    p.add_argument("--exclude", action="append", default=[], help="skip Linears matching (substring or re:REGEX)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method setting, e.g. block_size=64")
    p.add_argument("--allocation", default=None, help="per-layer sparsity: uniform (default) | owl | blocks")
    p.add_argument("--alloc-set", action="append", default=[], metavar="KEY=VALUE", help="allocation setting, e.g. M=5, lam=0.08")
    p.add_argument("--engine", choices=("two-pass", "one-pass"), default=None,
                   help="two-pass (default: statistics, then the pruned forward) or one-pass (each target pruned as soon "
                        "as every window reached it; one forward per block, true-sequential)")
    p.add_argument("--stream", action="store_true",
                   help="stream a safetensors folder block by block from disk (models larger than memory)")
    p.add_argument("--resume", action="store_true", help="with --stream: continue an interrupted run from its last finished block")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (with --stream: where each block runs; default cpu)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32", "bfloat16", "float16", "float32"), default=None,
                   help="compute and output dtype (default: as stored; GGUF loads as fp32)")
    p.add_argument("--idle-experts", choices=("dense", "magnitude"), default="dense",
                   help="MoE: an expert no calibration token reached is left dense (default) or pruned by magnitude")
    p.add_argument("--experts", type=_expert_flag, default=None,
                   help="stun/reap: experts removed per MoE layer (fraction in (0, 1) or a count >= 1)")
    p.add_argument("--then", default=None, help="stun: the unstructured method run after expert pruning (default sparsegpt)")
    p.add_argument("--token-sparsity", type=float_flag(0, 1, lo_open=False), default=None, metavar="S",
                   help="ftp: fraction of token-blocks the trained routers skip (default 0.3); the folder reloads with routing")
    p.add_argument("--recover", action="store_true",
                   help="after pruning, recover with (mask-preserving) LoRA before saving (LLM-Pruner's pipeline)")
    p.add_argument("--recover-data", default=None, help="recovery training SOURCE (default: the calibration source; never the eval text)")
    p.add_argument("--recover-tokens", type=int_flag(2, 1 << 40), default=None, help="recovery training tokens (default 65536)")
    p.add_argument("--recover-set", action="append", default=[], metavar="KEY=VALUE",
                   help="recovery setting (as `prunekit recover`), e.g. lr=2e-4, seqlen=256, r=16")
    p.add_argument("--recipe", help="YAML recipe (PruneConfig); flags override it")
    p.add_argument("--out", "-o", required=True, help="output folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--eval", dest="eval_data", default=None, help="also report perplexity on this SOURCE")
    p.add_argument("--eval-windows", type=int_flag(1), default=None, help="windows for --eval (default all)")
    p.add_argument("--eval-tasks", default=None, help="also score tasks before and after pruning, e.g. lambada,piqa[:PATH]")
    p.add_argument("--eval-limit", type=int_flag(1), default=None, help="examples per task for --eval-tasks (default all)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or per-layer table")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity with the SparseGPT/Wanda protocol")
    p.add_argument("model")
    p.add_argument("--data", default=None, help="perplexity SOURCE (default: builtin eval half, unless --tasks/--lm-eval)")
    p.add_argument("--seqlen", type=int_flag(2), default=2048, help="tokens per window (>= 2)")
    p.add_argument("--max-windows", type=int_flag(1), default=None, help="evaluate only the first N windows")
    p.add_argument("--tasks", default=None, help="zero/few-shot tasks with lm-eval's rules: lambada,piqa,gsm8k (NAME:PATH for a file)")
    p.add_argument("--limit", type=int_flag(1), default=None, help="examples per task (default all; gsm8k generates: use a limit on CPU)")
    p.add_argument("--fewshot", type=int_flag(0, 64), default=None, help="gsm8k few-shot examples (default 5, from the train file)")
    p.add_argument("--lm-eval", dest="lm_eval", default=None, help="also run lm-eval-harness tasks on the model (pip install prunekit[lmeval])")
    p.add_argument("--lm-eval-include", default=None, help="folder of extra lm-eval task YAMLs (local data)")
    p.add_argument("--dynamic-experts", type=float_flag(0, 1, lo_open=False), default=None, metavar="BETA",
                   help="MoE: skip a token's second expert when w2 < BETA*w1 (MC-MoE); reports the evaluations saved")
    p.add_argument("--token-prune", default=None, metavar="METHOD[:K=V,...]",
                   help="token routing during evaluation (prunekit.tokens): ftp:routers=FILE, random-route:sparsity=0.3, "
                        "block-skip:blocks=3;5, attn-drop:keep=0.7; reports the token-blocks computed")  # fmt: skip
    p.add_argument("--context-prune", default=None, metavar="METHOD[:rate=R|threshold=T]",
                   help="xquad-rag: also read each question's pruned context (prunekit.context: provence, bm25, "
                        "similarity, selective-context, random); reports both readings and the tokens removed")  # fmt: skip
    p.add_argument("--json", action="store_true", help="last stdout line is a JSON object")
    p.add_argument("--quiet", "-q", action="store_true")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="parameters and per-Linear sparsity")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")


# Modules whose ``register(subparsers)`` adds their subcommands; each parser sets its handler with
# ``p.set_defaults(_handler=fn)`` (``fn(args) -> dict``, the --json summary). A room not built yet is skipped.
ROOM_CLIS: tuple[str, ...] = (
    "prunekit.models.fetch",  # prunekit fetch ALIAS
    "prunekit.text.cli",  # prunekit segment FILE
    "prunekit.export.gguf",  # prunekit export DIR --format gguf
    "prunekit.decoding.cli",  # prunekit decode MODEL --draft DRAFT
    "prunekit.decoding.reason_cli",  # prunekit reason MODEL --prune deepprune:JUDGE
    "prunekit.context.cli",  # prunekit context prune --question Q --passages FILE
    "prunekit.prompts.cli",  # prunekit prompt-search MODEL --task sst-2
    "prunekit.tokens.cli",  # prunekit tokens ... (token pruning hooks)
)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="prunekit", description="Prune transformer models and prove what it bought.")
    ap.add_argument("--version", action="version", version=f"prunekit {_version()}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_prune(sub)
    _add_eval(sub)
    _add_info(sub)
    ls = sub.add_parser("ls", help="registered methods, patterns, data sources, model families")
    ls.add_argument("--guide", action="store_true", help="also print which method to pick for which goal")
    ls.add_argument("--json", action="store_true", help="print the listing as one JSON line instead")
    from ..guide import add_recommend_parser
    from ..recovery.cli import add_recover_parser

    add_recommend_parser(sub)
    add_recover_parser(sub)
    for mod in ROOM_CLIS:  # subcommands of the other rooms: each module's register(sub) adds its own
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if not (e.name == mod or mod.startswith(f"{e.name}.")):
                raise
            continue
        m.register(sub)
    d = sub.add_parser("demo", help="prune the embedded default model and print before/after")
    d.add_argument("--model", default="smollm2-135m")
    d.add_argument("--method", default=None,
                   help="default: the best measured 50%% configuration that fits 10 min (SparseGPT + least-squares refit + OWL)")
    d.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", help="method setting (default with the default method: refit=pcg)")
    d.add_argument("--allocation", default=None, help="per-layer sparsity (default with the default method: owl)")
    d.add_argument("--pattern", default="unstructured")
    d.add_argument("--sparsity", type=_fraction_flag, default=None)
    d.add_argument("--nsamples", type=int_flag(1), default=8)
    d.add_argument("--seqlen", type=int_flag(2), default=2048)
    d.add_argument("--eval-windows", type=int_flag(1), default=8)
    d.add_argument("--calib", default="builtin")
    d.add_argument("--data", default="builtin")
    d.add_argument("--out", default="demo-out", help="output folder (new, empty, or an earlier prunekit output; default demo-out)")
    d.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that is not a prunekit output")
    d.add_argument("--decode-tokens", type=int_flag(0, 4096), default=48, metavar="N",
                   help="end with speculative decoding of the dense model, N new tokens (default 48; 0 skips)")
    return ap


def _version() -> str:
    from .. import __version__

    return __version__


def _config_from_args(a) -> Any:
    """Flags over the recipe over defaults, validated in full before any heavy work."""
    from ..config import CalibConfig, PruneConfig, TargetSpec
    from ..methods import check_settings

    base = PruneConfig.from_file(a.recipe) if a.recipe else PruneConfig()
    if a.method is None and not a.recipe:
        raise ConfigError("--method is required (e.g. --method wanda); `prunekit ls` lists methods")
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
    from ..allocation import get_allocator

    method = a.method or base.method
    given = {**base.method_args, **_parse_set(a.set)}
    for flag, key in (("experts", "experts"), ("then", "then")):  # expert-pruning flags are method settings
        v = getattr(a, flag, None)
        if v is not None:
            from ..methods import settings_schema

            if key not in settings_schema(method):
                raise ConfigError(f"--{flag} applies to expert-pruning methods (stun, reap); {method!r} has no {key!r} setting")
            given[key] = int(v) if flag == "experts" and v >= 1 else v
    typed = check_settings(method, given)  # one validator for --set, recipes and the API
    allocation = a.allocation or base.allocation
    alloc_given = {**(base.allocation_args if allocation == base.allocation else {}), **_parse_set(a.alloc_set)}
    alloc_typed = get_allocator(allocation, alloc_given).settings()
    return PruneConfig(
        method=method,
        sparsity=a.sparsity if a.sparsity is not None else base.sparsity,
        pattern=a.pattern or base.pattern,
        method_args={k: typed[k] for k in given},
        allocation=allocation,
        allocation_args={k: alloc_typed[k] for k in alloc_given},
        targets=targets,
        calib=calib,
        propagate=base.propagate,
        engine=a.engine or base.engine,
    ).validate()


def cmd_prune(a) -> dict[str, Any]:
    from .. import api
    from ..data import calibration_windows, eval_token_ids, load_source
    from ..eval import model_size_bytes, parameter_count, perplexity, sparsity_summary
    from ..export import OutputSlot, fmt_bytes, model_bytes, versions, write_hf_folder
    from ..models import load_model, resolve_model
    from ..models.limits import check_positions
    from ..models.loading import check_hub_reachable, estimated_load_bytes, source_info

    if a.method == "ftp":  # token routing (prunekit.tokens): trains routers, not weights
        from ..tokens.cli import prune_ftp

        return prune_ftp(a)
    if a.token_sparsity is not None:
        raise ConfigError(f"--token-sparsity belongs to --method ftp (token routing), not --method {a.method}: drop it")
    cfg = _config_from_args(a)  # validates method, settings, sparsity, pattern before any heavy work
    rec_cfg = _recovery_from_args(a, cfg)
    if a.stream:
        if rec_cfg is not None:
            raise ConfigError("--recover trains the whole model in memory: drop --stream, or run `prunekit recover OUT` afterwards")
        return _prune_streaming(a, cfg)
    if a.resume:
        raise ConfigError("--resume continues a --stream run: add --stream (an in-memory prune restarts from scratch)")
    dtype = _dtype_arg(a.dtype)
    device = None
    if a.device:
        from ..engine.streaming import resolve_device

        device = str(resolve_device(a.device))
    if a.eval_tasks:
        from ..eval import parse_task_specs
        from ..eval.tasks import resolve_task_path

        for spec in parse_task_specs(a.eval_tasks):
            resolve_task_path(spec)  # a missing task file fails now, not after the prune
    src = resolve_model(a.model)
    check_hub_reachable(src)  # an unreachable hub id fails now, in seconds
    uses_calib = api.needs_calibration(cfg)  # magnitude is data-free: it reads no calibration text
    calib_src = load_source(cfg.calib.source, "calib") if uses_calib else None
    with OutputSlot(a.out, a.overwrite, protect=[src.path] if src.kind != "hub" else [],
                    need_bytes=estimated_load_bytes(src), notify=_note) as slot:  # fmt: skip
        t0 = time.perf_counter()
        if not (a.quiet or a.json):
            print(f"loading {a.model} ...", flush=True)
        model, tok = load_model(a.model, dtype=dtype, device=device)
        t_load = time.perf_counter() - t0
        slot.check_space(model_bytes(model))  # the output is at most the loaded model's size
        dense_params = parameter_count(model)
        tasks_before = None
        if a.eval_tasks:
            from ..eval import evaluate_tasks

            tasks_before = evaluate_tasks(model, tok, a.eval_tasks, a.eval_limit, progress=not a.quiet)
        calib = None
        if calib_src is not None:
            calib = calibration_windows(calib_src, tok, cfg.calib.nsamples, cfg.calib.seqlen, cfg.calib.seed)
            check_positions(model, cfg.calib.seqlen, "--seqlen", notify=_note)
        report = api.prune_(model, cfg, calib, tok, progress=not a.quiet, idle_experts=a.idle_experts)
        report.calib["description"] = calib_src.description if calib_src is not None else "none (data-free method)"
        recovery = None
        if rec_cfg is not None:
            from ..recovery.lora import recover_

            rec_data = a.recover_data or cfg.calib.source
            teacher = None
            if rec_cfg.distill > 0:  # the dense model, loaded again (the pruned one was changed in place)
                if not (a.quiet or a.json):
                    print(f"loading {a.model} again as the distillation teacher ...", flush=True)
                teacher, _ = load_model(a.model, dtype=dtype, device=device)
            rec = recover_(model, tok, load_source(rec_data, "calib"), rec_cfg, progress=not a.quiet, teacher=teacher)
            del teacher
            recovery = {**rec.to_dict(), "source": rec_data}
        summary = sparsity_summary(model)
        result: dict[str, Any] = {
            "model": a.model,
            "method": cfg.method,
            "pattern": report.pattern,
            "target_sparsity": report.target_sparsity,
            "sparsity": report.sparsity,
            "parameters": summary["parameters"],
            "dense_parameters": dense_params,
            "prune_seconds": report.timings.get("total"),
            "prune_cpu_seconds": report.timings.get("total_cpu"),
            "timings": report.timings,
            "load_seconds": t_load,
        }
        if a.eval_data:
            ev = perplexity(model, eval_token_ids(a.eval_data, tok), cfg.calib.seqlen, a.eval_windows, progress=not a.quiet)
            result["perplexity"] = ev["perplexity"]
            result["eval"] = {**ev, "data": a.eval_data}
        if a.eval_tasks:
            result["tasks"] = {"dense": tasks_before,
                               "pruned": evaluate_tasks(model, tok, a.eval_tasks, a.eval_limit, progress=not a.quiet)}  # fmt: skip
        meta = {
            "prunekit_format": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source_model": source_info(src, model),
            "config": cfg.to_dict(),
            "applied": {"method": cfg.method, "pattern": report.pattern, "target_sparsity": report.target_sparsity,
                        "sparsity": report.sparsity},  # fmt: skip
            "parameters": {"dense": dense_params, "pruned": summary["parameters"], "nonzero": _nonzero(model)},
            "report": report.to_dict(),
            "measured": {k: summary[k] for k in ("linear_sparsity", "block_linear_sparsity", "parameters")},
            "eval": result.get("eval"),
            "tasks": result.get("tasks"),
            "recovery": recovery,
            "versions": versions(),
        }
        if recovery is not None:
            result["recovery"] = {k: recovery.get(k) for k in ("tokens", "steps", "mode", "seconds", "source")}
        out = slot.commit(lambda tmp: write_hf_folder(model, tok, tmp, meta))
    result["out"] = str(out)
    result["size_bytes"] = model_size_bytes(out)
    if not a.quiet:
        print(report.table())
        if calib is not None:
            print(f"calibration: {calib_src.description}; {calib.shape[0]} x {calib.shape[1]} tokens, seed {cfg.calib.seed}")
        else:
            print(f"calibration: none ({cfg.method} needs no statistics)")
        t = report.timings
        print(
            f"time: prune {t.get('total', 0):.1f}s (block forwards {t.get('stats_forward', 0) + t.get('propagate_forward', 0) + t.get('forward', 0):.1f}s, "
            f"pruning math {t.get('prune', 0):.1f}s); load {t_load:.1f}s"
        )
        if "perplexity" in result:
            print(f"perplexity ({a.eval_data}, {result['eval']['windows']} x {cfg.calib.seqlen}): {result['perplexity']:.3f}")
        if "tasks" in result:
            _print_tasks(result["tasks"]["pruned"], result["tasks"]["dense"])
        print(f"saved {out} ({fmt_bytes(result['size_bytes'])})")
    return result


def _expert_flag(text: str) -> float:
    """--experts: a fraction in (0, 1) or a whole count >= 1 of experts removed per layer."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give a fraction in (0, 1) (e.g. 0.25) or a count (e.g. 2)") from None
    if not (0 < v < 1 or (1 <= v < 1e9 and v == int(v))):
        raise argparse.ArgumentTypeError(f"{text!r} is neither a fraction in (0, 1) nor a whole count >= 1")
    return v


def _recovery_from_args(a, cfg):
    """``--recover`` → a validated RecoveryConfig (before any heavy work), else None."""
    if not a.recover:
        if a.recover_data or a.recover_tokens or a.recover_set:
            raise ConfigError("--recover-data/--recover-tokens/--recover-set need --recover")
        return None
    from ..recovery.lora import RecoveryConfig, _require_peft

    rec_data = a.recover_data or cfg.calib.source
    if a.eval_data and rec_data == a.eval_data:
        raise ConfigError(f"--recover would train on the evaluation text {a.eval_data!r}: pass --recover-data SOURCE (e.g. C4)")
    given = _parse_set(a.recover_set)
    if a.recover_tokens:
        given["tokens"] = a.recover_tokens
    rec = RecoveryConfig.from_dict(given)  # one-line errors for unknown keys / bad values
    _require_peft()
    return rec


def _dtype_arg(name: str | None) -> str:
    """--dtype → a torch dtype name for load_model ("auto": as stored)."""
    return {None: "auto", "auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(name, name)


def _prune_streaming(a, cfg) -> dict[str, Any]:
    """``prune DIR --stream``: one block in memory at a time, read from and written to shards."""
    from transformers import AutoTokenizer

    from ..data import calibration_windows, load_source
    from ..engine.streaming import init_distributed_from_env, prune_streaming, resolve_device
    from ..models import resolve_model

    src = resolve_model(a.model)
    if src.kind != "folder":
        raise ConfigError(f"--stream reads a safetensors Hugging Face folder; {a.model} is a {src.kind}: drop --stream")
    if a.eval_data or a.eval_tasks:
        raise ConfigError("--stream does not evaluate in the same run (the model is never whole in memory): "
                          "run `prunekit eval OUT ...` afterwards")  # fmt: skip
    device = str(resolve_device(a.device or "cpu"))
    dtype = None if _dtype_arg(a.dtype) == "auto" else _dtype_arg(a.dtype)
    calib_src = load_source(cfg.calib.source, "calib")
    init_distributed_from_env(device)
    try:
        tok = AutoTokenizer.from_pretrained(src.path)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise ConfigError(f"--stream needs the folder's tokenizer for calibration: {' '.join(str(e).split())[:300]}") from None
    calib = calibration_windows(calib_src, tok, cfg.calib.nsamples, cfg.calib.seqlen, cfg.calib.seed)
    t0 = time.perf_counter()
    report = prune_streaming(src.path, a.out, cfg, calib=calib, tokenizer=tok, device=device, dtype=dtype,
                             resume=a.resume, overwrite=a.overwrite, progress=not a.quiet, notify=_note)  # fmt: skip
    result = {"model": a.model, "method": cfg.method, "pattern": report.pattern, "target_sparsity": report.target_sparsity,
              "sparsity": report.sparsity, "prune_seconds": time.perf_counter() - t0, "out": str(a.out),
              "device": device, "streamed": True}  # fmt: skip
    if not a.quiet:
        print(report.table(max_rows=40))
        print(f"calibration: {calib_src.description}; {calib.shape[0]} x {calib.shape[1]} tokens, seed {cfg.calib.seed}")
        print(f"streamed {len(report.layers)} matrices block by block on {device}; saved {a.out}")
    return result


def _nonzero(model) -> int:
    seen = {p.data_ptr(): p for p in model.parameters()}
    return int(sum(int((p != 0).sum()) for p in seen.values()))


def _spec_name(spec: Any) -> str:
    return str(getattr(spec, "name", spec)).split(":", 1)[0].lower()


def _task_settings(fewshot: int | None) -> dict[str, Any]:
    return {} if fewshot is None else {"num_fewshot": fewshot}


def _print_tasks(res: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]] | None = None) -> None:
    head = f"{'task':<10} {'metric':<16} {'dense':>10} {'value':>10} {'± stderr':>9} {'n':>6}" if before else \
        f"{'task':<10} {'metric':<16} {'value':>10} {'± stderr':>9} {'n':>6}"  # fmt: skip
    print(head)
    for task, r in res.items():
        for m, v in r["metrics"].items():
            se = (r.get("stderr") or {}).get(m)
            fmt = (lambda x: f"{x:.3f}") if m == "perplexity" else (lambda x: f"{100 * x:.2f}%")
            cols = [f"{task:<10}", f"{m:<16}"]
            if before:
                bv = before.get(task, {}).get("metrics", {}).get(m)
                cols.append(f"{fmt(bv) if bv is not None else '-':>10}")
            cols += [f"{fmt(v):>10}", f"{(fmt(se) if se is not None else '-'):>9}", f"{r.get('n', ''):>6}"]
            print(" ".join(cols))


def _split_rag_task(tasks: str | None) -> tuple[str | None, str | None]:
    """``"lambada,xquad-rag:PATH"`` → ``("PATH", "lambada")``; ``""`` for xquad-rag's default file, None if absent."""
    if not tasks:
        return None, tasks
    rag, rest = None, []
    for t in (x.strip() for x in tasks.split(",") if x.strip()):
        name, _, path = t.partition(":")
        if name.strip().lower() == "xquad-rag":
            rag = path.strip()
        else:
            rest.append(t)
    return rag, ",".join(rest) or None


def _print_rag(r: dict[str, Any]) -> None:
    m, pr = r["metrics"], r.get("pruned")
    print(f"xquad-rag: {r['n']} test questions, BM25 top-{r['k']} paragraphs (gold recall {r['recall_at_k']:.1%})")
    print(f"{'context':<28} {'EM':>6} {'F1':>6} {'gold LL':>8} {'prefill':>8} {'read s':>7}")
    rows = [("full", m)] + ([(pr["spec"], pr["metrics"])] if pr else [])
    for name, x in rows:
        print(f"{name:<28} {100 * x['em']:>6.1f} {100 * x['f1']:>6.1f} {x['gold_ll']:>8.2f} {x['prefill_tokens']:>8.0f} {x['read_s']:>7.2f}")
    if pr:
        print(f"context tokens removed: {pr['tokens_before'] - pr['tokens_after']:,} of {pr['tokens_before']:,} "
              f"({pr['rate_achieved']:.1%}; reader tokenizer); pruner {pr['pruner_s']:.3f} s per question")  # fmt: skip


def cmd_eval(a) -> dict[str, Any]:
    from ..data import eval_token_ids, load_source
    from ..eval import evaluate_tasks, parse_task_specs, perplexity
    from ..models import load_model, resolve_model

    from ..models.limits import check_positions

    from ..models.loading import check_hub_reachable

    check_hub_reachable(resolve_model(a.model))
    rag, a.tasks = _split_rag_task(a.tasks)  # xquad-rag lives in prunekit.context, the others in prunekit.eval
    if a.context_prune is not None:
        if rag is None:
            raise ConfigError("--context-prune applies to --tasks xquad-rag (retrieval-augmented QA): add it or drop the flag")
        from ..context.rag import parse_prune_spec

        parse_prune_spec(a.context_prune)  # a bad spec fails before loading
    specs = parse_task_specs(a.tasks) if a.tasks else None  # unknown task: fail before loading
    if a.fewshot is not None and not a.lm_eval and not any(_spec_name(t) == "gsm8k" for t in specs or []):
        raise ConfigError(f"--fewshot {a.fewshot} applies to gsm8k and --lm-eval tasks; "
                          f"{a.tasks or 'perplexity'} is scored zero-shot: drop --fewshot")  # fmt: skip
    if a.lm_eval_include is not None:
        if not a.lm_eval:
            raise ConfigError("--lm-eval-include adds task YAMLs for --lm-eval: add --lm-eval TASKS")
        if not os.path.isdir(a.lm_eval_include):
            raise ConfigError(f"--lm-eval-include {a.lm_eval_include!r} is not a folder: give the folder of task YAMLs")
    token_prune = None
    if a.token_prune is not None:
        from ..tokens.api import parse_spec
        from ..tokens.names import ROUTE as ROUTE_METHODS
        from ..tokens.names import SHORTEN

        token_prune = parse_spec(a.token_prune)
        if token_prune[0] in SHORTEN:
            raise ConfigError(f"--token-prune {token_prune[0]} removes positions, but perplexity and task scores need every "
                              f"position's logits: use a routing method ({', '.join(ROUTE_METHODS)}) or `prunekit tokens --prompt`")  # fmt: skip
        if token_prune[0] not in ROUTE_METHODS:
            raise ConfigError(f"--token-prune: unknown method {token_prune[0]!r}: use one of {', '.join(ROUTE_METHODS)}")
    data = a.data if a.data is not None else (None if (a.tasks or a.lm_eval or rag is not None) else "builtin")
    src = load_source(data, "eval") if data else None
    model, tok = load_model(a.model, dynamic_experts=a.dynamic_experts)
    res: dict[str, Any] = {"model": a.model}
    if token_prune is not None:
        from ..tokens import patch

        patch(model, method=token_prune[0], **token_prune[1])
    if src is not None:
        ids = eval_token_ids(src, tok)
        if ids.shape[1] > a.seqlen:  # (too short a text is the perplexity function's one-line error)
            check_positions(model, a.seqlen, "--seqlen", notify=_note)
        ppl = perplexity(model, ids, a.seqlen, a.max_windows, progress=not (a.quiet or a.json))
        res.update(ppl, data=data, data_description=src.description)
        if not a.json:
            print(
                f"{a.model}: perplexity {ppl['perplexity']:.4f} on {src.description}; "
                f"{ppl['windows']} of {ppl['available_windows']} windows x {a.seqlen} tokens "
                f"(non-overlapping), {ppl['seconds']:.1f}s"
            )
    if specs:
        res["tasks"] = evaluate_tasks(model, tok, a.tasks, a.limit, progress=not (a.quiet or a.json),
                                      **_task_settings(a.fewshot))  # fmt: skip
        if not a.json:
            _print_tasks(res["tasks"])
    if rag is not None:
        from ..context.rag import evaluate_xquad_rag

        r = evaluate_xquad_rag(model, tok, rag or None, a.limit, a.context_prune, progress=not (a.quiet or a.json))
        res.setdefault("tasks", {})["xquad-rag"] = r
        if not a.json:
            _print_rag(r)
    if a.lm_eval:
        from ..eval.lmeval import run_lm_eval

        try:
            le = run_lm_eval(model, tok, a.lm_eval, a.limit, num_fewshot=a.fewshot, include_path=a.lm_eval_include)
        except KeyError as e:  # lm-eval's "not a registered task" error
            raise ConfigError(f"lm-eval: {e.args[0] if e.args else e} (`lm_eval ls tasks` lists the names)") from None
        res["lm_eval"] = {"tasks": le["tasks"], "n": le.get("n"), "versions": le.get("versions")}
        if not a.json:
            _print_tasks({t: {**v, "n": (le.get("n") or {}).get(t, "")} for t, v in le["tasks"].items()})
    if token_prune is not None:
        from ..tokens import unpatch

        st = unpatch(model)
        res["token_prune"] = {"spec": a.token_prune, **{k: st[k] for k in ("token_blocks", "token_blocks_dense",
                              "token_block_sparsity") if k in st}}  # fmt: skip
        if not a.json and "token_blocks" in st:
            print(f"token routing {a.token_prune}: {st['token_blocks']:,} of {st['token_blocks_dense']:,} token-blocks "
                  f"computed ({st['token_block_sparsity']:.1%} skipped)")  # fmt: skip
    if a.dynamic_experts:
        from ..structured.experts import dynamic_skipping_stats

        res["dynamic_experts"] = {"beta": a.dynamic_experts, **dynamic_skipping_stats(model)}
        if not a.json:
            st = res["dynamic_experts"]
            print(f"dynamic experts (beta {a.dynamic_experts:g}): skipped {st['skipped']:,} of {st['routed']:,} "
                  f"routed expert evaluations ({st['saved_fraction']:.1%} saved)")
    return res


def cmd_info(a) -> dict[str, Any]:
    from pathlib import Path

    from ..eval import sparsity_summary
    from ..models import load_model

    if str(a.model).lower().endswith(".gguf") and Path(a.model).is_file() and _is_export(a.model):
        from ..export.gguf import describe_gguf, print_gguf

        res = describe_gguf(a.model)
        if not a.json:
            print_gguf(res)
        return res

    model, _ = load_model(a.model)
    s = sparsity_summary(model)
    cfg = model.config
    res = {"model": a.model, "model_type": cfg.model_type, **s}
    try:
        from ..structured.describe import block_widths

        res["blocks"] = block_widths(model)
    except ImportError:
        pass
    if getattr(cfg, "prunekit_armor", None):
        from ..methods.armor import armor_overhead

        res["armor"] = armor_overhead(model)
    if not a.json:
        print(f"{a.model}: {cfg.model_type}, {s['parameters']:,} parameters")
        if "armor" in res:
            o = res["armor"]
            print(f"ARMOR: {o['wrapped_linears']} Linears wrapped as A·(W′⊙M)·B, block {o['block_size']}; wrappers add "
                  f"{o['wrapper_params']:,} parameters ({o['wrapper_over_core_nonzero']:.1%} of the cores' non-zeros, "
                  f"{o['wrapper_over_model']:.1%} of the model)")
        print(f"sparsity: {s['linear_sparsity']:.2%} of all Linear weights, {s['block_linear_sparsity']:.2%} inside decoder blocks")
        for layer in s["linears"]:
            print(f"  {layer['name']:<48} {'x'.join(map(str, layer['shape'])):>11} {layer['sparsity']:>8.2%}")
        for b in res.get("blocks", []):
            print(f"  block {b['index']:>3}: {b}")
    return res


def _is_export(path: str) -> bool:
    """A ``.gguf`` is described as a file (what llama.cpp reads) when the exporter is installed."""
    import importlib.util

    return importlib.util.find_spec("gguf") is not None and importlib.util.find_spec("prunekit.export.gguf") is not None


def cmd_ls(a) -> dict[str, Any]:
    from ..methods import METHODS
    from ..structured import STRUCTURED_METHODS

    methods = {n: getattr(METHODS.get(n), "summary", "") for n in METHODS.names()}
    methods.update({n: "structured: " + (getattr(STRUCTURED_METHODS.get(n), "summary", "") or "")
                    for n in STRUCTURED_METHODS.names()})  # fmt: skip
    methods["ftp"] = "tokens: per-block routers let tokens skip blocks (--token-sparsity S; the folder loads with routing)"
    patterns = {"unstructured": "per output row (magnitude: per matrix)", "unstructured:layer": "per matrix",
                "N:M": "keep N of every M consecutive inputs, e.g. 2:4, 4:8"}  # fmt: skip
    sink = io.StringIO() if a.json else None
    with contextlib.redirect_stdout(sink) if sink else contextlib.nullcontext():
        _print_ls(a, methods, patterns)
    from ..models.discovery import family_support

    return {"methods": list(methods), "patterns": patterns, "families": family_support(),
            "allocations": {n: s for n, (s, _) in _allocations().items()},
            "refiners": {n: s for n, (s, _) in _refiners().items()}}  # fmt: skip


def _settings_line(schema: dict) -> str:
    return ", ".join(f"{n}={s.default}" if s.default not in (None, "") else n for n, s in schema.items()) or "no settings"


def _allocations() -> dict[str, tuple[str, str]]:
    """Per-layer sparsity allocators (``--allocation NAME --alloc-set K=V``): summary, settings."""
    from ..allocation import ALLOCATORS
    from ..settings import schema_of

    return {n: (getattr(ALLOCATORS.get(n), "summary", ""), _settings_line(schema_of(ALLOCATORS.get(n))))
            for n in ALLOCATORS.names()}  # fmt: skip


def _refiners() -> dict[str, tuple[str, str]]:
    """Mask refiners any unstructured/N:M method takes (``--set refine=NAME --set refine_K=V``)."""
    from ..methods.dsnot import REFINERS
    from ..settings import schema_of

    return {n: (getattr(cls, "summary", "") or n, _settings_line({f"refine_{k}": v for k, v in schema_of(cls).items()}))
            for n, cls in REFINERS.items()}  # fmt: skip


def _print_ls(a, methods: dict, patterns: dict) -> None:
    from ..data import SOURCE_KINDS
    from ..models import ALIASES

    print("methods:")
    for n, s in methods.items():
        print(f"  {n:<14} {s}")
    print("patterns:")
    for n, s in patterns.items():
        print(f"  {n:<20} {s}")
    print("allocations (--allocation NAME, --alloc-set KEY=VALUE):")
    for n, (summ, sets) in _allocations().items():
        print(f"  {n:<14} {summ}; settings: {sets}")
    print("mask refiners (--set refine=NAME, --set refine_KEY=VALUE; unstructured/N:M methods):")
    for n, (summ, sets) in _refiners().items():
        print(f"  {n:<14} {summ}; settings: {sets}")
    print("data sources:")
    for n, s in SOURCE_KINDS.items():
        print(f"  {n:<20} {s}")
    from ..models.discovery import family_support

    fams = family_support()
    print("model families (tested; any other causal LM with repeated decoder blocks works unstructured/N:M):")
    for f in fams:
        what = [k for k in ("unstructured", "nm", "moe") if f.get(k)] + (["structured"] if f.get("structured") else [])
        print(f"  {f['family']:<14} blocks: {f.get('blocks', '?'):<10} {', '.join(w.replace('nm', 'N:M') for w in what)}")
    print("model aliases: " + ", ".join(ALIASES))
    if getattr(a, "guide", False):
        from ..guide import guide_text

        print()
        print(guide_text())


def cmd_demo(a) -> dict[str, Any]:
    from ..demo import run_demo

    return run_demo(a)


def _quiet_transformers() -> None:
    """Our own progress bars and messages only: keep stderr for the one-line error."""
    import warnings

    warnings.filterwarnings("ignore", message=".*(Converting|gguf|GGUF).*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|torch)\b.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        import transformers.modeling_gguf_pytorch_utils as gguf_utils  # plain tqdm, not the above

        gguf_utils.tqdm = lambda it, *a, **k: it
    except Exception:  # pragma: no cover
        pass


def _run(a) -> dict[str, Any]:
    from ..guide import cmd_recommend
    from ..recovery.cli import cmd_recover

    handlers = {"prune": cmd_prune, "eval": cmd_eval, "info": cmd_info, "ls": cmd_ls, "demo": cmd_demo,
                "recommend": cmd_recommend, "recover": cmd_recover}  # fmt: skip
    _check_launcher(a)
    room = getattr(a, "_handler", None)
    return room(a) if room is not None else handlers[a.cmd](a)


_SIGNALLED: list[int] = []  # signals received during this run (a library may turn the exception into its own)


def _on_sigterm(signum, frame) -> None:
    _SIGNALLED.append(signum)
    raise Terminated()


def _on_sigint(signum, frame) -> None:
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt()


def _raise_if_signalled() -> None:
    """A signal whose exception a library swallowed (a ``__del__``, an import hook) still stops the run."""
    import signal

    if _SIGNALLED:
        raise KeyboardInterrupt() if _SIGNALLED[0] == signal.SIGINT else Terminated()


def _unraisable(hook):
    def quiet(u) -> None:  # our own signal exceptions raised inside a __del__: no traceback
        if _SIGNALLED and isinstance(u.exc_value, KeyboardInterrupt):
            return
        hook(u)

    return quiet


def _signal_exit(default: int | None = None) -> int | None:
    import signal

    signum = _SIGNALLED[0] if _SIGNALLED else default
    if signum is None:
        return None
    if signum == signal.SIGHUP:
        return _fail("hung up (SIGHUP: the terminal closed); nothing was written", EXIT_SIGHUP)
    if signum == signal.SIGTERM:
        return _fail("terminated (SIGTERM); nothing was written", EXIT_SIGTERM)
    return _fail("interrupted (SIGINT); nothing was written", EXIT_SIGINT)


def _stdout_closed() -> int:
    """The reader of our stdout went away (``prunekit ls | head``): stop quietly, as `yes | head` does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    except (OSError, ValueError):
        pass
    return EXIT_PIPE


def _fail(msg: str, code: int) -> int:
    if code == EXIT_INTERNAL or _rank() == 0:  # under torchrun every rank fails alike: say it once
        print(f"prunekit: {msg}", file=sys.stderr, flush=True)
    return code


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def _world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1


def _check_launcher(a) -> None:
    """Under torchrun only a streamed prune splits its work; any other writer would run whole on
    every rank and race for the same --out."""
    world = _world_size()
    if world > 1 and getattr(a, "out", None) is not None and not getattr(a, "stream", False):
        raise ConfigError(f"`{a.cmd}` under torchrun ({world} ranks) would run whole on every rank and race for --out: "
                          + ("add --stream (each rank then forwards its share of the calibration windows and rank 0 writes)"
                             if a.cmd == "prune" else "run it as one process, without torchrun"))  # fmt: skip


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 130 SIGINT, 143 SIGTERM, 1 a bug)."""
    import signal

    logging.basicConfig(level=os.environ.get("PRUNEKIT_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    debug = bool(os.environ.get("PRUNEKIT_DEBUG"))
    from ..export.hf import OutputSlot

    old_term = old_int = old_hup = None
    _SIGNALLED.clear()
    old_hook, old_check = sys.unraisablehook, OutputSlot.pre_commit
    sys.unraisablehook = _unraisable(old_hook)
    OutputSlot.pre_commit = staticmethod(_raise_if_signalled)
    try:
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
        old_hup = signal.signal(signal.SIGHUP, _on_sigterm) if hasattr(signal, "SIGHUP") else None
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            old_int = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread: leave the handlers alone
        pass
    try:
        a = build_parser().parse_args(argv)
        _quiet_transformers()
        res = _run(a)
        _raise_if_signalled()
        if getattr(a, "json", False):
            print(json.dumps(res, default=str))
        return 0
    except PrunekitError as e:  # (a signal that a library turned into a load error is still a signal)
        return _signal_exit() or _fail(f"error: {_one_line(e)}", EXIT_USAGE)
    except Terminated:
        return _signal_exit(signal.SIGTERM)
    except KeyboardInterrupt:
        return _signal_exit(signal.SIGINT)
    except BrokenPipeError:
        return _stdout_closed()
    except MemoryError:
        return _fail("error: out of memory: use fewer --nsamples, a smaller --batch-size or --seqlen", EXIT_USAGE)
    except OSError as e:  # an input vanished or became unreadable mid-run
        from ..export.hf import os_reason

        where = f"{e.filename}: " if e.filename else ""
        return _signal_exit() or _fail(f"error: {where}{os_reason(e)}", EXIT_USAGE)
    except Exception as e:
        if _SIGNALLED:
            return _signal_exit()
        if debug:
            raise
        return _fail(
            f"error: internal error ({type(e).__name__}: {_one_line(e)[:300]}); please report it "
            f"with the traceback that PRUNEKIT_DEBUG=1 prints",
            EXIT_INTERNAL,
        )
    finally:
        sys.unraisablehook, OutputSlot.pre_commit = old_hook, old_check
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if old_hup is not None:
            signal.signal(signal.SIGHUP, old_hup)
        if old_int is not None:
            signal.signal(signal.SIGINT, old_int)


def entry() -> None:
    """Console-script entry point: ``main()``, then exit without a second signal spoiling it."""
    import signal

    code = main()
    if code in (EXIT_SIGINT, EXIT_SIGTERM, EXIT_SIGHUP, EXIT_PIPE):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while exiting changes nothing
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # the job was already cleaned up; skip interpreter teardown
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
