"""ALPS and SparseGPT's least-squares refit: the refit is the exact optimum on its mask, and the
layer error orderings the ALPS paper predicts (refit <= OBS pass, refit <= ADMM support alone)."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.engine.stats import LayerStats, Stat
from prunekit.methods import get_method
from prunekit.methods.alps import layer_loss, pcg_refit
from prunekit.patterns import parse_pattern


def _layer(n_out=24, n_in=32, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n_in, generator=g) @ (torch.eye(n_in) + 0.3 * torch.randn(n_in, n_in, generator=g))
    X[:, :3] *= 6.0  # a few outlier features
    W = torch.randn(n_out, n_in, generator=g)
    H = 2 * X.T @ X / n
    return X, W, LayerStats("l", n, {Stat.HESSIAN: H, Stat.INPUT_SQNORM: (X * X).sum(0)})


def _direct_refit(W0, H, keep):
    """Row by row: w_S = H_SS⁻¹ H_S,: w₀ (the normal equations on the support)."""
    out = torch.zeros_like(W0, dtype=torch.float64)
    H64, W64 = H.double(), W0.double()
    for r in range(W0.shape[0]):
        S = keep[r].nonzero().flatten()
        out[r, S] = torch.linalg.solve(H64[S][:, S], H64[S] @ W64[r])
    return out


def test_pcg_refit_is_the_least_squares_optimum_on_the_mask():
    _, W, st = _layer()
    H = st[Stat.HESSIAN]
    keep = parse_pattern("unstructured").select(W.abs(), 0.6)
    got = pcg_refit(W, H, keep, iters=200)
    want = _direct_refit(W, H, keep)
    assert torch.equal(got != 0, keep & (want != 0))
    assert torch.allclose(got.double(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", 0.5)])
def test_sparsegpt_refit_keeps_the_mask_and_lowers_the_layer_error(pattern, sparsity):
    X, W, st = _layer()
    pat = parse_pattern(pattern)
    base, _ = get_method("sparsegpt").prune(W, st, pat, sparsity)
    ref, info = get_method("sparsegpt", refit="pcg").prune(W, st, pat, sparsity)
    assert torch.equal(base == 0, ref == 0) or bool(((ref == 0) & (base != 0)).sum() <= 2)  # same support
    assert info["loss_refit"] <= info["loss_obs"] + 1e-6
    err = lambda Wn: float((X @ (W - Wn).T).pow(2).sum())  # noqa: E731
    assert err(ref) < err(base)
    if pattern == "2:4":
        assert pat.is_satisfied(ref)
    else:
        assert abs(float((ref == 0).float().mean()) - sparsity) < 0.02


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured:layer", 0.7), ("2:4", 0.5)])
def test_alps_exact_pattern_and_refit_is_optimal(pattern, sparsity):
    X, W, st = _layer(seed=1)
    pat = parse_pattern(pattern)
    Wn, info = get_method("alps", iters=120).prune(W, st, pat, sparsity)
    assert info["loss_refit"] <= info["loss_admm"] + 1e-6
    keep = Wn != 0
    if pattern == "2:4":
        assert pat.is_satisfied(Wn)
    else:
        assert float((~keep).float().mean()) >= sparsity - 1e-9
    Hn = st[Stat.HESSIAN] / torch.diagonal(st[Stat.HESSIAN]).mean()
    Hn.diagonal().add_(0.01)
    assert layer_loss(W, Wn, Hn) == pytest.approx(layer_loss(W, _direct_refit(W, Hn, keep).float(), Hn), rel=1e-3)
    # ALPS beats magnitude pruning's error on the same budget (its objective is the error)
    mag, _ = get_method("magnitude").prune(W, st, pat, sparsity)
    assert float((X @ (W - Wn).T).pow(2).sum()) < float((X @ (W - mag).T).pow(2).sum())


def test_refit_and_alps_end_to_end(tiny_llama, calib_ids):
    import copy

    a, b, c = tiny_llama, copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    cfg = pk.PruneConfig(method="sparsegpt", pattern="2:4", propagate="dense")
    ra = pk.prune_(a, cfg, calib_ids, progress=False)
    rb = pk.prune_(b, pk.PruneConfig(method="sparsegpt", pattern="2:4", propagate="dense",
                                     method_args={"refit": "pcg"}), calib_ids, progress=False)  # fmt: skip
    for la, lb in zip(ra.layers, rb.layers):  # dense propagation: every layer saw the same inputs
        assert lb.rel_error <= la.rel_error * (1 + 1e-4) + 1e-9, la.name
        assert lb.sparsity == pytest.approx(0.5)
    rc = pk.prune_(c, pk.PruneConfig(method="alps", sparsity=0.6, method_args={"iters": 30}), calib_ids, progress=False)
    assert rc.sparsity == pytest.approx(0.6, abs=0.01)
    with pytest.raises(pk.errors.ConfigError, match="refit=full"):
        pk.PruneConfig(method="sparsegpt", method_args={"refit": "full"}).validate()


def _direct_alps(W0, H, pattern, sparsity, rho=0.1, iters=60, damp=0.01):
    """The paper's ADMM written out plainly: a fresh linear solve (H + ρI) w = H w₀ − v + ρ d per
    step in float64, the same ρ schedule (every 3 steps, by how much of the support changed)."""
    W0, H = W0.double(), H.double()
    H = H / torch.diagonal(H).mean()
    H = H + damp * torch.eye(H.shape[0], dtype=H.dtype)
    keep = pattern.select(W0.abs().float(), sparsity)
    D, V, prev, k = W0 * keep, torch.zeros_like(W0), keep, int(keep.sum())
    for t in range(1, iters + 1):
        A = H + rho * torch.eye(H.shape[0], dtype=H.dtype)
        W = torch.linalg.solve(A, (H @ W0.T - V.T + rho * D.T)).T
        Z = W + V / rho
        keep = pattern.select(Z.abs().float(), sparsity)
        D = Z * keep
        V = V + rho * (W - D)
        if t % 3 == 0:
            changed = int((keep != prev).sum()) // 2
            prev = keep
            if changed == 0 and float((W - D).abs().max()) < 1e-4 * float(W0.abs().max()):
                break
            rho *= 1.3 if changed > 0.1 * k else 1.2 if changed > 0.005 * k else 1.1
    return D, keep


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("2:4", 0.5)])
def test_alps_admm_matches_a_direct_reimplementation(pattern, sparsity):
    """Golden: prunekit's ADMM (one eigendecomposition reused for every ρ, float32) picks the same
    support as a plain float64 re-implementation that solves (H + ρI) afresh every step."""
    _, W, st = _layer(seed=2)
    pat = parse_pattern(pattern)
    got, info = get_method("alps", iters=60, pcg_iters=0).prune(W, st, pat, sparsity)
    want, keep = _direct_alps(W, st[Stat.HESSIAN], pat, sparsity, iters=60)
    agree = float(((got != 0) == keep).float().mean())
    assert agree >= 0.995, f"support agreement {agree:.4f}"
    both = (got != 0) & keep
    assert torch.allclose(got[both].double(), want[both], atol=2e-3, rtol=2e-3)
    assert info["admm_steps"] >= 3
