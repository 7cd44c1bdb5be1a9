"""D-Pruner: its dual importance against a direct re-implementation (dense Hessians from forward
hooks, an explicit inverse, per-window autograd), exact sparsity / 2:4, what the formula implies
(λ = 0 ignores the general data, λ > 0 uses it), the domain loss ordering the Taylor score
predicts, GSM8K reading and one-line errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import make_llama

import prunekit as pk
from prunekit.api import target_linears
from prunekit.config import CalibConfig, PruneConfig
from prunekit.engine.gradients import PrepassInputs
from prunekit.engine.stats import Stat
from prunekit.errors import ConfigError, DataError
from prunekit.methods.dpruner import domain_windows, qa_documents
from prunekit.models.discovery import engine_adapter
from prunekit.patterns import parse_pattern

SEQ = 32


def _ids(n=4, seed=0):
    return torch.randint(0, 384, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def _cfg(domain, **kw):
    return PruneConfig(method="dpruner", calib=CalibConfig(nsamples=4, seqlen=SEQ),
                       method_args={"domain": str(domain), **kw.pop("args", {})}, **kw)  # fmt: skip


def _prepass(model, general, tokenizer, domain, **args):
    m = pk.get_method("dpruner", domain=str(domain), **args)
    cfg = _cfg(domain)
    inp = PrepassInputs(model, engine_adapter(model), target_linears(model, cfg), general, tokenizer, cfg)
    return {n: d[Stat.DUAL_IMPORTANCE] for n, d in m.prepass(inp).items()}


def _naive_importance(model, general, domain_ids, lam, lr, damp=0.01):
    """G from explicit Hessians and inverse; S summed over per-window autograd gradients."""
    m = copy.deepcopy(model)
    lins = {n: mod for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and "layers." in n}
    H = {n: torch.zeros(mod.in_features, mod.in_features, dtype=torch.float64) for n, mod in lins.items()}
    def add(n, x):
        X = x.reshape(-1, x.shape[-1]).double()
        H[n].add_(X.T @ X)

    hooks = [mod.register_forward_pre_hook(lambda mod, a, n=n: add(n, a[0])) for n, mod in lins.items()]
    with torch.no_grad():
        for i in range(general.shape[0]):
            m(input_ids=general[i : i + 1])
    for h in hooks:
        h.remove()
    ntok = general.numel()
    G = {}
    for n, mod in lins.items():
        Hn = 2 * H[n] / ntok
        Hn = Hn + damp * Hn.diagonal().mean() * torch.eye(Hn.shape[0], dtype=torch.float64)
        U = torch.linalg.cholesky(torch.linalg.inv(Hn), upper=True)
        G[n] = mod.weight.detach().double() ** 2 / U.diagonal()[None, :] ** 2
    S = {n: torch.zeros_like(G[n]) for n in lins}
    for i in range(domain_ids.shape[0]):
        m.zero_grad(set_to_none=True)
        x = domain_ids[i : i + 1]
        torch.nn.functional.cross_entropy(m(input_ids=x).logits[0, :-1].double(), x[0, 1:]).backward()
        for n, mod in lins.items():
            g, W = mod.weight.grad.double(), mod.weight.detach().double()
            gt = g + 2 * lam * lr**2 * G[n] * g**2
            S[n] += (gt * W - 0.5 * (gt * W) ** 2).abs()
    return S


@pytest.mark.parametrize("lam,lr", [(0.1, 0.03), (1e9, 0.5)])
def test_dual_importance_equals_direct_computation(tokenizer, calib_txt, lam, lr):
    model, general = make_llama(), _ids()
    got = _prepass(model, general, tokenizer, calib_txt, lam=lam, lr=lr)
    dom = domain_windows(str(calib_txt), tokenizer, 4, SEQ, 0)
    want = _naive_importance(model, general, dom, lam, lr)
    assert set(got) == set(want)
    for n in want:
        assert got[n].dtype == torch.float32
        assert torch.allclose(got[n].double(), want[n], rtol=2e-3, atol=1e-9), n


def test_lambda_zero_ignores_the_general_data_and_lambda_uses_it(tokenizer, calib_txt):
    model = make_llama()
    a = _prepass(model, _ids(seed=1), tokenizer, calib_txt, lam=0.0)
    b = _prepass(model, _ids(seed=2), tokenizer, calib_txt, lam=0.0)
    assert all(torch.equal(a[n], b[n]) for n in a)  # S depends only on the domain gradients
    c = _prepass(model, _ids(seed=1), tokenizer, calib_txt, lam=1e9, lr=0.5)
    d = _prepass(model, _ids(seed=2), tokenizer, calib_txt, lam=1e9, lr=0.5)
    assert any(not torch.allclose(c[n], d[n]) for n in c)  # G (general data) now enters S
    assert all(torch.all(c[n] >= 0) for n in c)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.3), ("2:4", None)])
def test_exact_sparsity_per_matrix_and_nm(tokenizer, calib_txt, pattern, sparsity):
    model = make_llama()
    rep = pk.prune_(model, _cfg(calib_txt, pattern=pattern, sparsity=sparsity), _ids(), tokenizer, progress=False)
    pat = parse_pattern(pattern)
    for name, lin in target_linears(model, PruneConfig()).items():
        W = lin.weight
        if pattern == "2:4":
            assert pat.is_satisfied(W), name
        else:
            assert int((W == 0).sum()) == round(W.numel() * sparsity), name
    assert rep.pattern in ("2:4", "unstructured:layer")


def _domain_loss(model, ids):
    with torch.no_grad():
        return float(sum(model(input_ids=ids[i : i + 1], labels=ids[i : i + 1]).loss for i in range(ids.shape[0])))


def _mask_by(model, S, frac, lowest):
    for n, mod in model.named_modules():
        if n in S:
            k = round(S[n].numel() * frac)
            idx = S[n].flatten().topk(k, largest=not lowest).indices
            mod.weight.data.view(-1)[idx] = 0.0


def test_lowest_dual_importance_is_what_the_domain_loss_can_spare(tokenizer, calib_txt):
    """S estimates the domain-loss increase of removing a weight: removing the 20% of each
    matrix with the lowest S costs less domain loss than removing the 20% with the highest S."""
    dom = domain_windows(str(calib_txt), tokenizer, 4, SEQ, 0)
    for seed in range(2):
        model = _fitted(make_llama(seed=seed), dom)  # a random model has no loss to lose
        S = _prepass(model, _ids(), tokenizer, calib_txt)
        low, high = copy.deepcopy(model), copy.deepcopy(model)
        _mask_by(low, S, 0.2, lowest=True)
        _mask_by(high, S, 0.2, lowest=False)
        assert _domain_loss(low, dom) < _domain_loss(high, dom)


def _fitted(model, ids, steps=60):
    """A few Adam steps on ``ids`` so that the tiny model has a domain to forget."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    return model.eval()


