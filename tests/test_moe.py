"""MoE pruning (issue 16): REAP and STUN on tiny random Mixtral / Qwen2-MoE / OLMoE, a constructed
MoE with exact duplicate experts, saving (stock config or remote code) and MC-MoE dynamic skipping.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import prunekit as pk
from prunekit.engine.targets import weight_of
from prunekit.errors import ConfigError
from prunekit.export.hf import write_hf_folder
from prunekit.structured import experts as X

VOCAB, SEQ = 384, 32
_BASE = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512, bos_token_id=0, eos_token_id=0, pad_token_id=0)  # fmt: skip
FAMILIES = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", "num_local_experts",
                dict(head_dim=16, intermediate_size=48, tie_word_embeddings=False)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", "num_experts",
                  dict(intermediate_size=128, moe_intermediate_size=32, shared_expert_intermediate_size=64)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", "num_experts", dict(intermediate_size=48)),
}  # fmt: skip


def make(family: str, experts: int = 4, top_k: int = 2, seed: int = 0, router_scale: float = 20.0):
    """A tiny random MoE; router rows scaled up so routing is decisive (random init is ~uniform)."""
    import transformers

    cfg_cls, model_cls, count, kw = FAMILIES[family]
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**_BASE, **kw, **{count: experts}, num_experts_per_tok=top_k)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for b in X.moe_blocks(model):
            b.router.weight.mul_(router_scale)
    return model


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (8, SEQ), generator=torch.Generator().manual_seed(0))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids[:2]).logits


def _prune(model, ids, method, sparsity=None, **args):
    return pk.prune_(model, pk.PruneConfig(method=method, sparsity=sparsity, method_args=args), ids, progress=False)


# --- REAP ---------------------------------------------------------------------------------------
def _naive_reap(model, ids) -> dict[int, torch.Tensor]:
    """Loop-style REAP scores from hooks on the dense model: per token and routed slot,
    g x ‖down(silu(gate x) * up x)‖ with the expert's weights split by hand."""
    seen: dict[int, list] = {}
    hooks = []
    for b in X.moe_blocks(model):
        def hook(mod, args, kwargs, i=b.index):
            x, index, weights = args if len(args) == 3 else (args[0], kwargs["top_k_index"], kwargs["top_k_weights"])
            seen.setdefault(i, []).append((x.clone(), index.clone(), weights.clone()))

        hooks.append(b.experts.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    out = {}
    for b in X.moe_blocks(model):
        E, inter = b.num_experts, b.experts.down_proj.shape[-1]
        tot, cnt = torch.zeros(E, dtype=torch.float64), torch.zeros(E)
        for x, index, weights in seen[b.index]:
            for t in range(x.shape[0]):
                for s in range(index.shape[1]):
                    e = int(index[t, s])
                    gu = b.experts.gate_up_proj[e]
                    h = F.silu(gu[:inter] @ x[t]) * (gu[inter:] @ x[t])
                    tot[e] += float(weights[t, s]) * float((b.experts.down_proj[e] @ h).norm().detach())
                    cnt[e] += 1
        out[b.index] = torch.where(cnt > 0, tot / cnt.clamp(min=1), torch.zeros_like(tot))
    return out


def test_reap_scores_match_a_loop_reimplementation(ids):
    model = make("mixtral")
    blocks = X.moe_blocks(model)
    naive = _naive_reap(model, ids)
    stats = X.routing_stats(model, blocks, ids, batch_size=8, reap=True)
    for b in blocks:
        torch.testing.assert_close(stats[b.index].reap_scores(), naive[b.index], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_reap_uniform_count_is_a_stock_folder(family, ids, tmp_path):
    """REAP keeps the highest-scoring experts, slices router rows and expert weights exactly, keeps
    shared experts, and the folder reloads with plain from_pretrained to identical logits."""
    from transformers import AutoModelForCausalLM

    model = make(family, experts=4)
    before = {b.index: (b.router.weight.detach().clone(), b.experts.gate_up_proj.detach().clone(),
                        b.experts.down_proj.detach().clone()) for b in X.moe_blocks(model)}  # fmt: skip
    shared = {n: p.detach().clone() for n, p in model.named_parameters() if "shared_expert" in n}
    scores = {b.index: s.reap_scores() for b, s in
              zip(X.moe_blocks(model), X.routing_stats(model, X.moe_blocks(model), ids, reap=True).values())}  # fmt: skip
    report = _prune(model, ids, "reap", experts=0.5)
    count_field = FAMILIES[family][2]
    assert getattr(model.config, count_field) == 2 and not getattr(model.config, X.CONFIG_COUNTS, None)
    for b in X.moe_blocks(model):
        kept = report.settings["kept"][str(b.index)]
        top = sorted(torch.argsort(scores[b.index], descending=True)[:2].tolist())
        assert kept == top
        R, GU, D = before[b.index]
        assert torch.equal(b.router.weight, R[kept]) and torch.equal(b.experts.gate_up_proj, GU[kept])
        assert torch.equal(b.experts.down_proj, D[kept]) and b.experts.num_experts == 2
    if family == "qwen2_moe":
        assert shared and all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in shared.items())
    ref = _logits(model, ids)
    write_hf_folder(model, None, tmp_path)
    assert not (tmp_path / X.REMOTE_CODE_FILE).exists()
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(again, ids), ref, rtol=0, atol=0)


