"""MoE pruning benchmark (issue 16) on a mixture-of-experts model *constructed* from SmolLM2-135M.

No real MoE checkpoint is reachable offline, so each dense MLP of SmolLM2-135M is split into
``E`` experts of ``1536 / E`` channels (a Mixtral model with the same attention, norms and
embeddings):

1. channels: balanced k-means (equal sizes) of the channels' |activation| profiles over
   construction tokens (C4, seed 1: never the calibration windows of seed 0 nor the eval text),
   so channels that fire together share an expert (MoEfication-style);
2. router: per block a least-squares fit of the centred ``log ‖expert output‖`` on the block's
   MoE input, scaled to logits of standard deviation ``tau`` (tau from a small grid per block,
   the one with the lowest calibration error against the dense MLP output);
3. experts: ``gate_up = [W_gate; W_up]`` rows of the channels, ``down = k x W_down`` columns (the
   Mixtral router renormalises the top-k weights to sum 1, so a flat router gives back the sum
   of the k selected channel groups).

Cells (each a JSON under ``benchmarks/results/moe/``): the constructed MoE itself; removing 25%
of the experts per block by least use, at random, by REAP; STUN + SparseGPT vs SparseGPT alone
at equal total sparsity of the block matrices; MC-MoE dynamic skipping for a few β.

    OMP_NUM_THREADS=1 python benchmarks/moe.py --cells all
    python benchmarks/moe.py --section      # only rewrite the markdown section

Protocol (the reduced one, for time): calibration 8 x 2048 C4 windows (seed 0), WikiText-2 test
first 10 windows of 2048; the same text as ``smollm2-135m_c4-sample-8x2048-s0_wikitext2-test-10x2048``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results" / "moe"
SECTION = ROOT / "benchmarks" / "results" / "sections" / "40-moe.md"
CACHE = ROOT / ".bench" / "moe"
QUICK = ROOT / "benchmarks" / "results" / "smollm2-135m_c4-sample-8x2048-s0_wikitext2-test-10x2048"
C4 = str(SHARED / "c4-sample")
WIKI = f"wikitext2:{SHARED / 'wikitext-2-raw' / 'wiki.test.raw'}"
CALIB_N, SEQ, EVAL_WINDOWS = 8, 2048, 5
BUILD_N = 4  # construction windows (C4 seed 1)
TAUS = (0.25, 0.5, 1.0, 2.0)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- construction ------------------------------------------------------------------------------
def balanced_kmeans(Fe: torch.Tensor, E: int, iters: int = 8, seed: int = 0) -> torch.Tensor:
    """Assign the rows of ``Fe`` [n, d] (unit norm) to E clusters of n / E rows each."""
    n = Fe.shape[0]
    size = n // E
    g = torch.Generator().manual_seed(seed)
    cent = Fe[torch.randperm(n, generator=g)[:E]]
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        sim = Fe @ cent.T
        order = torch.argsort(sim.reshape(-1), descending=True).tolist()
        assign = torch.full((n,), -1, dtype=torch.long)
        cap = [size] * E
        for idx in order:
            c, e = divmod(idx, E)
            if assign[c] < 0 and cap[e] > 0:
                assign[c] = e
                cap[e] -= 1
        cent = F.normalize(torch.stack([Fe[assign == e].mean(0) for e in range(E)]), dim=1)
    return assign


@torch.no_grad()
def construct(E: int, k: int):
    import prunekit as pk
    from transformers import MixtralConfig, MixtralForCausalLM

    dense, tok = pk.load_model("smollm2-135m")
    dc = dense.config
    ids = pk.calibration_windows(C4, tok, nsamples=BUILD_N, seqlen=SEQ, seed=1)
    xs: dict[int, list[torch.Tensor]] = {}
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: xs.setdefault(i, []).append(a[0].reshape(-1, a[0].shape[-1])))
             for i, layer in enumerate(dense.model.layers)]  # fmt: skip
    for w in ids:
        dense.model(input_ids=w[None], use_cache=False)
    for h in hooks:
        h.remove()
    cfg = MixtralConfig(
        vocab_size=dc.vocab_size, hidden_size=dc.hidden_size, intermediate_size=dc.intermediate_size // E,
        num_hidden_layers=dc.num_hidden_layers, num_attention_heads=dc.num_attention_heads,
        num_key_value_heads=dc.num_key_value_heads, head_dim=dc.head_dim, hidden_act=dc.hidden_act,
        max_position_embeddings=dc.max_position_embeddings, rms_norm_eps=dc.rms_norm_eps,
        rope_parameters=dict(dc.rope_parameters), tie_word_embeddings=True, num_local_experts=E,
        num_experts_per_tok=k, bos_token_id=dc.bos_token_id, eos_token_id=dc.eos_token_id,
        pad_token_id=dc.pad_token_id, sliding_window=None, router_jitter_noise=0.0,
    )  # fmt: skip
    moe = MixtralForCausalLM(cfg).eval()
    sd = {n: t for n, t in dense.state_dict().items() if ".mlp." not in n}
    missing, unexpected = moe.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    info = []
    for i, layer in enumerate(dense.model.layers):
        X = torch.cat(xs.pop(i)).float()
        Wg, Wu, Wd = layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight
        h = F.silu(X @ Wg.T) * (X @ Wu.T)  # [N, 1536]
        assign = balanced_kmeans(F.normalize(h.abs().T, dim=1), E, seed=i)
        groups = [torch.nonzero(assign == e).flatten() for e in range(E)]
        outs = torch.stack([h[:, g] @ Wd[:, g].T for g in groups], 1)  # [N, E, H]
        Y = outs.norm(dim=-1).clamp(min=1e-6).log()
        Y = Y - Y.mean(1, keepdim=True)
        G = X.T @ X + 1e-3 * torch.eye(X.shape[1]) * X.pow(2).mean() * X.shape[0]
        R = torch.linalg.solve(G, X.T @ Y)  # [H, E]
        logits = X @ R
        sel = logits.topk(k, dim=1).indices
        oracle = Y.topk(k, dim=1).indices
        overlap = (sel[:, :, None] == oracle[:, None, :]).any(-1).float().mean().item()
        target = outs.sum(1)
        best = None
        for tau in TAUS:
            scaled = logits / logits.std() * tau
            w = torch.softmax(scaled.gather(1, sel), dim=1)  # Mixtral: top-k renormalised
            y = (k * w[:, :, None] * outs.gather(1, sel[:, :, None].expand(-1, -1, outs.shape[-1]))).sum(1)
            err = (y - target).pow(2).sum().item() / target.pow(2).sum().item()
            if best is None or err < best[1]:
                best = (tau, err)
        tau = best[0]
        m = moe.model.layers[i].mlp
        m.gate.weight.copy_((R / logits.std() * tau).T)
        m.experts.gate_up_proj.copy_(torch.stack([torch.cat([Wg[g], Wu[g]]) for g in groups]))
        m.experts.down_proj.copy_(torch.stack([k * Wd[:, g] for g in groups]))
        info.append({"block": i, "tau": tau, "rel_err": round(best[1], 5), "router_overlap": round(overlap, 4)})
        del X, h, outs
    return moe, tok, info


def moe_folder(E: int, k: int) -> Path:
    return CACHE / f"smollm2-moe-e{E}k{k}"


def get_moe(E: int, k: int):
    import prunekit as pk

    d = moe_folder(E, k)
    if (d / "config.json").is_file():
        model, tok = pk.load_model(str(d))
        return model, tok, json.loads((d / "construction.json").read_text())
    _log(f"constructing the MoE (E={E}, k={k})")
    t0 = time.perf_counter()
    model, tok, info = construct(E, k)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    meta = {"E": E, "k": k, "blocks": info, "construct_s": round(time.perf_counter() - t0, 1)}
    (d / "construction.json").write_text(json.dumps(meta, indent=2))
    return model, tok, meta


# --- cells -------------------------------------------------------------------------------------
_EVAL_IDS: list = []


def evaluate(model, tok, windows: int = EVAL_WINDOWS) -> dict:
    import prunekit as pk

    if not _EVAL_IDS:
        _EVAL_IDS.append(pk.eval_token_ids(WIKI, tok))
    r = pk.perplexity(model, _EVAL_IDS[0], seqlen=SEQ, max_windows=windows)
    return {"perplexity": r["perplexity"], "windows": r["windows"], "eval_s": round(r["seconds"], 1)}


def block_sparsity(model) -> dict:
    """Zeros of the decoder-block matrices relative to the *constructed* MoE's block matrices."""
    import prunekit as pk
    from prunekit.engine.targets import weight_of

    t = pk.target_linears(model, pk.PruneConfig())
    total = sum(weight_of(m).numel() for m in t.values())
    zeros = sum(int((weight_of(m) == 0).sum()) for m in t.values())
    return {"block_matrix_params": total, "zeros": zeros}


