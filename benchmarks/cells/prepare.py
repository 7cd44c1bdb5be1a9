"""Benchmark cell: make the shared inputs once (dense float32 HF folder, calibration ids, eval ids).

    python benchmarks/cells/prepare.py --model SPEC --dense DIR \
        [--calib-source SRC --nsamples N --seqlen L --seed S --calib-out FILE.pt] \
        [--eval-source SRC --eval-out FILE.pt]

* ``--dense``: ``prunekit.load_model(SPEC)`` (a GGUF is dequantized; its quantization marker is
  dropped) saved as a plain float32 Hugging Face folder; every tool starts from this folder.
* ``--calib-out``: ``prunekit.calibration_windows`` with the dense folder's tokenizer, saved as a
  LongTensor ``[nsamples, seqlen]``; the very same ids are handed to every tool.
* ``--eval-out``: ``prunekit.eval_token_ids`` (LongTensor ``[1, N]``).
Each output gets a ``.json`` sidecar describing it. Existing outputs are kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _util import log, quiet, write_json


def make_dense(spec: str, out: Path) -> dict:
    import prunekit as pk

    t0 = time.perf_counter()
    model, tok = pk.load_model(spec, dtype="float32")
    load_s = time.perf_counter() - t0
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    meta = {"source_model": spec, "dtype": "float32", "params": pk.parameter_count(model),
            "load_s": round(load_s, 1)}
    pk.save_pretrained_atomic(model, tok, out, {"benchmark_dense": meta}, overwrite=True)
    cfg = json.loads((out / "config.json").read_text())
    for k in ("quantization_config", "compression_config", "sparsity_config"):
        cfg.pop(k, None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    log(f"dense float32 folder written to {out} ({load_s:.1f} s to load {spec})")
    return meta


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dense", required=True, type=Path)
    ap.add_argument("--calib-source")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-out", type=Path)
    ap.add_argument("--eval-source")
    ap.add_argument("--eval-out", type=Path)
    args = ap.parse_args()
    quiet()
    import torch

    import prunekit as pk

    if not (args.dense / "config.json").is_file():
        make_dense(args.model, args.dense)
    tok = None

    def tokenizer():
        nonlocal tok
        if tok is None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(args.dense))
        return tok

    if args.calib_out and not args.calib_out.is_file():
        t0 = time.perf_counter()
        src = pk.load_source(args.calib_source, "calib")
        ids = pk.calibration_windows(src, tokenizer(), args.nsamples, args.seqlen, args.seed)
        lens = [len(x) for x in tokenizer()(src.documents, add_special_tokens=False,
                                            verbose=False)["input_ids"]]
        long_docs = sum(n > args.seqlen for n in lens)
        meta = {
            "source": args.calib_source, "description": src.description,
            "documents": len(src.documents), "documents_longer_than_seqlen": long_docs,
            "drawn_from": ("documents longer than seqlen" if long_docs and len(lens) > 1
                           else "the joined text"),
            "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed,
            "tokenize_s": round(time.perf_counter() - t0, 1),
        }
        torch.save(ids, args.calib_out)
        write_json(args.calib_out.with_suffix(".json"), meta)
        log(f"calibration ids {tuple(ids.shape)} -> {args.calib_out} ({meta['drawn_from']}: "
            f"{long_docs} of {len(lens)} documents)")
    if args.eval_out and not args.eval_out.is_file():
        src = pk.load_source(args.eval_source, "eval")
        ids = pk.eval_token_ids(src, tokenizer())
        torch.save(ids, args.eval_out)
        write_json(args.eval_out.with_suffix(".json"), {
            "source": args.eval_source, "description": src.description, "tokens": ids.shape[1]})
        log(f"evaluation ids {tuple(ids.shape)} -> {args.eval_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
