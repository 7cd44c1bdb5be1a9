"""``prunekit recover PRUNED --data SOURCE --out DIR``: LoRA recovery, merged, written atomically.

Wiring (in ``prunekit.cli.main``): ``add_recover_parser(sub)`` in ``build_parser`` and
``"recover": cmd_recover`` in the handlers of ``_run``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from ..cli.flags import float_flag, int_flag
from ..cli.flags import note as _note
from ..errors import ConfigError
from ..settings import schema_of

def add_recover_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``prunekit recover PRUNED --data SOURCE --out DIR [...]`` to the CLI's subparsers."""
    from .config import RecoveryConfig

    d = {n: s.default for n, s in schema_of(RecoveryConfig).items()}
    p = subparsers.add_parser("recover", help="recover a pruned model with (mask-preserving) LoRA, merged")
    p.add_argument("pruned", help="a pruned model folder (or any MODEL)")
    p.add_argument("--data", required=True, action="append",
                   help="training SOURCE (e.g. ../shared/data/c4-sample/) or gsm8k:PATH; repeat to mix; never the eval text")
    p.add_argument("--out", "-o", required=True, help="output folder (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--tokens", type=int_flag(2, 1 << 40), default=d["tokens"], help=f"training tokens (default {d['tokens']})")
    p.add_argument("--seqlen", type=int_flag(2, 1 << 20), default=d["seqlen"], help=f"tokens per window (default {d['seqlen']})")
    p.add_argument("--batch-size", type=int_flag(1, 1 << 16), default=d["batch_size"], help=f"windows per step (default {d['batch_size']})")
    p.add_argument("--r", type=int_flag(1, 4096), default=d["r"], help=f"LoRA rank (default {d['r']})")
    p.add_argument("--alpha", type=float_flag(0, 1e6), default=d["alpha"], help=f"LoRA alpha (default {d['alpha']:g})")
    p.add_argument("--dropout", type=float_flag(0, 0.99, lo_open=False), default=d["dropout"], help=f"LoRA dropout (default {d['dropout']:g})")
    p.add_argument("--lr", type=float_flag(0, 1), default=d["lr"], help=f"learning rate (default {d['lr']:g})")
    p.add_argument("--adapter", choices=("lora", "full"), default=d["adapter"],
                   help="lora (default: adapters, merged) or full (train the block Linears' weights; zeros kept)")
    p.add_argument("--distill", type=float_flag(0, 1, lo_open=False), default=d["distill"],
                   help="weight of distillation from the dense model (KL to its next-token distribution); 0: off, 1: KL only")
    p.add_argument("--temperature", type=float_flag(0, 100), default=d["temperature"], help="distillation temperature (default 1)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=d["precision"],
                   help="fp32 (default, exact) or bf16: bfloat16 autocast, float32 weights (~2.5x faster on AVX512-BF16 CPUs and GPUs)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in the backward pass: about half the peak memory, ~20%% more time per step")
    p.add_argument("--windows", choices=("random", "packed"), default=d["windows"],
                   help="random (default): random windows from documents longer than --seqlen; "
                        "packed: all documents end to end with EOS, each token once per epoch")
    p.add_argument("--seed", type=int_flag(0, 2**63 - 1), default=d["seed"], help="data order / LoRA init seed (default 0)")
    p.add_argument("--mask", choices=("auto", "on", "off"), default=d["mask"], help="masked LoRA (default auto: when the model is sparse)")
    p.add_argument("--max-seconds", type=float_flag(0, 1e8, lo_open=False), default=d["max_seconds"],
                   help="time budget of training in seconds (0: off): the learning rate decays with time too, "
                        "and training stops when it is spent, e.g. 3600 for one hour")
    p.add_argument("--checkpoint-every", type=int_flag(1, 1 << 40), default=d["checkpoint_every"], help="steps between checkpoints")
    p.add_argument("--select", choices=("none", "random", "paser"), default="none",
                   help="train on a subset of the --data documents: random or PASER (needs --budget)")
    p.add_argument("--budget", type=int_flag(1, 1 << 40), default=None, help="samples to select with --select")
    p.add_argument("--paser-signal", choices=("jsd", "nll-ratio"), default="nll-ratio",
                   help="PASER's degradation signal: nll-ratio (default: the relative NLL increase, beat random "
                        "selection on both measured seeds) or jsd (the paper's; lost to random on both)")
    p.add_argument("--paser-embedder", choices=("auto", "minilm", "model"), default="auto",
                   help="PASER's sentence embeddings: auto (default: all-MiniLM-L6-v2 when `prunekit[paser]` is installed, "
                        "else the model's own mean-pooled hidden states), minilm (require it) or model")
    p.add_argument("--pool-limit", type=int_flag(1, 1 << 40), default=None, help="at most N documents from each --data (seeded)")
    p.add_argument("--dense", default=None,
                   help="the dense model for --select paser and --distill (default: the source in prunekit.json)")
    p.add_argument("--resume", action="store_true", help="resume from the checkpoint an interrupted run left beside --out")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    return p


def checkpoint_dir_for(out: Path) -> Path:
    """Where an interrupted ``recover --out OUT`` keeps its checkpoint: ``.OUT.recover-checkpoint``."""
    return out.parent / f".{out.name}.recover-checkpoint"


def _input_meta(src) -> dict[str, Any] | None:
    if src.kind != "folder":
        return None
    f = Path(src.path) / "prunekit.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else None
    except (OSError, ValueError):
        _note(f"{f} is not readable JSON; it is not carried over")
        return None