_BASE: dict = {}


def run_cell(cell: str, E: int, k: int, windows: int) -> dict:
    """One cell on a fresh copy of the constructed MoE (loaded once per process)."""
    import prunekit as pk
    from prunekit.structured import experts as X

    if (E, k) not in _BASE:
        m, tok, _ = get_moe(E, k)
        _BASE[(E, k)] = (m, tok, pk.calibration_windows(C4, tok, nsamples=CALIB_N, seqlen=SEQ, seed=0))
    base_model, tok, calib = _BASE[(E, k)]
    model = copy.deepcopy(base_model)
    base = block_sparsity(model)["block_matrix_params"]
    out: dict = {"cell": cell, "E": E, "k": k}
    t0 = time.perf_counter()
    if cell == "llama-dense":  # the original dense SmolLM2-135M on the same windows
        model, _ = pk.load_model("smollm2-135m")
        base = block_sparsity(model)["block_matrix_params"]
    elif cell == "moe-dense":
        pass
    elif cell.startswith(("least-used-", "random-", "reap-")):
        frac = int(cell.rsplit("-", 1)[1]) / 100
        blocks = X.moe_blocks(model)
        n_rm = round(frac * E)
        if cell.startswith("reap-"):
            rep = pk.prune_(model, pk.PruneConfig(method="reap", method_args={"experts": frac}), calib, progress=False)
            out["kept"] = rep.settings["kept"]
        else:
            stats = X.routing_stats(model, blocks, calib, reap=False)
            rng = random.Random(0)
            keep = {}
            for b in blocks:
                if cell.startswith("least-used-"):
                    order = torch.argsort(stats[b.index].counts, descending=True, stable=True).tolist()
                    keep[b.index] = sorted(order[: E - n_rm])
                else:
                    keep[b.index] = sorted(rng.sample(range(E), E - n_rm))
            X.remove_experts(model, keep)
            out["kept"] = {str(i): v for i, v in keep.items()}
    elif cell == "stun-25":
        rep = pk.prune_(model, pk.PruneConfig(method="stun", method_args={"experts": 0.25, "then": "none"}), calib, progress=False)
        out["clusters"] = rep.settings["clusters"]
    elif cell.startswith("stun-sparsegpt-"):
        tot = int(cell.rsplit("-", 1)[1]) / 100
        rep = pk.prune_(model, pk.PruneConfig(method="stun", sparsity=tot, method_args={"experts": 0.25, "total": True}),
                        calib, progress=False)  # fmt: skip
        out["then_sparsity"] = rep.settings["then_sparsity"]
        out["clusters"] = rep.settings["clusters"]
    elif cell.startswith("sparsegpt-"):
        tot = int(cell.rsplit("-", 1)[1]) / 100
        pk.prune_(model, pk.PruneConfig(method="sparsegpt", sparsity=tot), calib, progress=False, report_tokens=0)
    elif cell.startswith("dynamic-"):
        beta = float(cell.split("-", 1)[1])
        X.enable_dynamic_skipping(model, beta)
    else:
        raise SystemExit(f"unknown cell {cell}")
    out["prune_s"] = round(time.perf_counter() - t0, 1)
    bs = block_sparsity(model)
    out["total_block_sparsity"] = 1 - (bs["block_matrix_params"] - bs["zeros"]) / base
    if cell.startswith("dynamic-"):
        X.dynamic_skipping_stats(model, reset=True)
    out["eval"] = evaluate(model, tok, windows)
    if cell.startswith("dynamic-"):
        out["skipping"] = X.dynamic_skipping_stats(model)
    out["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out["torch_threads"] = torch.get_num_threads()
    out["loadavg_1min"] = os.getloadavg()[0]
    return out


CELLS = ["moe-dense", "least-used-25", "random-25", "reap-25", "stun-sparsegpt-50", "sparsegpt-50", "dynamic-0.7",
         "llama-dense", "stun-25", "dynamic-0.9", "dynamic-0.5"]  # in priority order  # fmt: skip


# --- the markdown section -------------------------------------------------------------------------
def _load(cell: str) -> dict | None:
    f = RESULTS / f"{cell}.json"
    return json.loads(f.read_text()) if f.is_file() else None


def write_section() -> None:
    rows = {c: _load(c) for c in CELLS}
    cons = json.loads((RESULTS / "construction.json").read_text()) if (RESULTS / "construction.json").is_file() else None
    dense = rows["llama-dense"]["eval"]["perplexity"] if rows["llama-dense"] else None
    L = ["## Mixture-of-experts pruning on a constructed MoE (STUN, REAP, dynamic skipping)", ""]
    E = k = "?"
    if cons:
        E, k = cons["E"], cons["k"]
        taus = sorted({b["tau"] for b in cons["blocks"]})
        ov = sum(b["router_overlap"] for b in cons["blocks"]) / len(cons["blocks"])
        L += [
            f"**This is a constructed MoE, not a trained one.** No MoE checkpoint is reachable offline, so each "
            f"MLP of SmolLM2-135M was split into E = {E} experts of {1536 // E} channels (Mixtral layout, top-{k} "
            f"routing): channels clustered by balanced k-means of their |activation| profiles on {BUILD_N} x {SEQ} "
            f"C4 tokens (seed 1), router = per-block least-squares fit of the centred log expert-output norm on the "
            f"block input (its top-{k} agrees with the oracle top-{k} on {ov:.0%} of expert slots), logits scaled "
            f"per block to std τ ∈ {{{', '.join(f'{t:g}' for t in taus)}}} (the τ of {TAUS} with the lowest "
            f"calibration error), expert down-projections x{k} so a flat router returns the sum of the selected "
            f"channel groups. Script: `benchmarks/moe.py`.",
            "",
        ]
    L += [
        f"Protocol (reduced, for time on a shared 2-core machine, one torch thread per job, other jobs "
        f"running: timings are indicative only): calibration {CALIB_N} x {SEQ} C4 windows (seed 0); "
        f"WikiText-2 test, first {EVAL_WINDOWS} windows of {SEQ} (not the routine 40: the shared lock queue "
        f"left too little time)." + (f" The original dense SmolLM2-135M on these windows: {dense:.2f}." if dense else ""),
        "",
        "| cell | what | experts kept / block | total block sparsity | WikiText-2 ppl |",
        "|---|---|---|---|---|",
    ]
    what = {
        "moe-dense": "the constructed MoE, unpruned",
        "least-used-25": "remove the 25% least-used experts per block (routed-token counts)",
        "random-25": "remove 25% of the experts per block at random (seed 0)",
        "reap-25": "REAP: remove the 25% lowest mean gate x ‖output‖ per block",
        "stun-25": "STUN stage 1 only: cluster by router rows + co-activation, keep one expert per cluster",
        "sparsegpt-50": "SparseGPT alone, 50% of every block matrix (per-expert Hessians)",
        "stun-sparsegpt-50": "STUN 25% experts, then SparseGPT to 50% total",
    }
    for c in ("moe-dense", "least-used-25", "random-25", "reap-25", "stun-25", "sparsegpt-50", "stun-sparsegpt-50"):
        r = rows[c]
        if r is None:
            continue
        kept = E - round(0.25 * E) if c.startswith(("least", "random", "reap", "stun")) else E
        L.append(f"| `{c}` | {what[c]} | {kept} of {E} | {r['total_block_sparsity']:.1%} | {r['eval']['perplexity']:.2f} |")
    dyn = sorted(((c, rows[c]) for c in CELLS if c.startswith("dynamic-") and rows[c]), key=lambda cr: float(cr[0][8:]))
    if dyn:
        L += ["", f"MC-MoE dynamic skipping on the unpruned constructed MoE: with top-2 routing MC-MoE skips the "
                  f"2nd expert of a token when w2 < β·w1; with this model's top-{k}, every expert ranked below the "
                  f"first whose weight is < β·w1 is skipped (the kept weights are not renormalised). Saved = "
                  f"skipped / routed expert evaluations on the evaluation windows:", "",
              "| β | expert evaluations saved | WikiText-2 ppl |", "|---|---|---|"]  # fmt: skip
        if rows["moe-dense"]:
            L.append(f"| 0 (off) | 0.0% | {rows['moe-dense']['eval']['perplexity']:.2f} |")
        for c, r in dyn:
            L.append(f"| {c.split('-', 1)[1]} | {r['skipping']['saved_fraction']:.1%} | {r['eval']['perplexity']:.2f} |")
    L += ["", "What was tried and what it shows: see the per-cell JSON in `benchmarks/results/moe/` "
              "(kept experts, STUN clusters, timings, machine load)."]  # fmt: skip
    SECTION.parent.mkdir(parents=True, exist_ok=True)
    SECTION.write_text("\n".join(L) + "\n")
    _log(f"wrote {SECTION}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="", help="comma list or 'all'")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=6)
    ap.add_argument("--windows", type=int, default=EVAL_WINDOWS)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--section", action="store_true", help="only write the markdown section")
    ap.add_argument("--pilot", action="store_true", help="construct and print the MoE ppl on --windows windows")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if a.pilot:
        model, tok, meta = get_moe(a.experts, a.top_k)
        print(json.dumps({"E": a.experts, "k": a.top_k, "eval": evaluate(model, tok, a.windows),
                          "taus": [b["tau"] for b in meta["blocks"]],
                          "overlap": [b["router_overlap"] for b in meta["blocks"]]}))  # fmt: skip
        return
    cells = CELLS if a.cells == "all" else [c for c in a.cells.split(",") if c]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for c in cells:
        f = RESULTS / f"{c}.json"
        if f.is_file() and not a.force:
            _log(f"{c}: have {f.name}")
            continue
        _log(f"{c}: running")
        r = run_cell(c, a.experts, a.top_k, a.windows)
        f.write_text(json.dumps(r, indent=2) + "\n")
        meta = json.loads((moe_folder(a.experts, a.top_k) / "construction.json").read_text())
        (RESULTS / "construction.json").write_text(json.dumps(meta, indent=2) + "\n")
        write_section()
        _log(f"{c}: ppl {r['eval']['perplexity']:.2f} ({r['prune_s']} s prune, {r['eval']['eval_s']} s eval)")
    write_section()


if __name__ == "__main__":
    main()
