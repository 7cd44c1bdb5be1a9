"""The constructed MoE of benchmarks/moe.py: a dense Llama MLP split into a Qwen2-MoE block
(shared expert + routed experts + least-squares router)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_llama

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def moe_bench():
    spec = importlib.util.spec_from_file_location("bench_moe", ROOT / "benchmarks" / "moe.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_moe"] = mod
    spec.loader.exec_module(mod)
    return mod


def _ids(n=4, T=24, vocab=384, seed=0):
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_all_experts_on_reproduces_the_dense_model(moe_bench):
    """k = E and a flat router (tau 0): every channel is computed once with weight 1, so the
    MoE's logits equal the dense model's; the per-block error the construction reports is ~0."""
    dense = make_llama()
    build = moe_bench.mlp_inputs(dense, _ids())
    moe, info = moe_bench.build_moe(dense, build, E=4, k=4, shared_frac=0.5, tau=0.0)
    assert type(moe).__name__ == "Qwen2MoeForCausalLM" and moe.config.num_experts_per_tok == 4
    x = _ids(2, 16, seed=1)
    torch.testing.assert_close(moe(x).logits, dense(x).logits, rtol=1e-4, atol=1e-5)
    assert all(r["rel_err_build"] < 1e-10 for r in info)


@torch.no_grad()
def test_split_is_a_partition_with_the_important_channels_shared(moe_bench):
    dense = make_llama()
    mlp = dense.model.layers[0].mlp
    mlp.down_proj.weight[:, 7] *= 50  # channel 7 dominates the output: it must be in the shared expert
    X = moe_bench.mlp_inputs(dense, _ids())[0]
    shared, groups = moe_bench.split_block(mlp, X, E=4, shared_frac=0.25)
    allc = torch.cat([shared, *groups]).sort().values
    assert torch.equal(allc, torch.arange(128)) and len(shared) == 32 and all(len(g) == 24 for g in groups)
    assert 7 in shared.tolist()


@torch.no_grad()
def test_top_k_routing_is_real_and_its_error_is_what_the_moe_block_computes(moe_bench):
    """With k < E the Qwen2-MoE block's output equals the construction's own simulation
    (moe_output), which drops the unselected experts (non-zero error against the dense MLP)."""
    dense = make_llama()
    build = moe_bench.mlp_inputs(dense, _ids())
    moe, info = moe_bench.build_moe(dense, build, E=4, k=2, shared_frac=0.5, tau=0.5)
    X = build[1]
    src = dense.model.layers[1].mlp
    shared, groups = moe_bench.split_block(src, X, 4, 0.5, seed=1)
    ys, outs, target = moe_bench.expert_outputs(src, X, shared, groups)
    logits = X @ moe.model.layers[1].mlp.gate.weight.T / 0.5
    want = moe_bench.moe_output(ys, outs, logits, 2, 0.5)
    torch.testing.assert_close(moe.model.layers[1].mlp(X[None])[0], want, rtol=1e-4, atol=1e-5)
    assert info[1]["rel_err_build"] > 1e-4
    assert info[1]["rel_err_build"] == pytest.approx(moe_bench._rel(want, target), rel=1e-3, abs=1e-6)
