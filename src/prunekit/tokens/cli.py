"""``prunekit tokens MODEL --method fastv --keep 0.25 --layer 2 --prompt TEXT|--data SOURCE`` and
``prunekit ftp-train MODEL --calib SOURCE --sparsity 0.3 --out DIR`` (a model folder that
``prunekit.load`` returns with the routing attached; ``--out FILE.safetensors``: the routers only).

``tokens`` patches the model (one hook, see ``prunekit.tokens``), then either decodes ``--prompt``
greedily (``--check``: also unpatched; same ids? prefill speed-up) or measures perplexity on
``--data`` (routing methods, every position keeps its logits; ``--check``: dense beside it).
Both report what the hook removed per layer and the token-blocks computed vs dense.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..cli.flags import float_flag, int_flag
from ..cli.flags import note as _note
from ..errors import ConfigError, DataError
from .names import ROUTE, SHORTEN



def _blocks(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of block indices (e.g. 3,5,7)") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give block indices >= 0, e.g. 3,5,7")
    return out


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("tokens", help="token pruning inside the model (FastV, Recoverable Compression, FTP routing)")
    p.add_argument("model", help="a causal LM (Llama, Qwen2, Mistral families) or a LLaVA-style folder")
    p.add_argument("--method", choices=(*SHORTEN, *ROUTE), default="fastv")
    p.add_argument("--keep", type=float_flag(0, 1), default=0.25, help="fraction of candidate tokens kept (default 0.25)")
    p.add_argument("--layer", type=int_flag(0, 1 << 16), default=None,
                   help="first decoder layer that sees the kept tokens (fastv/attn-drop: 2, recoverable: 0)")
    p.add_argument("--recovery", choices=("drop", "merge"), default=None, help="what happens to pruned tokens")
    p.add_argument("--routers", default=None, metavar="FILE", help="ftp: routers from `prunekit ftp-train`")
    p.add_argument("--sparsity", type=float_flag(0, 1, lo_open=False), default=0.3, help="random-route: token-block sparsity")
    p.add_argument("--kv", choices=("drop", "keep"), default="drop",
                   help="routing: a skipped token is no key/value in the block (drop) or keeps its K/V (keep)")
    p.add_argument("--blocks", type=_blocks, default=None, metavar="I,J,...", help="block-skip: blocks every token skips")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", default=None, help="decode this prompt greedily with the patch")
    src.add_argument("--data", default=None, metavar="SOURCE", help="perplexity on SOURCE (routing methods)")
    p.add_argument("--max-new-tokens", type=int_flag(1, 1 << 16), default=32, help="default 32")
    p.add_argument("--seqlen", type=int_flag(2, 1 << 20), default=512, help="--data: window length (default 512)")
    p.add_argument("--max-windows", type=int_flag(1, 1 << 20), default=4, help="--data: windows (default 4)")
    p.add_argument("--check", action="store_true", help="also run the unpatched model: same ids / dense perplexity, speed-up")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    p.add_argument("--threads", type=int_flag(0, 1024), default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(_handler=cmd_tokens)

    t = subparsers.add_parser("ftp-train", help="train FTP token routers (one tiny router per block) on calibration text")
    t.add_argument("model")
    t.add_argument("--calib", required=True, metavar="SOURCE", help="calibration text (never the evaluation split)")
    t.add_argument("--sparsity", type=float_flag(0, 1, lo_open=False), default=0.3, help="token-block sparsity (default 0.3)")
    t.add_argument("--nsamples", type=int_flag(1), default=16, help="calibration windows (default 16)")
    t.add_argument("--seqlen", type=int_flag(8), default=512, help="tokens per window (default 512)")
    t.add_argument("--steps", type=int_flag(1, 1 << 20), default=300, help="Adam steps per router (default 300)")
    t.add_argument("--seed", type=int_flag(0, 2**63 - 1), default=0)
    t.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto")
    t.add_argument("--out", required=True, metavar="DIR|FILE.safetensors",
                   help="a model folder with the routing attached (loads with prunekit.load); a name ending in "
                        ".safetensors writes only the routers file (for `prunekit tokens --routers`)")
    t.add_argument("--kv", choices=("drop", "keep"), default="drop",
                   help="folder: the routing the folder attaches (a skipped token is no key/value, or keeps its K/V)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    t.set_defaults(_handler=cmd_ftp_train)
    return p


def _patch_options(a: argparse.Namespace) -> dict[str, Any]:
    if a.method == "ftp":
        if not a.routers:
            raise ConfigError("--method ftp needs --routers FILE (train one with `prunekit ftp-train MODEL --out FILE`)")
        return {"routers": a.routers, "kv": a.kv}
    if a.method == "random-route":
        return {"sparsity": a.sparsity, "kv": a.kv}
    if a.method == "block-skip":
        if a.blocks is None:
            raise ConfigError("--method block-skip needs --blocks I,J,...: the blocks every token skips")
        return {"blocks": a.blocks, "kv": a.kv}
    if a.method == "attn-drop":
        return {"keep": a.keep, "layer": 2 if a.layer is None else a.layer, "kv": a.kv}
    if a.kv != "drop":
        raise ConfigError(f"--kv is for the routing methods ({', '.join(ROUTE)}): --method {a.method} shortens the sequence")
    return {"keep": a.keep, "layer": a.layer, **({"recovery": a.recovery} if a.recovery else {})}


def cmd_tokens(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ..models import load_model
    from . import patch, unpatch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.prompt is not None and not a.prompt.strip():
        raise DataError("--prompt is empty: give some text to continue")
    if a.data is not None and a.method in SHORTEN:
        raise ConfigError(f"--data measures perplexity, which needs every position's logits: --method {a.method} removes "
                          f"positions; use a routing method ({', '.join(ROUTE)}) or --prompt")  # fmt: skip
    if a.routers and a.method != "ftp":
        raise ConfigError("--routers is for --method ftp")
    if a.blocks is not None and a.method != "block-skip":
        raise ConfigError("--blocks is for --method block-skip")
    opts = _patch_options(a)
    if a.data is not None:
        from ..data import load_source

        src = load_source(a.data, "eval")  # a bad source fails before the model loads
    if not a.json:
        print(f"loading {a.model} ...", flush=True)
    model, tok = load_model(a.model, dtype=a.dtype)
    method = a.method
    res: dict[str, Any] = {"model": a.model, "method": method}
    with torch.no_grad():
        if a.prompt is not None:
            ids = tok(a.prompt, return_tensors="pt")["input_ids"]
            gen = dict(max_new_tokens=a.max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
            if a.check:
                t0 = time.perf_counter()
                model(input_ids=ids)
                dense_prefill = time.perf_counter() - t0
                ref = model.generate(ids, **gen)
            patch(model, method=method, **opts)
            try:
                t0 = time.perf_counter()
                model(input_ids=ids)
                prefill = time.perf_counter() - t0
                out = model.generate(ids, **gen)
            finally:
                st = unpatch(model)
            new = out[0, ids.shape[1] :]
            res.update(prompt_tokens=int(ids.shape[1]), text=tok.decode(new, skip_special_tokens=True),
                       ids=new.tolist(), prefill_seconds=prefill)  # fmt: skip
            if a.check:
                res.update(identical_to_unpatched=bool(ref.shape == out.shape and torch.equal(ref, out)),
                           dense_prefill_seconds=dense_prefill,
                           prefill_speedup=dense_prefill / prefill if prefill else 0.0)  # fmt: skip
        else:
            from ..data import eval_token_ids
            from ..eval import perplexity

            ids = eval_token_ids(src, tok)
            if a.check:
                res["dense"] = perplexity(model, ids, seqlen=a.seqlen, max_windows=a.max_windows)
            patch(model, method=method, **opts)
            try:
                res["patched"] = perplexity(model, ids, seqlen=a.seqlen, max_windows=a.max_windows)
            finally:
                st = unpatch(model)
    res["stats"] = st
    if not st.get("removed"):
        _note("the hook removed nothing (keep=1, sparsity 0, or no candidates): the output is the unpatched model's")
    if not a.json:
        if "text" in res:
            print(res["text"])
        for key in ("dense", "patched"):
            if key in res:
                print(f"{key}: perplexity {res[key]['perplexity']:.3f} on {res[key]['windows']} x {res[key]['seqlen']} tokens "
                      f"({res[key]['seconds']:.1f}s)")  # fmt: skip
        removed = ", ".join(f"layer {i}: {r}" for i, r in st["removed"].items()) or "nothing"
        print(f"  removed {removed}; token-blocks {st['token_blocks']} of {st['token_blocks_dense']} "
              f"({100 * st['token_block_sparsity']:.1f}% skipped)")  # fmt: skip
        if a.check and "prefill_speedup" in res:
            print(f"  identical to unpatched: {res['identical_to_unpatched']}; prefill {res['prefill_speedup']:.2f}x")
    return res


def cmd_ftp_train(a: argparse.Namespace) -> dict[str, Any]:
    from ..data import calibration_windows, load_source
    from ..export.hf import atomic_file, check_output_file
    from ..models import load_model
    from . import ftp

    as_file = str(a.out).endswith(".safetensors")
    if as_file:
        out = check_output_file(a.out, a.overwrite, protect=[a.model, a.calib])
    else:
        from ..export.hf import check_output_dir

        out = check_output_dir(a.out, a.overwrite, protect=[a.model, a.calib])
    src = load_source(a.calib, "calib")
    if not a.json:
        print(f"loading {a.model} ...", flush=True)
    model, tok = load_model(a.model, dtype=a.dtype)
    from .hook import decoder_layers

    ftp._check_sparsity(a.sparsity, len(decoder_layers(model)[1]))
    ids = calibration_windows(src, tok, nsamples=a.nsamples, seqlen=a.seqlen, seed=a.seed)
    t0 = time.perf_counter()
    routers = ftp.train(model, ids, ftp.FTPConfig(sparsity=a.sparsity, steps=a.steps, seed=a.seed), progress=not a.quiet)
    if as_file:
        with atomic_file(out, "wb") as fh:
            routers.save(fh)
    else:
        meta = {"method": "ftp", "model": a.model, "calib": a.calib, "nsamples": a.nsamples, "seqlen": a.seqlen,
                "ftp": ftp.describe_config(ftp.FTPConfig(sparsity=a.sparsity, steps=a.steps, seed=a.seed))}  # fmt: skip
        out = ftp.save_routed(model, tok, routers, a.out, meta, kv=a.kv, overwrite=a.overwrite)
    res = {"model": a.model, "out": str(out), "kind": "routers file" if as_file else "folder",
           "sparsity": a.sparsity, "schedule": routers.schedule,
           "nsamples": a.nsamples, "seqlen": a.seqlen, "seconds": time.perf_counter() - t0}  # fmt: skip
    if not a.json:
        print(f"wrote {out}: {len(routers.schedule)} routers, block sparsity {routers.schedule[-1]:.3f} "
              f"(block 0 dense), {res['seconds']:.1f}s")  # fmt: skip
    return res


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def prune_ftp(a: argparse.Namespace) -> dict[str, Any]:
    """``prunekit prune MODEL --method ftp --token-sparsity 0.3 --calib SRC --out DIR``: the prune
    command's flags mapped onto ``ftp-train`` (the folder loads with ``prunekit.load``, routing attached)."""
    extra = [f for f in ("pattern", "sparsity", "recipe", "allocation", "experts", "then", "eval_data", "eval_tasks")
             if getattr(a, f, None)] + [f for f in ("stream", "recover", "resume") if getattr(a, f, False)]  # fmt: skip
    if extra or getattr(a, "set", None) or getattr(a, "include", None) or getattr(a, "exclude", None):
        bad = (extra or ["set/include/exclude"])[0].replace("_data", "").replace("_", "-")
        raise ConfigError(f"--method ftp trains token routers and takes --token-sparsity, --calib, --nsamples, "
                          f"--seqlen, --seed, --dtype: drop --{bad}")  # fmt: skip
    t = argparse.Namespace(
        model=a.model, calib=a.calib or "builtin", sparsity=0.3 if a.token_sparsity is None else a.token_sparsity,
        nsamples=a.nsamples or 16, seqlen=a.seqlen or 512, steps=300, seed=a.seed or 0,
        dtype=_DTYPES.get(a.dtype, a.dtype) or "auto", out=a.out, kv="drop", overwrite=a.overwrite,
        quiet=a.quiet, json=a.json,
    )  # fmt: skip
    if str(t.out).endswith(".safetensors"):
        raise ConfigError(f"prune --out {a.out}: give a folder (ftp-train --out FILE.safetensors writes the routers only)")
    return cmd_ftp_train(t)
