"""Scale proof: stream-prune a Llama-2-7B-shaped bf16 checkpoint on a small CPU machine.

    OMP_NUM_THREADS=1 python benchmarks/scale.py [--method wanda|sparsegpt] [--keep]

On a GPU (issue #12, item 3; ``benchmarks/gpu_check.sh`` runs both methods in one go)::

    python benchmarks/scale.py --shape llama3-8b --device cuda --method sparsegpt \
        --pattern unstructured --nsamples 128 --seqlen 2048

(``--tiny`` shrinks any shape to hidden 256 / intermediate 512 / vocab 1024 for a smoke run.)

1. Writes a checkpoint with Llama-2-7B's shapes (32 blocks, hidden 4096, intermediate 11008,
   32 heads, vocab 32000; or ``--shape llama3-8b``: intermediate 14336, 8 KV heads, vocab 128256)
   and random bf16 weights under ``.bench/work/<shape>-shape/``, tensor by tensor, one shard per
   block (never building the model; drawn on ``--device``).
2. Prunes it with ``prunekit.engine.streaming.prune_streaming`` in a child process (Wanda 50% by
   default, or SparseGPT 2:4) on 2 x 128-token calibration windows (``--nsamples``/``--seqlen``;
   random token ids, the weights being random too), measuring the child's peak RSS
   (``getrusage(RUSAGE_CHILDREN).ru_maxrss``), wall time and, on CUDA, peak GPU memory
   (``torch.cuda.max_memory_allocated``); the child also records its RSS after every block (flat
   = memory does not grow with the number of blocks).
3. Checks the output: every block's Linears have the requested sparsity (``safe_open``, shard by
   shard) and the index's keys and shapes are exactly those ``from_pretrained`` expects for the
   config (a full ``from_pretrained`` of 13.5 GB would need that much RAM).
4. Writes ``benchmarks/results/scale/<shape>-shape[-L<n>][-METHOD[-PATTERN]][-DEVICE].json`` (the
   CPU Llama-2-7B runs keep their old names) with the measurements and a
   paper extrapolation of peak memory to 13B, 70B and 405B shapes, then deletes the checkpoint
   and the output (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("PRUNEKIT_SCALE_WORK") or ROOT / ".bench" / "work")  # checkpoints; gpu_check.sh: /dev/shm
RESULTS = ROOT / "benchmarks" / "results" / "scale"

LLAMA2_7B = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
    rms_norm_eps=1e-5, tie_word_embeddings=False,
)  # fmt: skip
# Meta-Llama-3-8B's public config.json (GQA: 8 KV heads of 128).
LLAMA3_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
    rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
)  # fmt: skip
CONFIGS = {"llama2-7b": LLAMA2_7B, "llama3-8b": LLAMA3_8B}
TINY = dict(hidden_size=256, intermediate_size=512, vocab_size=1024)  # --tiny: a smoke run of the same code

# Shapes for the extrapolation (public configs: Llama-2-13B, Llama-2-70B, Llama-3.1-405B).
SHAPES = {
    "llama2-7b": dict(hidden=4096, inter=11008, heads=32, kv=32, vocab=32000, layers=32),
    "llama3-8b": dict(hidden=4096, inter=14336, heads=32, kv=8, vocab=128256, layers=32),
    "llama2-13b": dict(hidden=5120, inter=13824, heads=40, kv=40, vocab=32000, layers=40),
    "llama2-70b": dict(hidden=8192, inter=28672, heads=64, kv=8, vocab=32000, layers=80),
    "llama3.1-405b": dict(hidden=16384, inter=53248, heads=128, kv=8, vocab=128256, layers=126),
}


def write_checkpoint(folder: Path, seed: int = 0, shape: dict | None = None, device: str = "cpu") -> int:
    """Random bf16 weights with ``shape``'s config (default Llama-2-7B), one safetensors shard per
    block, drawn on ``device`` (a GPU draws 16 GB in seconds); returns bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    folder.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**(shape or LLAMA2_7B), dtype="bfloat16")
    h, i, v, n = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)  # rows of k_proj / v_proj
    g = torch.Generator(device=device).manual_seed(seed)
    total = n + 1
    weight_map: dict[str, str] = {}
    size = 0

    def rand(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.empty(*shape, device=device).normal_(0.0, std, generator=g).to(torch.bfloat16).cpu()

    def put(tensors: dict[str, torch.Tensor], k: int) -> None:
        nonlocal size
        name = f"model-{k + 1:05d}-of-{total:05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in tensors})
        size += sum(t.numel() * t.element_size() for t in tensors.values())

    put({"model.embed_tokens.weight": rand(v, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
         "lm_head.weight": rand(v, h)}, 0)  # fmt: skip
    for b in range(n):
        p = f"model.layers.{b}."
        t = {p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
             p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)}  # fmt: skip
        for proj, rows in (("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)):
            t[p + f"self_attn.{proj}.weight"] = rand(rows, h)
        t[p + "mlp.gate_proj.weight"] = rand(i, h)
        t[p + "mlp.up_proj.weight"] = rand(i, h)
        t[p + "mlp.down_proj.weight"] = rand(h, i)
        put(t, b + 1)
        del t
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2)
    )
    cfg.save_pretrained(folder)
    return size


CHILD = r"""
import json, os, resource, sys, time, torch
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
sys.path.insert(0, @SRC@)
import prunekit as pk
from prunekit.engine.streaming import prune_streaming

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

per_block = []
t0 = time.perf_counter()
def after(i):
    row = {"block": i, "rss_mb": round(rss_mb(), 1), "t": round(time.perf_counter() - t0, 1),
           "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3}
    per_block.append(row)
    print("block %d: rss %.0f MB, max %.0f MB, %.1f s" % (i, row["rss_mb"], row["max_rss_mb"], row["t"]), flush=True)

ns, sl, dev = int(@NSAMPLES@), int(@SEQLEN@), @DEVICE@
calib = torch.randint(0, int(@VOCAB@), (ns, sl), generator=torch.Generator().manual_seed(0))
cfg = pk.PruneConfig(method=@METHOD@, pattern=@PATTERN@,
                     calib=pk.CalibConfig(nsamples=ns, seqlen=sl, batch_size=min(ns, int(@BATCH@))))
rep = prune_streaming(@CKPT@, @OUT@, cfg, calib=calib, device=dev, progress=False, overwrite=True, after_block=after)
gpu = None
if dev.startswith("cuda"):
    gpu = {"name": torch.cuda.get_device_name(), "max_allocated_gb": torch.cuda.max_memory_allocated() / 1e9,
           "max_reserved_gb": torch.cuda.max_memory_reserved() / 1e9, "torch": torch.__version__}
json.dump({"per_block": per_block, "timings": rep.timings, "sparsity": rep.sparsity, "gpu": gpu,
           "pattern": rep.pattern, "layers": len(rep.layers)}, open(@RESULT@, "w"))
"""


def prune_child(src: Path, out: Path, method: str, pattern: str, result: Path, *, device: str = "cpu",
                nsamples: int = 2, seqlen: int = 128, vocab: int = 32000, batch: int = 8) -> dict:
    """Run the prune in a child process; its peak RSS from getrusage(RUSAGE_CHILDREN)."""
    code = CHILD
    for key, val in {"SRC": ROOT / "src", "METHOD": method, "PATTERN": pattern, "CKPT": src, "OUT": out,
                     "RESULT": result, "DEVICE": device, "NSAMPLES": nsamples, "SEQLEN": seqlen,
                     "VOCAB": vocab, "BATCH": batch}.items():  # fmt: skip
        code = code.replace(f"@{key}@", repr(str(val)))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scale: the prune failed (exit {proc.returncode})")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(peak_kb / 1e6, 3), **json.loads(result.read_text())}


def check_output(out: Path, method: str, pattern: str) -> dict:
    """Per-Linear sparsity from the shards, and the index against the model's expected keys."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig

    from prunekit.models.shards import empty_model

    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    cfg = AutoConfig.from_pretrained(out)
    model = empty_model(cfg, torch.bfloat16)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got: dict[str, tuple[int, ...]] = {}
    zeros = total = 0
    worst = 1.0
    nm_ok = True
    dtypes = set()
    for fname in sorted(set(index.values())):
        with safe_open(str(out / fname), "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                got[k] = tuple(t.shape)
                dtypes.add(str(t.dtype))
                if ".layers." in k and k.endswith("proj.weight"):
                    z = int((t == 0).sum())
                    zeros, total = zeros + z, total + t.numel()
                    worst = min(worst, z / t.numel())
                    if pattern == "2:4":
                        nm_ok &= bool(((t.reshape(t.shape[0], -1, 4) != 0).sum(-1) <= 2).all())
    return {
        "linear_sparsity": zeros / total, "min_linear_sparsity": worst, "dtypes": sorted(dtypes),
        "keys_and_shapes_match_from_pretrained": got == expected, "nm_2_4_valid": nm_ok if pattern == "2:4" else None,
    }


def phases(s: dict, calib_tokens: int, method: str, b: int = 2) -> dict[str, float]:
    """Bytes each step of a streaming prune holds beyond the baseline R0 (bf16: b = 2).

      prune (Wanda)     P·b + 20·h·i + A            block; fp32 score + int64 tie cumsum of the largest Linear
      prune (SparseGPT) P·b + 4·(3h² + i²) + 16·i² + 8·h·i + A
                                                    block; the block's Hessians (q/k/v, o, gate/up share
                                                    h x h, down i x i); H, its inverse, Cholesky factors of
                                                    the down_proj being pruned; fp32 W and Wᵀ
      write             2·P·b                       block and its serialised copy
      non-block         4·V·h·b                     embeddings + lm_head, read and serialised
    with P = 2h² + 2·h·(h·kv/heads) + 3·h·i (block parameters) and A = T·(3h + 3i)·b the calibration
    activations for T tokens (hidden states, q/k/v, MLP intermediates).
    """
    h, i, v = s["hidden"], s["inter"], s["vocab"]
    p = 2 * h * h + 2 * h * (h * s["kv"] // s["heads"]) + 3 * h * i
    act = calib_tokens * (3 * h + 3 * i) * b
    if method == "sparsegpt":
        prune = p * b + 4 * (3 * h * h + i * i) + 16 * i * i + 8 * h * i + act
    else:
        prune = p * b + 20 * h * i + act
    return {"prune": prune, "write": 2 * p * b, "non_block": 4 * v * h * b, "block_params": p}


def extrapolate(r0_gb: float, measured_gb: float, calib_tokens: int, method: str, measured: str = "llama2-7b") -> dict:
    """Peak RSS ≈ R0 + k · max(phases), k fitted so that the measured shape gives the measured peak
    (k absorbs allocator overhead and temporaries the formula leaves out)."""
    base = max(v for key, v in phases(SHAPES[measured], calib_tokens, method).items() if key != "block_params")
    k = (measured_gb - r0_gb) * 1e9 / base
    out: dict = {"k": round(k, 3), "r0_gb": round(r0_gb, 2), "calib_tokens": calib_tokens, "fitted_on": measured,
                 "formula": phases.__doc__.strip() + "\n" + extrapolate.__doc__.strip(), "shapes": {}}  # fmt: skip
    for name, s in SHAPES.items():
        ph = phases(s, calib_tokens, method)
        peak = max(v for key, v in ph.items() if key != "block_params")
        out["shapes"][name] = {
            "checkpoint_gb": round((s["layers"] * ph["block_params"] + 2 * s["vocab"] * s["hidden"]) * 2 / 1e9, 1),
            "block_gb": round(ph["block_params"] * 2 / 1e9, 2),
            "formula_peak_rss_gb": round(r0_gb + peak / 1e9, 2),
            "peak_rss_gb_estimate": round(r0_gb + k * peak / 1e9, 2),
            "largest_step": max((key for key in ph if key != "block_params"), key=lambda key: ph[key]),
        }  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="wanda", choices=["wanda", "sparsegpt"])
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint and the output")
    ap.add_argument("--keep-input", action="store_true", help="keep the checkpoint (for another method)")
    ap.add_argument("--layers", type=int, default=32, help="blocks (fewer: a quick smoke run)")
    ap.add_argument("--shape", default="llama2-7b", choices=sorted(CONFIGS), help="public config to copy")
    ap.add_argument("--tiny", action="store_true", help="hidden 256 / intermediate 512 / vocab 1024 (smoke run)")
    ap.add_argument("--pattern", default=None, help="default: unstructured for wanda, 2:4 for sparsegpt")
    ap.add_argument("--device", default="cpu", help="where each block runs (cpu, cuda, cuda:N)")
    ap.add_argument("--nsamples", type=int, default=2, help="calibration windows (random token ids)")
    ap.add_argument("--seqlen", type=int, default=128, help="tokens per calibration window")
    ap.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward")
    ap.add_argument("--extrapolate-only", metavar="JSON", help="recompute the extrapolation of a results file")
    a = ap.parse_args()
    if a.extrapolate_only:
        path = Path(a.extrapolate_only)
        rec = json.loads(path.read_text())
        r0 = rec["extrapolation"]["r0_gb"]
        ex = rec["extrapolation"]
        rec["extrapolation"] = extrapolate(r0, rec["peak_rss_gb"], ex["calib_tokens"], rec["method"],
                                           ex.get("fitted_on", "llama2-7b"))
        path.write_text(json.dumps(rec, indent=2) + "\n")
        print(json.dumps(rec["extrapolation"]["shapes"], indent=1))
        return
    shape = {**CONFIGS[a.shape], "num_hidden_layers": a.layers, **(TINY if a.tiny else {})}
    pattern = a.pattern or ("unstructured" if a.method == "wanda" else "2:4")
    default_pattern = pattern == ("unstructured" if a.method == "wanda" else "2:4")
    tag = f"{a.shape}-shape" + ("-tiny" if a.tiny else "") + ("" if a.layers == 32 else f"-L{a.layers}")
    src = WORK / tag
    out = WORK / f"{tag}-{a.method}-out"
    t0 = time.perf_counter()
    if not (src / "model.safetensors.index.json").is_file():
        print(f"writing {src} ...", flush=True)
        size = write_checkpoint(src, shape=shape, device="cuda" if a.device.startswith("cuda") else "cpu")
    else:
        size = sum(q.stat().st_size for q in src.glob("*.safetensors"))
    t_write = time.perf_counter() - t0
    print(f"checkpoint: {size / 1e9:.2f} GB in {t_write:.0f} s; pruning with {a.method} {pattern} ...", flush=True)
    res = prune_child(src, out, a.method, pattern, WORK / f"scale-{a.method}-child.json", device=a.device,
                      nsamples=a.nsamples, seqlen=a.seqlen, vocab=shape["vocab_size"], batch=a.batch_size)
    chk = check_output(out, a.method, pattern)
    r0 = res["per_block"][0]["rss_mb"] / 1e3 if res["per_block"] else 0.5
    base = min(r0, 1.0)
    rss = [p["rss_mb"] for p in res["per_block"]]
    flags = "".join([
        f" --shape {a.shape}" if a.shape != "llama2-7b" else "", " --tiny" if a.tiny else "",
        f" --layers {a.layers}" if a.layers != 32 else "", "" if default_pattern else f" --pattern {pattern}",
        f" --device {a.device}" if a.device != "cpu" else "",
        f" --nsamples {a.nsamples} --seqlen {a.seqlen}" if (a.nsamples, a.seqlen) != (2, 128) else "",
        f" --batch-size {a.batch_size}" if a.batch_size != 8 else "",
    ])  # fmt: skip
    calib_tokens = a.nsamples * a.seqlen
    record = {
        "what": f"stream-prune a {a.shape}-shaped bf16 checkpoint with random weights" + (" (tiny widths)" if a.tiny else ""),
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} python benchmarks/scale.py --method {a.method}{flags}",
        "machine": {"cpus": os.cpu_count(), "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
                    "python": platform.python_version(), "omp_threads": os.environ.get("OMP_NUM_THREADS")},  # fmt: skip
        "shape_name": a.shape, "tiny": a.tiny, "shape": shape, "dtype": "bfloat16", "checkpoint_gb": round(size / 1e9, 2), "device": a.device,
        "gpu": res.get("gpu"),
        "checkpoint_write_s": round(t_write, 1),
        "blocks": a.layers, "method": a.method, "pattern": res["pattern"], "calibration": f"{a.nsamples} x {a.seqlen} random token ids",
        "peak_rss_gb": res["peak_rss_gb"], "wall_s": res["wall_s"],
        "rss_after_block_mb": {"first": rss[0] if rss else None, "last": rss[-1] if rss else None,
                               "max": max(rss) if rss else None, "min": min(rss) if rss else None},  # fmt: skip
        "per_block": res["per_block"], "timings": res["timings"], "report_sparsity": res["sparsity"],
        "output": chk,
        "extrapolation": None if a.tiny else extrapolate(base, res["peak_rss_gb"], calib_tokens, a.method, a.shape),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = tag + ("" if a.method == "wanda" and default_pattern and a.shape == "llama2-7b" else f"-{a.method}")
    name += ("" if default_pattern else f"-{pattern.replace(':', 'of')}") + ("" if a.device == "cpu" else f"-{a.device.replace(':', '')}")
    name += ".json"
    (RESULTS / name).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("peak_rss_gb", "wall_s", "gpu", "rss_after_block_mb", "output")}, indent=1))
    if not a.keep:
        shutil.rmtree(out, ignore_errors=True)
        if not a.keep_input:
            shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()