def test_gsm8k_documents_and_errors(tmp_path, tokenizer):
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"question": "What is 2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"}) + "\n")
    assert qa_documents(f) == ["Question: What is 2+2?\nAnswer: 2+2=<<2+2=4>>4\n#### 4"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no qa"}) + "\n")
    with pytest.raises(DataError, match="question"):
        qa_documents(bad)
    with pytest.raises(DataError, match="does not exist"):
        domain_windows(f"gsm8k:{tmp_path / 'missing.jsonl'}", tokenizer, 2, 8, 0)


def test_missing_domain_is_one_line():
    with pytest.raises(ConfigError, match="--set domain=SOURCE"):
        pk.prune_(make_llama(), PruneConfig(method="dpruner"), _ids(), progress=False)


def test_refit_keeps_the_mask_and_lowers_the_layer_error(tokenizer, calib_txt):
    """refit=pcg (prunekit's option): the same mask, a lower ‖X(W − Ŵ)ᵀ‖² on the general data."""
    general, dense = _ids(), make_llama()
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    pk.prune_(a, _cfg(calib_txt), general, tokenizer, progress=False)
    rep = pk.prune_(b, _cfg(calib_txt, args={"refit": "pcg"}), general, tokenizer, progress=False)
    X = {}
    lins0 = {n: m for n, m in dense.model.layers[0].named_modules() if isinstance(m, torch.nn.Linear)}
    hooks = [m.register_forward_pre_hook(lambda m, x, n=n: X.setdefault(n, []).append(x[0].reshape(-1, x[0].shape[-1])))
             for n, m in lins0.items()]  # fmt: skip
    with torch.no_grad():
        dense(input_ids=general)
    for h in hooks:
        h.remove()
    for n, m in dense.named_modules():
        if isinstance(m, torch.nn.Linear) and "layers." in n:
            assert torch.equal(dict(a.named_modules())[n].weight == 0, dict(b.named_modules())[n].weight == 0), n
    for short, xs in X.items():
        Xn, n = torch.cat(xs).double(), f"model.layers.0.{short}"
        W = lins0[short].weight.detach().double()
        err = lambda m: float((Xn @ (W - dict(m.named_modules())[n].weight.detach().double()).T).pow(2).sum())  # noqa: E731
        assert err(b) < err(a), n
    assert all(lr.info["loss_refit"] <= lr.info["loss_mask"] + 1e-9 for lr in rep.layers)


def test_bench_section_compares_lambda_probes_on_both_metrics():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("dpruner_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "dpruner.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    d = {"gsm8k_answer_ppl": 7.0, "wikitext2_ppl": 80.0}
    assert bench._versus({"gsm8k_answer_ppl": 7.9, "wikitext2_ppl": 96.0}, d) == "worse on both"
    assert bench._versus({"gsm8k_answer_ppl": 6.0, "wikitext2_ppl": 70.0}, d) == "better on both"
    assert bench._versus({"gsm8k_answer_ppl": 6.0, "wikitext2_ppl": 90.0}, d) == "mixed"