def test_per_layer_counts_save_with_remote_code(ids, tmp_path):
    """REAP scope=global leaves per-block counts: plain from_pretrained refuses the folder, prunekit
    and trust_remote_code=True load it to identical logits."""
    from transformers import AutoModelForCausalLM

    model = make("mixtral", experts=8)
    with torch.no_grad():  # six of block 1's experts carry a tiny share of its score
        model.model.layers[1].mlp.experts.down_proj[2:].mul_(0.001)
    _prune(model, ids, "reap", experts=0.5, scope="global")
    counts = model.config.prunekit_experts
    assert counts == [b.num_experts for b in X.moe_blocks(model)] and sum(counts) == 8 and counts[1] < counts[0]
    assert min(counts) >= 2  # top-k kept everywhere
    ref = _logits(model, ids)
    write_hf_folder(model, None, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_prunekit_moe.")
    with pytest.raises(RuntimeError, match="mismatched|ignore_mismatched_sizes"):  # stock class: shapes differ
        AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False)
    ours = X.load_pretrained(tmp_path)
    torch.testing.assert_close(_logits(ours, ids), ref, rtol=0, atol=0)
    remote = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(remote).__name__ == "PrunekitMixtralForCausalLM"
    torch.testing.assert_close(_logits(remote, ids), ref, rtol=0, atol=0)


# --- STUN ---------------------------------------------------------------------------------------
def _with_duplicate(model, src: int = 1, dst: int = 3):
    """Expert ``dst`` becomes an exact copy of expert ``src`` (weights and router row)."""
    with torch.no_grad():
        for b in X.moe_blocks(model):
            b.experts.gate_up_proj[dst] = b.experts.gate_up_proj[src]
            b.experts.down_proj[dst] = b.experts.down_proj[src]
            b.router.weight[dst] = b.router.weight[src]
    return model


@pytest.mark.parametrize("top_k", [1, 2])
def test_stun_clusters_exact_duplicates_first(top_k, ids):
    model = _with_duplicate(make("mixtral", experts=4, top_k=top_k))
    report = _prune(model, ids, "stun", experts=1, then="none")
    for i, clusters in report.settings["clusters"].items():
        assert [1, 3] in clusters, clusters
        assert report.settings["kept"][i] == [0, 1, 2]


@pytest.mark.parametrize("family", ["mixtral", "olmoe"])
def test_stun_removing_a_duplicate_leaves_logits_unchanged(family, ids):
    """Top-1 routing with renormalised weights (Mixtral; OLMoE with norm_topk_prob): a token routed
    to either copy gets the same output, so merging the copies' router rows changes nothing."""
    model = _with_duplicate(make(family, experts=4, top_k=1))
    model.config.norm_topk_prob = True
    for b in X.moe_blocks(model):
        if hasattr(b.router, "norm_topk_prob"):
            b.router.norm_topk_prob = True
    ref = _logits(model, ids)
    _prune(model, ids, "stun", experts=1, then="none")
    assert all(b.num_experts == 3 for b in X.moe_blocks(model))
    torch.testing.assert_close(_logits(model, ids), ref, rtol=1e-5, atol=1e-5)


