"""GBLM-Pruner and the gradient pre-pass: the statistic against a naive per-window autograd loop,
the score against a direct re-implementation, exact sparsity / N:M validity, alpha=0 == Wanda,
the pre-pass leaves the model as it found it, reload equality of the saved folder."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_llama

import prunekit as pk
from prunekit.api import target_linears
from prunekit.config import PruneConfig
from prunekit.engine.gradients import gradient_sq
from prunekit.errors import ConfigError
from prunekit.patterns import parse_pattern


def _ids(n=4, seqlen=32, seed=0):
    return torch.randint(0, 384, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _naive_grad_sq(model, ids):
    """Σ_n (∂ℓ_n/∂W)² by plain autograd, one window at a time, every parameter requiring grad."""
    m = copy.deepcopy(model)
    out = {}
    for n in range(ids.shape[0]):
        m.zero_grad(set_to_none=True)
        x = ids[n : n + 1]
        logits = m(input_ids=x).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits.double(), x[0, 1:])  # mean over the window
        loss.backward()
        for name, p in m.named_parameters():
            if "layers." in name and name.endswith(".weight") and p.dim() == 2:
                key = name[: -len(".weight")]
                out[key] = out.get(key, 0) + p.grad.double() ** 2
    return out


def _block0_input_sqnorm(model, ids):
    """Σ_t x_tj² of every Linear of block 0 over all tokens (forward hooks on the dense model)."""
    sq = {}
    hooks = [
        mod.register_forward_pre_hook(lambda mod, a, n=n: sq.__setitem__(n, sq.get(n, 0) + a[0].double().pow(2).sum((0, 1))))
        for n, mod in model.model.layers[0].named_modules() if isinstance(mod, torch.nn.Linear)
    ]  # fmt: skip
    with torch.no_grad():
        for n in range(ids.shape[0]):
            model(input_ids=ids[n : n + 1])
    for h in hooks:
        h.remove()
    return sq


def test_gradient_statistic_equals_naive_per_window_autograd():
    model, ids = make_llama(), _ids()
    targets = target_linears(model, PruneConfig())
    got = gradient_sq(model, targets, ids)
    want = _naive_grad_sq(model, ids)
    assert set(got) == set(want) == set(targets)
    for name in targets:
        assert got[name].dtype == torch.float32 and got[name].shape == targets[name].weight.shape
        assert torch.allclose(got[name].double(), want[name], rtol=1e-3, atol=1e-12), name
    assert all(float(g.sum()) > 0 for g in got.values())


def test_prepass_leaves_the_model_as_it_was():
    model, ids = make_llama(), _ids()
    model.lm_head.weight.requires_grad_(False)  # a flag the caller chose must survive
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gradient_sq(model, target_linears(model, PruneConfig()), ids)
    for n, p in model.named_parameters():
        assert p.grad is None and torch.equal(p, before[n])
        assert p.requires_grad == (n != "lm_head.weight")
    assert not model.training


@pytest.mark.parametrize("alpha", [100.0, 3.0])
def test_block0_mask_equals_direct_gblm_score(alpha):
    """Block 0's inputs are the same for every method, so its mask is the top-50% per row of
    |W|·√(Σx²/N) + |W|·α·√Σg² computed directly."""
    model, ids = make_llama(), _ids()
    dense = copy.deepcopy(model)
    g2, x2 = _naive_grad_sq(dense, ids), _block0_input_sqnorm(dense, ids)
    pk.prune_(model, PruneConfig(method="gblm", sparsity=0.5, method_args={"alpha": alpha}), ids, progress=False)
    N = ids.shape[0]
    for short, x in x2.items():
        name = f"model.layers.0.{short}"
        W = dict(dense.named_modules())[name].weight.detach().double()
        S = W.abs() * (x / N).sqrt()[None, :] + W.abs() * alpha * g2[name].sqrt()
        k = W.shape[1] // 2
        keep = torch.zeros_like(W, dtype=torch.bool).scatter_(1, S.topk(W.shape[1] - k, dim=1).indices, True)
        got = dict(model.named_modules())[name].weight != 0
        assert (got != keep).sum() <= 2, name  # ties between float32 and float64 scores at most


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", None)])
def test_exact_sparsity_and_nm_validity(pattern, sparsity):
    model = make_llama()
    rep = pk.prune_(model, PruneConfig(method="gblm", pattern=pattern, sparsity=sparsity), _ids(), progress=False)
    pat = parse_pattern(pattern)
    want = 0.5 if sparsity is None else sparsity
    for name, lin in target_linears(model, PruneConfig()).items():
        W = lin.weight
        if pattern == "2:4":
            assert pat.is_satisfied(W), name
        else:  # per output row, exactly
            zeros = (W == 0).sum(1)
            assert torch.all(zeros == int(round(W.shape[1] * want))), name
    assert rep.timings["gradient_prepass"] > 0 and rep.method == "gblm"


def test_alpha_zero_gives_wandas_mask():
    ids = _ids()
    a, b = make_llama(), make_llama()
    pk.prune_(a, PruneConfig(method="gblm", method_args={"alpha": 0}), ids, progress=False)
    pk.prune_(b, PruneConfig(method="wanda"), ids, progress=False)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_gradient_term_changes_the_mask():
    ids = _ids()
    a, b = make_llama(), make_llama()
    pk.prune_(a, PruneConfig(method="gblm", method_args={"alpha": 1e6}), ids, progress=False)
    pk.prune_(b, PruneConfig(method="wanda"), ids, progress=False)
    differ = sum(int(((p == 0) != (q == 0)).sum()) for p, q in zip(a.parameters(), b.parameters()))
    assert differ > 0


def test_saved_folder_reloads_equal(tmp_path, tokenizer):
    model = make_llama()
    rep = pk.prune_(model, PruneConfig(method="gblm", pattern="2:4"), _ids(), progress=False)
    out = pk.save_pretrained_atomic(model, tokenizer, tmp_path / "o", rep.to_dict())
    again, _ = pk.load_model(str(out))
    for (n, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), n


def test_bad_alpha_is_one_line():
    with pytest.raises(ConfigError, match="alpha=-1"):
        pk.get_method("gblm", alpha=-1)


def test_gradient_statistic_of_gpt2_conv1d_is_seen_as_out_by_in():
    """GPT-2 stores Conv1D weights [in, out]: the statistic is the transpose of the parameter's."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=384, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    ids = _ids(n=2, seqlen=16)
    targets = target_linears(model, PruneConfig())
    got = gradient_sq(model, targets, ids)
    ref = copy.deepcopy(model)
    want = {}
    for n in range(ids.shape[0]):
        ref.zero_grad(set_to_none=True)
        ref(input_ids=ids[n : n + 1], labels=ids[n : n + 1]).loss.backward()
        for name, mod in ref.named_modules():
            if name in targets:
                want[name] = want.get(name, 0) + mod.weight.grad.T.double() ** 2
    for name, lin in targets.items():
        assert got[name].shape == lin.weight.T.shape  # [out, in]
        assert torch.allclose(got[name].double(), want[name], rtol=1e-4, atol=1e-14), name
    pk.prune_(model, PruneConfig(method="gblm", pattern="2:4"), ids, progress=False)
    assert all(parse_pattern("2:4").is_satisfied(lin.weight.T) for lin in targets.values())


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_gradient_statistic_of_fused_experts_is_each_experts_slice(family):
    """Fused MoE experts (a 3-D parameter, transposed in GPT-OSS): each expert's [out, in] slice
    of the autograd gradient; a router is never a target."""
    import transformers

    kw = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, num_experts_per_tok=2, max_position_embeddings=64)  # fmt: skip
    if family == "mixtral":
        cfg, cls = transformers.MixtralConfig(num_local_experts=4, **kw), transformers.MixtralForCausalLM
    else:
        cfg = transformers.GptOssConfig(num_local_experts=4, sliding_window=8,
                                        layer_types=["sliding_attention", "full_attention"], **kw)  # fmt: skip
        cls = transformers.GptOssForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).eval()
    ids = _ids(n=2, seqlen=16)
    targets = target_linears(model, PruneConfig())
    got = gradient_sq(model, targets, ids)
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    want: dict = {}
    for n in range(ids.shape[0]):
        ref.zero_grad(set_to_none=True)
        ref(input_ids=ids[n : n + 1], labels=ids[n : n + 1]).loss.backward()
        for name, t in targets.items():
            if ".experts." in name:
                mod_name, e, p = name.rsplit(".", 2)
                g = params[f"{mod_name}.{p}"].grad[int(e)]
                g = g.T if getattr(t.module, "is_transposed", False) else g
            else:
                g = params[f"{name}.weight"].grad
            want[name] = want.get(name, 0) + g.double() ** 2
    assert any(".experts." in n for n in targets) and not any("router" in n or n.endswith(".gate") for n in targets)
    for name, t in targets.items():
        assert got[name].shape == t.weight.shape, name
        assert torch.allclose(got[name].double(), want[name], rtol=1e-4, atol=1e-14), name
