"""Structured width pruning with Torch-Pruning for the benchmark harness.

Run by the python of the ``torch-pruning`` peer venv (``benchmarks/venvs.py``), never by the
project's own; it does not import prunekit.

    python benchmarks/peers/torchpruning_run.py --model DIR --calib ids.pt \
        --method magnitude|taylor --sparsity 0.25 --out OUT_DIR --result result.json \
        [--pattern width] [--taylor-samples N] [--threads N]

What is removed, the same in every decoder block (no global ranking, no recovery training):
  * whole query heads, the same number from each KV group (grouped-query attention; the K/V
    projections are kept, as Torch-Pruning does for GQA), head_dim unchanged;
  * MLP channels (gate/up outputs and down inputs).
The residual width (hidden_size), embeddings and lm_head are never pruned.  Under GQA at least
two query heads per KV group are kept: Torch-Pruning 1.6.1 silently skips head pruning when
the query heads would fall to the KV-head count.

``--sparsity`` is the fraction of decoder-block parameters to remove.  Heads are removed in
steps of one per KV group, so the runner picks ``round(sparsity * q_heads_per_kv_group)`` heads
per group and then the MLP width that brings the block parameter count closest to the target;
the result JSON reports the fraction actually removed.

Importance: ``magnitude`` is Torch-Pruning's group L2 magnitude (``GroupMagnitudeImportance``),
``taylor`` its first-order Taylor score (``GroupTaylorImportance``) from the gradient of the
language-model loss summed over the calibration windows.  The pruner is
``torch_pruning.pruner.BasePruner`` with ``num_heads``/``prune_num_heads=True``/
``prune_head_dims=False`` and per-module pruning ratios.  Attention runs in eager mode while
pruning (Torch-Pruning's graph tracing fails on SDPA with GQA).

The output is a plain Hugging Face folder whose config (num_attention_heads,
num_key_value_heads, head_dim, intermediate_size) matches the pruned shapes, so
``AutoModelForCausalLM.from_pretrained`` reloads it; the runner checks that before it ends.
"""

from __future__ import annotations

import importlib.metadata
import math
import sys
import time

import torch
from torch import nn

from _common import (
    base_parser,
    decoder_blocks,
    load_calib,
    log,
    peak_rss_mb,
    save_tokenizer,
    setup_threads,
    strip_compression_config,
    write_result,
)

TOOL = "torch-pruning"
ATTN_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")