def _dense_spec(a: argparse.Namespace, in_meta: dict[str, Any] | None) -> str:
    if a.dense:
        return a.dense
    src = (in_meta or {}).get("source_model") or {}
    spec = src.get("path") if src.get("kind") in ("folder", "gguf") and src.get("spec") not in _aliases() else src.get("spec")
    if not spec:
        why = "--select paser compares the pruned model with" if a.select == "paser" else "--distill learns from"
        raise ConfigError(f"{why} the dense one, and {a.pruned} does not name it: pass --dense MODEL")
    return str(spec)


def _aliases() -> tuple[str, ...]:
    from ..models.loading import ALIASES

    return tuple(ALIASES)


def _load_dense(a: argparse.Namespace, dense_spec: str, why: str):
    from ..models import load_model

    if not (a.quiet or a.json):
        print(f"loading the dense model {dense_spec} for {why} ...", flush=True)
    return load_model(dense_spec)[0]


def _select(a: argparse.Namespace, docs: list[str], model, tok, dense):
    from .paser import paser_select, random_select

    if a.select == "random":
        return random_select(len(docs), a.budget, a.seed)
    model.eval()
    return paser_select(docs, tok, model, dense, a.budget, seed=a.seed, progress=not a.quiet, signal=a.paser_signal,
                        embedder=a.paser_embedder)


def cmd_recover(a: argparse.Namespace) -> dict[str, Any]:
    """Run ``prunekit recover``: load, recover, write the folder; returns the JSON summary."""
    from ..data import load_source
    from ..eval import sparsity_summary
    from ..export import OutputSlot, fmt_bytes, versions, write_hf_folder
    from ..models import load_model, resolve_model
    from ..models.loading import estimated_load_bytes, source_info
    from .lora import RecoveryConfig, _require_peft, recover_, recovery_summary

    cfg = RecoveryConfig(
        r=a.r, alpha=a.alpha, dropout=a.dropout, lr=a.lr, tokens=a.tokens, seqlen=a.seqlen,
        batch_size=a.batch_size, seed=a.seed, mask=a.mask, checkpoint_every=a.checkpoint_every,
        distill=a.distill, temperature=a.temperature, adapter=a.adapter, precision=a.precision,
        max_seconds=a.max_seconds, windows=a.windows, grad_checkpointing=a.grad_checkpointing,
    )  # fmt: skip
    _require_peft()
    if a.select != "none" and a.budget is None:
        raise ConfigError(f"--select {a.select} needs --budget N (the number of samples to train on)")
    if a.select == "none" and a.budget is not None:
        raise ConfigError(f"--budget {a.budget} sets how many samples --select picks: add --select paser (or drop --budget)")
    src = resolve_model(a.pruned)
    from ..models.loading import check_hub_reachable

    check_hub_reachable(src)
    in_meta = _input_meta(src)
    dense_spec = _dense_spec(a, in_meta) if a.select == "paser" or cfg.distill > 0 else None
    if len(a.data) == 1 and a.select == "none" and not a.data[0].lower().startswith("gsm8k:"):
        data: Any = load_source(a.data[0], "calib")
    else:
        from .paser import pool_documents

        data = pool_documents(a.data, a.pool_limit, a.seed)
    with OutputSlot(a.out, a.overwrite, protect=[src.path] if src.kind != "hub" else [],
                    need_bytes=estimated_load_bytes(src), notify=_note) as slot:  # fmt: skip
        ckpt = checkpoint_dir_for(slot.target)
        if ckpt.exists() and not a.resume:
            shutil.rmtree(ckpt, ignore_errors=True)
            _note(f"removed {ckpt}, a checkpoint of an earlier run (pass --resume to continue one)")
        elif a.resume and not ckpt.exists():
            _note(f"no checkpoint at {ckpt}: starting from the beginning")
        if not (a.quiet or a.json):
            print(f"loading {a.pruned} ...", flush=True)
        model, tok = load_model(a.pruned)
        dense = None
        if dense_spec is not None:
            uses = [u for u, on in (("PASER", a.select == "paser"), ("distillation", cfg.distill > 0)) if on]
            dense = _load_dense(a, dense_spec, " and ".join(uses))
        selection = _select(a, data, model, tok, dense) if a.select != "none" else None
        if selection is not None:
            data = [data[i] for i in selection.indices]
        report = recover_(model, tok, data, cfg, progress=not a.quiet, checkpoint_dir=ckpt,
                          teacher=dense if cfg.distill > 0 else None)  # fmt: skip
        del dense
        summary = sparsity_summary(model)
        meta = {
            "prunekit_format": 1,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source_model": source_info(src, model),
            "pruned": in_meta,
            "recovery": {**report.to_dict(), "source": a.data,
                         "selection": selection.to_dict() if selection is not None else None},
            "measured": {k: summary[k] for k in ("linear_sparsity", "block_linear_sparsity", "parameters")},
            "versions": versions(),
        }
        out = slot.commit(lambda tmp: write_hf_folder(model, tok, tmp, meta))
    shutil.rmtree(ckpt, ignore_errors=True)
    res = {
        "model": a.pruned, "out": str(out), "data": report.data, "mode": report.mode, "tokens": report.tokens,
        "steps": report.steps, "first_loss": report.first_loss, "final_loss": report.final_loss,
        "seconds": report.seconds, "resumed_from_step": report.resumed_from_step,
        "train_seconds": report.train_seconds, "time_capped": report.time_capped,
        "block_linear_sparsity": summary["block_linear_sparsity"],
        "selection": selection.to_dict() if selection is not None else None,
    }  # fmt: skip
    if not a.json:
        print(recovery_summary(report))
        from ..eval import model_size_bytes

        print(f"saved {out} ({fmt_bytes(model_size_bytes(out))})")
    return res