def test_stun_beats_removing_a_distinct_expert(ids):
    """With top-2 routing, STUN (removes the duplicate) changes the output less than removing a
    distinct expert with the same router merge."""
    model = _with_duplicate(make("mixtral", experts=4, top_k=2))
    ref = _logits(model, ids)
    stun = make("mixtral", experts=4, top_k=2)
    stun.load_state_dict(model.state_dict())
    _prune(stun, ids, "stun", experts=1, then="none")
    other = make("mixtral", experts=4, top_k=2)
    other.load_state_dict(model.state_dict())
    X.remove_experts(other, {b.index: [0, 1, 3] for b in X.moe_blocks(other)})  # drops distinct expert 2
    err = lambda m: (_logits(m, ids) - ref).pow(2).mean().item()  # noqa: E731
    assert err(stun) < err(other)


def test_greedy_clusters_and_router_merge_match_definitions():
    D = torch.tensor([[0, 1, 5, 6], [1, 0, 5, 6], [5, 5, 0, 2], [6, 6, 2, 0.0]])
    assert X.greedy_clusters(D, 2) == [[0, 1], [2, 3]]
    assert X.greedy_clusters(D, 3) == [[0, 1], [2], [3]]
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    row = X.merged_router_row(W, [0, 1], torch.tensor([3.0, 1.0, 9.0]))
    torch.testing.assert_close(row, torch.tensor([0.75, 0.25]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_stun_then_sparsegpt_exact_sparsity(family, ids):
    model = make(family, experts=4)
    report = _prune(model, ids, "stun", sparsity=0.5, experts=1)
    assert all(b.num_experts == 3 for b in X.moe_blocks(model))
    for name, m in pk.target_linears(model, pk.PruneConfig()).items():
        W = weight_of(m)
        assert abs((W == 0).float().mean().item() - 0.5) < 0.02, name
    assert report.settings["then_sparsity"] == 0.5 and report.settings["total_sparsity"] > 0.5


def test_stun_total_sparsity_counts_removed_experts(ids):
    model = make("mixtral", experts=4)
    before = sum(weight_of(m).numel() for m in pk.target_linears(model, pk.PruneConfig()).values())
    report = _prune(model, ids, "stun", sparsity=0.6, experts=1, total=True)
    nonzero = sum(int((weight_of(m) != 0).sum()) for m in pk.target_linears(model, pk.PruneConfig()).values())
    assert abs(1 - nonzero / before - 0.6) < 0.01
    assert 0 < report.settings["then_sparsity"] < 0.6


# --- dynamic skipping ---------------------------------------------------------------------------
def _naive_moe(block, x, beta):
    """The MoE block output with MC-MoE skipping, token by token; and the skipped-slot count."""
    logits = x @ block.router.weight.T
    p = torch.softmax(logits, dim=-1)
    w, idx = p.topk(block.top_k, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    inter = block.experts.down_proj.shape[-1]
    out, skipped = torch.zeros_like(x), 0
    for t in range(x.shape[0]):
        for s in range(block.top_k):
            if s > 0 and w[t, s] < beta * w[t, 0]:
                skipped += 1
                continue
            e = int(idx[t, s])
            gu = block.experts.gate_up_proj[e]
            h = F.silu(gu[:inter] @ x[t]) * (gu[inter:] @ x[t])
            out[t] += w[t, s] * (block.experts.down_proj[e] @ h)
    return out, skipped


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_dynamic_skipping_matches_a_token_loop(beta):
    model = make("mixtral", experts=4, router_scale=60.0)
    X.enable_dynamic_skipping(model, beta)
    b = X.moe_blocks(model)[0]
    x = torch.randn(1, 40, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = b.moe(x)
        want, skipped = _naive_moe(b, x[0], beta)
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-6)
    st = X.dynamic_skipping_stats(model)
    assert st["skipped"] == skipped and st["routed"] == (40 * 2 if beta else 0)
    if beta == 0.9:
        assert st["saved_fraction"] == skipped / 80 and skipped > 0


def test_dynamic_skipping_uses_eager_experts_and_both_skip_slots_agree():
    """Skipped slots go to the out-of-range 'no expert' slot only under the eager experts loop
    (which runs nothing for it); otherwise to the token's first expert with weight 0. Both give the
    token loop's output, never NaN; removing skipping restores the previous implementation."""
    model = make("mixtral", experts=4, router_scale=60.0)
    before = model.config._experts_implementation
    X.enable_dynamic_skipping(model, 0.9)
    assert model.config._experts_implementation == "eager"
    b = X.moe_blocks(model)[0]
    assert b.router.prunekit_skip_to_none
    x = torch.randn(1, 40, 64, generator=torch.Generator().manual_seed(2))
    want, skipped = _naive_moe(b, x[0], 0.9)
    assert skipped > 0
    with torch.no_grad():
        eager = b.moe(x)[0]
        b.router.prunekit_skip_to_none = False  # the fallback when eager experts are not available
        fallback = b.moe(x)[0]
    for got in (eager, fallback):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    X.enable_dynamic_skipping(model, None)
    assert model.config._experts_implementation == before


def test_dynamic_skipping_saved_in_the_folder(ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model = make("qwen2_moe", experts=4, router_scale=60.0)
    X.enable_dynamic_skipping(model, 0.8)
    ref = _logits(model, ids)
    write_hf_folder(model, None, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())[X.CONFIG_DYNAMIC] == 0.8
    for again in (X.load_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True)):
        torch.testing.assert_close(_logits(again.eval(), ids), ref, rtol=0, atol=0)
        assert X.dynamic_skipping_stats(again)["skipped"] > 0
    off = X.load_pretrained(tmp_path, dynamic_experts=0)
    assert X.dynamic_skipping_stats(off)["routed"] == 0 or X.dynamic_skipping_stats(off)["skipped"] == 0
    assert not torch.equal(_logits(off, ids), ref)


# --- errors -------------------------------------------------------------------------------------
def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("method,args,needle", [
    ("reap", {"experts": 1.5}, "fraction in (0, 1) or a whole count"),
    ("reap", {"experts": 0.9}, "removes 4 of 4 experts"),
    ("stun", {"experts": 3}, "each block keeps at least top-k = 2"),
    ("reap", {"experts": -1}, "out of range"),
    ("reap", {"scope": "everywhere"}, "one of uniform, global"),
    ("stun", {"then": "flap"}, "structured method"),
    ("stun", {"then": "nope"}, "nope"),
    ("stun", {"then_set": "block_size"}, "K=V"),
])  # fmt: skip
def test_bad_settings_are_one_line(method, args, needle, ids):
    model = make("mixtral", experts=4)
    with pytest.raises(ConfigError) as e:
        _prune(model, ids, method, **args)
    assert needle in _one_line(e)


def test_dense_model_and_bad_beta_are_one_line(tiny_llama, ids):
    with pytest.raises(ConfigError) as e:
        _prune(tiny_llama, ids, "reap", experts=0.25)
    assert "no routed experts" in _one_line(e)
    model = make("mixtral", experts=4)
    for beta in (1.5, -0.1, True):
        with pytest.raises(ConfigError) as e:
            X.enable_dynamic_skipping(model, beta)
        assert "[0, 1]" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        X.enable_dynamic_skipping(make("mixtral", experts=4, top_k=1), 0.5)
    assert "top-k >= 2" in _one_line(e)


def test_cli_stun_then_sparsegpt_and_reload(tmp_path, capsys, tokenizer, calib_txt):
    from prunekit.cli.main import main

    src, out = tmp_path / "moe", tmp_path / "out"
    make("qwen2_moe", experts=4).save_pretrained(src)
    tokenizer.save_pretrained(src)
    rc = main(["prune", str(src), "--method", "stun", "--sparsity", "0.5", "--set", "experts=1", "--calib", str(calib_txt),
               "--nsamples", "4", "--seqlen", "32", "--out", str(out), "--quiet", "--json"])  # fmt: skip
    _, err = capsys.readouterr()
    assert rc == 0, err
    model, _ = pk.load_model(str(out))
    assert model.config.num_experts == 3 and all(b.num_experts == 3 for b in X.moe_blocks(model))
    zeros = [(weight_of(m) == 0).float().mean().item() for m in pk.target_linears(model, pk.PruneConfig()).values()]
    assert all(abs(z - 0.5) < 0.02 for z in zeros)
    assert json.loads((out / "prunekit.json").read_text())["config"]["method"] == "stun"


def test_families_match_the_remote_code_classes():
    from prunekit.structured.remote_code.modeling_prunekit_moe import CLASSES

    assert tuple(CLASSES) == X.FAMILIES
