"""Prune a model with llm-compressor (unstructured or N:M sparsity) for the benchmark harness.

Run by the python of the ``llmcompressor`` peer venv (``benchmarks/venvs.py``), never by the
project's own; it does not import prunekit.

    python benchmarks/peers/llmcompressor_run.py --model DIR --calib ids.pt \
        --method magnitude|wanda|sparsegpt --sparsity 0.5 --pattern unstructured|N:M \
        --out OUT_DIR --result result.json [--threads N] [--max-layers N]

Every nn.Linear inside the decoder blocks is pruned (lm_head never): Wanda and SparseGPT go
through ``llmcompressor.oneshot`` with ``WandaPruningModifier`` / ``SparseGPTModifier`` whose
``targets`` name those Linears one by one.  llm-compressor has no one-shot magnitude pruning
(its ``MagnitudePruningModifier`` masks only during training steps, so under ``oneshot`` it
prunes nothing), so magnitude is applied here: per matrix, the smallest |W| are zeroed, or for
N:M the M-N smallest |W| of every M consecutive inputs of each row.

The pruned model is saved as a plain dense Hugging Face folder (safetensors with explicit zeros,
no compressed-tensors format, no quantization/sparsity config), which plain transformers loads.
"""

from __future__ import annotations

import importlib.metadata
import sys
import time

import torch
from torch import nn

from _common import (
    base_parser,
    check_dense_checkpoint,
    decoder_linears,
    load_calib,
    log,
    parse_pattern,
    peak_rss_mb,
    save_tokenizer,
    setup_threads,
    strip_compression_config,
    write_result,
    zero_fraction,
)

TOOL = "llm-compressor"
MAGNITUDE_NOTE = "magnitude applied by harness: llm-compressor has no one-shot magnitude"


def tool_version() -> str:
    try:
        return importlib.metadata.version("llmcompressor")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@torch.no_grad()
def magnitude_prune_(linears: dict[str, nn.Linear], sparsity: float,
                     nm: tuple[int, int] | None) -> None:
    """Zero the smallest-|W| weights of each matrix in place (per matrix, or per N:M group)."""
    for name, mod in linears.items():
        w = mod.weight
        if nm is None:
            k = int(round(sparsity * w.numel()))
            if k <= 0:
                continue
            flat = w.view(-1)
            score = flat.abs()
            # Exactly k zeros even with many tied magnitudes (dequantized weights have few
            # distinct values): everything below the k-th smallest |W|, then ties by position.
            thr = torch.kthvalue(score, k).values
            below = score < thr
            need = k - int(below.sum())
            ties = torch.nonzero(score == thr).flatten()[:need]
            flat[below] = 0
            flat[ties] = 0
        else:
            n, m = nm
            rows, cols = w.shape
            if cols % m:
                raise SystemExit(f"{name}: {cols} input features not divisible by M={m}")
            groups = w.view(rows, cols // m, m)
            # indices of the M-N smallest |W| in each group of M consecutive inputs
            drop = torch.topk(groups.abs(), m - n, dim=-1, largest=False).indices
            groups.scatter_(-1, drop, 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.splitlines()[0], ["magnitude", "wanda", "sparsegpt"])
    ap.add_argument("--pattern", default="unstructured",
                    help="'unstructured' or N:M, e.g. 2:4 (N kept of every M inputs)")
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    nm = parse_pattern(args.pattern)
    if nm is None and not 0.0 <= args.sparsity < 1.0:
        raise SystemExit("--sparsity must be in [0, 1)")
    if nm is not None:
        implied = 1 - nm[0] / nm[1]
        if abs(implied - args.sparsity) > 1e-6:
            log(f"pattern {args.pattern} fixes sparsity at {implied:.4f}; "
                f"--sparsity {args.sparsity} is ignored")
        sparsity = implied
    else:
        sparsity = args.sparsity

    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

    cfg = AutoConfig.from_pretrained(str(args.model))
    if getattr(cfg, "quantization_config", None):
        log("the model folder has a quantization_config: give a plain float32 HF folder")
        return 2
    calib = load_calib(args.calib)
    nsamples, seqlen = calib.shape

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32)
    model.eval()
    log(f"model loaded in {time.perf_counter() - t0:.1f} s")
    linears = decoder_linears(model, args.max_layers)
    names = list(linears)
    log(f"{len(names)} decoder Linears targeted ({names[0]} ... {names[-1]})")

    result = {
        "tool": TOOL,
        "tool_version": tool_version(),
        "method": args.method,
        "pattern": args.pattern,
        "sparsity": sparsity,
        "nsamples": int(nsamples),
        "seqlen": int(seqlen),
        "targeted_linears": len(names),
    }

    if args.method == "magnitude":
        t0, c0 = time.perf_counter(), time.process_time()
        magnitude_prune_(linears, sparsity, nm)
        prune_wall_s = time.perf_counter() - t0
        prune_cpu_s = time.process_time() - c0
        result["note"] = MAGNITUDE_NOTE
        result["calib_used"] = False  # magnitude needs no calibration data
    else:
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
        from torch.utils.data import DataLoader
        from transformers import AutoTokenizer

        mask_structure = "0:0" if nm is None else f"{nm[0]}:{nm[1]}"
        cls = SparseGPTModifier if args.method == "sparsegpt" else WandaPruningModifier
        modifier = cls(sparsity=sparsity, mask_structure=mask_structure,
                       targets=names, ignore=["re:.*lm_head"])
        result["modifier"] = {"class": cls.__name__, "mask_structure": mask_structure,
                              **{k: getattr(modifier, k) for k in
                                 ("block_size", "dampening_frac") if hasattr(modifier, k)}}
        # One sample per batch, exactly the harness's ids: no shuffling, padding or truncation.
        samples = [{"input_ids": row, "attention_mask": torch.ones_like(row)} for row in calib]
        loader = DataLoader(samples, batch_size=1, shuffle=False)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(args.model))
        except Exception:  # noqa: BLE001 - oneshot needs none when handed a DataLoader
            tokenizer = None
        t0, c0 = time.perf_counter(), time.process_time()
        model = oneshot(model=model, recipe=modifier, dataset=loader, processor=tokenizer,
                        num_calibration_samples=int(nsamples), max_seq_length=int(seqlen),
                        output_dir=None)
        prune_wall_s = time.perf_counter() - t0
        prune_cpu_s = time.process_time() - c0
        result["calib_used"] = True
        linears = decoder_linears(model, args.max_layers)

    result["prune_wall_s"] = round(prune_wall_s, 2)
    result["prune_cpu_s"] = round(prune_cpu_s, 2)  # all threads of this process
    result["achieved_sparsity"] = round(zero_fraction(linears), 6)
    log(f"pruned in {prune_wall_s:.1f} s, achieved sparsity {result['achieved_sparsity']:.4f}")

    # Save with transformers' own save_pretrained: oneshot wraps model.save_pretrained to write
    # compressed-tensors (bitmask) checkpoints, which plain transformers cannot load.
    args.out.mkdir(parents=True, exist_ok=True)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    PreTrainedModel.save_pretrained(model, str(args.out))
    removed = strip_compression_config(args.out)
    if removed:
        log(f"stripped {removed} from config.json")
    save_tokenizer(args.model, args.out)
    check_dense_checkpoint(args.out, [f"{n}.weight" for n in names])

    result["peak_rss_mb"] = peak_rss_mb()
    write_result(args.result, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