def tool_version() -> str:
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def find_parts(block: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The attention and MLP submodules of a Llama-style decoder block."""
    attn = mlp = None
    for _, mod in block.named_modules():
        if attn is None and all(isinstance(getattr(mod, n, None), nn.Linear) for n in ATTN_NAMES):
            attn = mod
        if mlp is None and all(isinstance(getattr(mod, n, None), nn.Linear) for n in MLP_NAMES):
            mlp = mod
    if attn is None or mlp is None:
        raise SystemExit("decoder block is not Llama-style (needs q/k/v/o_proj and "
                         "gate/up/down_proj Linears)")
    return attn, mlp


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_param_model(block: nn.Module, heads: int, kv_heads: int, inter: int):
    """Returns f(kept_heads, kept_kv_heads, width) -> parameter count of one pruned block."""
    attn, mlp = find_parts(block)
    total = n_params(block)
    q, k, v, o = (getattr(attn, n) for n in ATTN_NAMES)
    g, u, d = (getattr(mlp, n) for n in MLP_NAMES)
    per_head = q.weight.numel() / heads + o.weight.numel() / heads
    per_head += (q.bias.numel() / heads) if q.bias is not None else 0
    per_kv = (k.weight.numel() + v.weight.numel()) / kv_heads
    per_kv += sum(b.numel() for b in (k.bias, v.bias) if b is not None) / kv_heads
    per_ch = (g.weight.numel() + u.weight.numel() + d.weight.numel()) / inter
    per_ch += sum(b.numel() for b in (g.bias, u.bias) if b is not None) / inter
    const = total - per_head * heads - per_kv * kv_heads - per_ch * inter

    def count(kept_heads: int, kept_kv: int, width: int) -> float:
        return const + per_head * kept_heads + per_kv * kept_kv + per_ch * width

    return count, per_ch


def plan(block: nn.Module, cfg, sparsity: float) -> dict:
    """Choose heads to remove per KV group and the MLP width for a target block sparsity."""
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    inter = cfg.intermediate_size
    count, per_ch = block_param_model(block, heads, kv, inter)
    dense = count(heads, kv, inter)
    target_keep = dense * (1.0 - sparsity)
    gqa = heads != kv
    # removable unit: one query head per KV group (GQA) or one head (MHA, K/V go along)
    unit = heads // kv if gqa else heads
    # Torch-Pruning 1.6.1 silently skips the attention group when the query heads would fall to
    # the KV-head count (after its head update the group no longer looks like GQA, the K/V
    # indices are not cleared and its over-pruning check rejects the group). So under GQA at
    # least two query heads per KV group stay, and the MLP width takes up the rest.
    max_h = unit - 2 if gqa else unit - 1
    h_unit = min(max(int(round(sparsity * unit)), 0), max(max_h, 0))

    def width_for(h: int) -> tuple[int, int, int]:
        kept_heads = heads - h * kv if gqa else heads - h
        kept_kv = kv if gqa else kept_heads
        rest = target_keep - count(kept_heads, kept_kv, 0)
        return kept_heads, kept_kv, int(round(rest / per_ch))

    kept_heads, kept_kv, width = width_for(h_unit)
    # if the MLP cannot absorb the rest, move the head count towards feasibility
    while width > inter and h_unit > 0:
        h_unit -= 1
        kept_heads, kept_kv, width = width_for(h_unit)
    while width < 1 and h_unit < max_h:
        h_unit += 1
        kept_heads, kept_kv, width = width_for(h_unit)
    width = min(max(width, 1), inter)
    return {
        "gqa": gqa, "heads": heads, "kv_heads": kv, "intermediate_size": inter,
        "heads_removed_per_unit": h_unit, "max_heads_removed_per_unit": max(max_h, 0),
        "kept_heads": kept_heads, "kept_kv_heads": kept_kv,
        "width": width, "dense_block_params": dense,
        "planned_block_params": count(kept_heads, kept_kv, width),
    }


def taylor_gradients(model: nn.Module, calib: torch.Tensor) -> float:
    """Accumulate d(mean LM loss)/dW over the calibration windows; returns the mean loss."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    n = calib.shape[0]
    for i, row in enumerate(calib):
        out = model(input_ids=row[None], labels=row[None], use_cache=False)
        (out.loss / n).backward()
        loss = out.loss.item()
        total += loss
        log(f"taylor: window {i + 1}/{n} loss {loss:.3f}")
    return total / n


def main(argv: list[str] | None = None) -> int:
    ap = base_parser(__doc__.splitlines()[0], ["magnitude", "taylor"])
    ap.add_argument("--pattern", default="width", choices=["width", "structured"],
                    help="only structured width pruning is supported (for a uniform CLI)")
    ap.add_argument("--taylor-samples", type=int, default=0,
                    help="calibration windows used for the Taylor gradient (0: all)")
    args = ap.parse_args(argv)
    if args.max_layers:
        raise SystemExit("--max-layers is not supported here: uniform width pruning must cover "
                         "every block for the saved config to describe the model")
    if not 0.0 <= args.sparsity < 1.0:
        raise SystemExit("--sparsity must be in [0, 1)")
    setup_threads(args.threads)

    import torch_pruning as tp
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(args.model))
    if getattr(cfg, "quantization_config", None):
        log("the model folder has a quantization_config: give a plain float32 HF folder")
        return 2
    calib = load_calib(args.calib)
    nsamples, seqlen = calib.shape

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32,
                                                 attn_implementation="eager")
    model.config.use_cache = False
    log(f"model loaded in {time.perf_counter() - t0:.1f} s")
    cfg = model.config
    if getattr(cfg, "head_dim", None) is None:
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    head_dim = cfg.head_dim
    _, blocks = decoder_blocks(model)
    parts = [find_parts(b) for b in blocks]
    p = plan(blocks[0], cfg, args.sparsity)
    log(f"plan: heads {p['heads']}->{p['kept_heads']}, kv {p['kv_heads']}->"
        f"{p['kept_kv_heads']}, MLP {p['intermediate_size']}->{p['width']}")
    dense_params = sum(x.numel() for x in model.parameters())

    result = {
        "tool": TOOL,
        "tool_version": tool_version(),
        "method": args.method,
        "pattern": "width",
        "sparsity": args.sparsity,
        "nsamples": int(nsamples),
        "seqlen": int(seqlen),
    }

    # --- everything from here to the pruner's step is the timed pruning call ---
    t0, c0 = time.perf_counter(), time.process_time()
    if args.method == "taylor":
        used = calib if args.taylor_samples <= 0 else calib[: args.taylor_samples]
        result["taylor_samples"] = int(used.shape[0])
        result["calib_loss"] = round(taylor_gradients(model, used), 4)
        importance = tp.importance.GroupTaylorImportance()
    else:
        result["calib_used"] = False
        importance = tp.importance.GroupMagnitudeImportance(p=2)

    num_heads: dict[nn.Module, int] = {}
    ratio_dict: dict[nn.Module, float] = {}
    head_ratio_dict: dict[nn.Module, float] = {}
    mlp_ratio = 1.0 - (p["width"] + 0.5) / p["intermediate_size"]  # int() lands on width
    h = p["heads_removed_per_unit"]
    # Torch-Pruning removes ceil(ratio * heads) heads, then (GQA) ceil(that / kv) per group;
    # aim just under the integer so float error cannot round up.
    head_ratio = (h * (p["kv_heads"] if p["gqa"] else 1) - 0.5) / p["heads"] if h else 0.0
    for attn, mlp in parts:
        num_heads[attn.q_proj] = p["heads"]
        num_heads[attn.k_proj] = p["kv_heads"]
        num_heads[attn.v_proj] = p["kv_heads"]
        if h:
            # a non-zero width ratio makes the attention group eligible; with
            # prune_head_dims=False only whole heads go
            ratio_dict[attn.q_proj] = 0.5
            head_ratio_dict[attn.q_proj] = head_ratio
        if p["width"] < p["intermediate_size"]:
            ratio_dict[mlp.gate_proj] = mlp_ratio
            ratio_dict[mlp.up_proj] = mlp_ratio
    example = calib[:1, : min(int(seqlen), 32)]
    ignored = [m for m in (model.get_output_embeddings(), model.get_input_embeddings())
               if m is not None]
    # 1-D weights of modules Torch-Pruning has no handler for (RMSNorm): declare them, so it
    # neither guesses nor warns; they sit on the residual width, which stays whole anyway.
    # (1.6.1 wants a list of (parameter, dim) pairs here, though its signature says dict.)
    unwrapped = [(prm, 0) for mod in model.modules()
                 if not isinstance(mod, (nn.Linear, nn.Embedding))
                 for prm in mod.parameters(recurse=False) if prm.dim() == 1]
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs=example,
        importance=importance,
        global_pruning=False,
        pruning_ratio=0.0,  # residual width: untouched
        pruning_ratio_dict=ratio_dict,
        ignored_layers=ignored,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=0.0,
        head_pruning_ratio_dict=head_ratio_dict,
        unwrapped_parameters=unwrapped,
        output_transform=lambda out: out.logits,
    )
    pruner.step()
    prune_wall_s = time.perf_counter() - t0
    prune_cpu_s = time.process_time() - c0
    # --- end of the timed pruning call ---
    model.zero_grad(set_to_none=True)

    # Read back what was actually removed and make the modules and config agree.
    q0, k0 = parts[0][0].q_proj, parts[0][0].k_proj
    kept_heads = q0.out_features // head_dim
    kept_kv = k0.out_features // head_dim
    width = parts[0][1].gate_proj.out_features
    for attn, mlp in parts:
        shapes = (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features,
                  attn.o_proj.in_features, mlp.gate_proj.out_features,
                  mlp.up_proj.out_features, mlp.down_proj.in_features)
        want = (kept_heads * head_dim, kept_kv * head_dim, kept_kv * head_dim,
                kept_heads * head_dim, width, width, width)
        if shapes != want:
            raise SystemExit(f"non-uniform pruning result: {shapes} != {want}")
        if attn.q_proj.in_features != cfg.hidden_size or mlp.down_proj.out_features != cfg.hidden_size:
            raise SystemExit("the residual width was pruned; refusing to save")
        attn.num_key_value_groups = kept_heads // kept_kv
    if (kept_heads, kept_kv, width) != (p["kept_heads"], p["kept_kv_heads"], p["width"]):
        result["plan_mismatch"] = True
        log(f"Torch-Pruning removed a different amount than planned: heads {kept_heads}/"
            f"{kept_kv}, MLP {width} (planned {p['kept_heads']}/{p['kept_kv_heads']}, "
            f"{p['width']})")
    cfg.num_attention_heads = kept_heads
    cfg.num_key_value_heads = kept_kv
    cfg.intermediate_size = width
    cfg.head_dim = head_dim
    cfg.use_cache = True

    block_params = n_params(blocks[0])
    params = sum(x.numel() for x in model.parameters())
    result.update({
        "prune_wall_s": round(prune_wall_s, 2),
        "prune_cpu_s": round(prune_cpu_s, 2),
        "params": int(params),
        "dense_params": int(dense_params),
        "kept_heads": kept_heads,
        "kept_kv_heads": kept_kv,
        "intermediate_size": width,
        "dense_heads": p["heads"],
        "dense_kv_heads": p["kv_heads"],
        "dense_intermediate_size": p["intermediate_size"],
        "block_params": int(block_params),
        "achieved_sparsity": round(1.0 - block_params / p["dense_block_params"], 6),
        "importance": type(importance).__name__,
        "planned": {k: p[k] for k in ("kept_heads", "kept_kv_heads", "width")},
    })
    log(f"pruned in {prune_wall_s:.1f} s: heads {kept_heads}/{kept_kv}, MLP {width}, "
        f"block params removed {result['achieved_sparsity']:.4f}")

    # Save a plain HF folder and prove it reloads with the same outputs.
    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    probe = calib[:1, : min(int(seqlen), 16)]
    with torch.no_grad():
        ref = model(input_ids=probe, use_cache=False).logits
    model.save_pretrained(str(args.out))
    strip_compression_config(args.out)
    save_tokenizer(args.model, args.out)
    del model
    again = AutoModelForCausalLM.from_pretrained(str(args.out), dtype=torch.float32,
                                                 attn_implementation="eager")
    with torch.no_grad():
        got = again(input_ids=probe, use_cache=False).logits
    diff = float((got - ref).abs().max())
    if not math.isfinite(diff) or diff > 1e-3:
        raise SystemExit(f"reloaded model differs from the pruned one (max |dlogit| {diff})")
    result["reload_max_abs_diff"] = diff

    result["peak_rss_mb"] = peak_rss_mb()
    write_result(args.result, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
