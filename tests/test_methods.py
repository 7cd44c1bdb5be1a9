"""Contract battery over (method, pattern, sparsity) + golden hand-computed cases."""

import copy

import pytest
import torch

import prunekit as pk
from prunekit.engine.stats import LayerStats, Stat
from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods import Magnitude, SparseGPT, Wanda, get_method
from prunekit.patterns import NM, Unstructured

METHOD_CASES = [
    (m, pat, s)
    for m in ("magnitude", "wanda", "sparsegpt")
    for pat, s in (("unstructured", 0.5), ("unstructured", 0.3), ("unstructured", 0.7), ("2:4", None), ("4:8", None))
]


def _targets(model):
    return {n: m.weight.detach().clone() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in n}  # fmt: skip


@pytest.mark.parametrize("method,pattern,sparsity", METHOD_CASES)
def test_contract(method, pattern, sparsity, tiny_llama, calib_ids):
    model = tiny_llama
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = pk.PruneConfig(method=method, pattern=pattern, sparsity=sparsity)
    report = pk.prune_(model, cfg, calib_ids, progress=False)
    target = cfg.resolved_sparsity()
    after = _targets(model)
    assert len(after) == 14 and len(report.layers) == 14
    for name, W in after.items():
        achieved = (W == 0).float().mean().item()
        assert abs(achieved - target) <= 0.005, (name, achieved)
        assert W.dtype == before[name + ".weight"].dtype
        if pattern != "unstructured":
            assert pk.parse_pattern(pattern).is_satisfied(W), name
    # modules outside the targets are unchanged
    for k, v in model.state_dict().items():
        if not (".layers." in k and k.endswith("_proj.weight")):
            assert torch.equal(v, before[k]), k
    assert abs(report.sparsity - target) <= 0.005
    # same seed / same data => identical weights
    model2 = copy.deepcopy(model)
    for k, v in before.items():
        model2.state_dict()[k].copy_(v)
    pk.prune_(model2, cfg, calib_ids, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k


def test_bf16_weights_written_back_in_dtype(tiny_llama, calib_ids):
    model = tiny_llama.to(torch.bfloat16)
    pk.prune_(model, pk.PruneConfig(method="sparsegpt"), calib_ids, progress=False)
    W = model.model.layers[0].mlp.down_proj.weight
    assert W.dtype == torch.bfloat16 and abs((W == 0).float().mean().item() - 0.5) < 0.005


def test_include_exclude_targets(tiny_llama, calib_ids):
    cfg = pk.PruneConfig(method="wanda", targets=pk.TargetSpec(include=("mlp",), exclude=("re:layers\\.1\\.",)))
    rep = pk.prune_(tiny_llama, cfg, calib_ids, progress=False)
    assert sorted(lr.name for lr in rep.layers) == [
        "model.layers.0.mlp.down_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    assert (tiny_llama.model.layers[1].mlp.up_proj.weight != 0).all()
    assert (tiny_llama.model.layers[0].self_attn.q_proj.weight != 0).all()


def test_opt_family(tiny_opt, calib_ids):
    rep = pk.prune_(tiny_opt, pk.PruneConfig(method="sparsegpt", pattern="2:4"), calib_ids, progress=False)
    assert len(rep.layers) == 12 and abs(rep.sparsity - 0.5) < 1e-6
    assert NM(2, 4).is_satisfied(tiny_opt.model.decoder.layers[1].fc2.weight)


def test_unknown_method_and_bad_settings():
    with pytest.raises(ConfigError, match="did you mean 'wanda'"):
        get_method("wandaa")
    with pytest.raises(ConfigError, match="no setting"):
        get_method("sparsegpt", blocksize=3)
    with pytest.raises(ConfigError, match="fixes sparsity"):
        pk.PruneConfig(method="wanda", pattern="2:4", sparsity=0.6).validate()


def test_recipe_yaml_round_trip():
    cfg = pk.PruneConfig(method="sparsegpt", pattern="2:4", method_args={"block_size": 64},
                         targets=pk.TargetSpec(exclude=("re:.*down_proj",)),
                         calib=pk.CalibConfig(source="x.jsonl", nsamples=32, seed=3))  # fmt: skip
    assert pk.PruneConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ConfigError, match="unknown key methd"):
        pk.PruneConfig.from_dict({"methd": "wanda"})


# --- golden cases ------------------------------------------------------------------------


def _stats(**t):
    return LayerStats("golden", 4, {getattr(Stat, k): v for k, v in t.items()})


def test_golden_magnitude_per_matrix_vs_per_row():
    W = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    out, _ = Magnitude().prune(W, _stats(), Unstructured(), 0.5)
    assert out.tolist() == [[0, 0, 0, 0], [10, 20, 30, 40]]  # the 4 smallest of the matrix
    out, _ = Magnitude(per_row=True).prune(W, _stats(), Unstructured(), 0.5)
    assert out.tolist() == [[0, 0, 3, 4], [0, 0, 30, 40]]


def test_golden_wanda_per_row_differs_from_per_layer():
    W = torch.tensor([[4.0, 1.0, -2.0, 1.0], [1.0, 2.0, 3.0, -4.0]])
    sq = torch.tensor([1.0, 100.0, 1.0, 4.0])  # ‖X_j‖₂ = 1, 10, 1, 2
    # scores: row0 = [4, 10, 2, 2]; row1 = [1, 20, 3, 8]
    out, _ = Wanda().prune(W, _stats(INPUT_SQNORM=sq), Unstructured("row"), 0.5)
    assert out.tolist() == [[4, 1, 0, 0], [0, 2, 0, -4]]
    out24, _ = Wanda().prune(W, _stats(INPUT_SQNORM=sq), NM(2, 4), 0.5)
    assert out24.tolist() == [[4, 1, 0, 0], [0, 2, 0, -4]]
    # scale row 1 up: a per-layer ranking now empties row 0, the per-row ranking does not
    W2 = W * torch.tensor([[1.0], [11.0]])  # row1 scores = [11, 220, 33, 88]
    row, _ = Wanda().prune(W2, _stats(INPUT_SQNORM=sq), Unstructured("row"), 0.5)
    layer, _ = Wanda().prune(W2, _stats(INPUT_SQNORM=sq), Unstructured("layer"), 0.5)
    assert row.tolist() == [[4, 1, 0, 0], [0, 22, 0, -44]]
    assert layer.tolist() == [[0, 0, 0, 0], [11, 22, 33, -44]]


def _direct_obs(W, H, nm: NM, damp):
    """Non-blocked OBS: prune column j, update columns j+1.. with inv(H[j:, j:]) explicitly."""
    W = W.double().clone()
    H = H.double().clone()
    H += damp * H.diag().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    cols = W.shape[1]
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for j in range(cols):
        Finv = torch.linalg.inv(H[j:, j:])  # inverse Hessian of the remaining columns
        if j % nm.m == 0:
            # selection uses [inv(H[k:, k:])]_00 for each k in the group, on current weights
            d = torch.stack([torch.linalg.inv(H[k:, k:])[0, 0] for k in range(j, j + nm.m)])
            sal = W[:, j : j + nm.m] ** 2 / d[None, :]
            drop = torch.topk(sal, nm.m - nm.n, dim=1, largest=False).indices
            pruned[:, j : j + nm.m].scatter_(1, drop, True)
        w = W[:, j].clone()
        q = torch.where(pruned[:, j], torch.zeros_like(w), w)
        W[:, j:] -= ((w - q) / Finv[0, 0])[:, None] * Finv[0, :][None, :]
        W[:, j] = q
    return W


def test_golden_sparsegpt_matches_direct_obs():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 16, generator=g, dtype=torch.float64)
    H = 2 * X.T @ X / 256
    W = torch.randn(6, 16, generator=g, dtype=torch.float64)
    ref = _direct_obs(W, H, NM(2, 4), 0.01)
    for bs in (4, 8, 128):  # lazy batch updates must not change the result
        out, info = SparseGPT(block_size=bs).prune(W, _stats(HESSIAN=H.float()), NM(2, 4), 0.5)
        assert torch.allclose(out.double(), ref, atol=1e-3, rtol=1e-3), bs
        assert info["cholesky_retries"] == 0


def _reference_sparsegpt_unstructured(W, H, sparsity, B, damp):
    """Algorithm 1 as printed: the reference code's U (Cholesky → inverse → Cholesky), full-row
    OBS updates column by column, the adaptive mask chosen at each block start, in float64."""
    W = W.double().clone()
    H = H.double().clone()
    H += damp * H.diag().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    cols = W.shape[1]
    for i1 in range(0, cols, B):
        i2 = min(i1 + B, cols)
        sal = W[:, i1:i2] ** 2 / U.diag()[i1:i2] ** 2
        k = int(round(sal.numel() * sparsity))
        mask = torch.zeros_like(sal, dtype=torch.bool).flatten()
        mask[torch.argsort(sal.flatten(), stable=True)[:k]] = True
        mask = mask.view_as(sal)
        for j in range(i1, i2):
            w = W[:, j].clone()
            err = torch.where(mask[:, j - i1], w, torch.zeros_like(w)) / U[j, j]
            W[:, j:] -= err[:, None] * U[j, j:][None, :]
            W[:, j] = torch.where(mask[:, j - i1], torch.zeros_like(w), w)
    return W


@pytest.mark.parametrize("block_size,group_size", [(8, 3), (16, 32), (128, 32)])
def test_sparsegpt_unstructured_matches_algorithm_box(block_size, group_size):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(512, 40, generator=g, dtype=torch.float64) @ torch.randn(40, 40, generator=g, dtype=torch.float64)
    H = 2 * X.T @ X / 512
    W = torch.randn(12, 40, generator=g, dtype=torch.float64)
    ref = _reference_sparsegpt_unstructured(W, H, 0.6, block_size, 0.01)
    out, _ = SparseGPT(block_size=block_size, group_size=group_size).prune(
        W.float(), _stats(HESSIAN=H.float()), Unstructured(), 0.6
    )
    assert torch.equal(out == 0, ref == 0)
    assert torch.allclose(out.double(), ref, atol=1e-3, rtol=1e-3)


def test_tril_inverse_by_blocks():
    from prunekit.methods.sparsegpt import _tril_inverse

    g = torch.Generator().manual_seed(0)
    A = torch.randn(301, 301, generator=g, dtype=torch.float64)
    L = torch.linalg.cholesky(A @ A.T + 301 * torch.eye(301, dtype=torch.float64))
    Li = _tril_inverse(L, leaf=40)  # several levels of recursion, odd sizes
    assert torch.allclose(Li @ L, torch.eye(301, dtype=torch.float64), atol=1e-10)
    assert torch.equal(Li, torch.tril(Li))


def test_sparsegpt_retries_dampening_and_reports():
    H = torch.zeros(8, 8)
    H[0, 0] = 1.0
    H[1, 1] = -5.0  # indefinite: fails at 1% dampening
    W = torch.randn(4, 8)
    out, info = SparseGPT().prune(W, _stats(HESSIAN=H), Unstructured(), 0.5)
    assert info["cholesky_retries"] > 0 and info["damp"] > 0.01


def test_reconstruction_error_ordering_on_correlated_inputs():
    """The papers' prediction: sparsegpt < wanda < magnitude on correlated, outlier-heavy inputs."""
    g = torch.Generator().manual_seed(0)
    n, d = 2048, 64
    Z = torch.randn(n, d, generator=g)
    X = Z @ (torch.eye(d) + 0.5 * torch.randn(d, d, generator=g) / d**0.5)  # correlated features
    X = X * torch.linspace(0.1, 4.0, d)[torch.randperm(d, generator=g)]  # uneven feature scales
    W = torch.randn(48, d, generator=g)
    st = _stats(INPUT_SQNORM=X.pow(2).sum(0), HESSIAN=2 * X.T @ X / n)
    err = {}
    for name, m in (("magnitude", Magnitude()), ("wanda", Wanda()), ("sparsegpt", SparseGPT())):
        for pat in (Unstructured(), NM(2, 4)):
            out, _ = m.prune(W, st, pat, 0.5)
            err[name, str(pat)] = pk.api.relative_error(W, out, X)
    for pat in ("unstructured", "2:4"):
        assert err["sparsegpt", pat] < err["wanda", pat] < err["magnitude", pat], err


@pytest.mark.parametrize("shape,transposed", [((1, 16), False), ((16, 1), False), ((4, 16), True)])
def test_sparsegpt_never_modifies_its_input(shape, transposed):
    """A weight whose transpose is already contiguous (one row or column, or a column-major
    layout) must still be copied, or the caller's error report compares the result to itself."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(*(shape[::-1] if transposed else shape), generator=g)
    W = W.t() if transposed else W
    X = torch.randn(64, W.shape[1], generator=g)
    before = W.clone()
    out, _ = SparseGPT().prune(W, _stats(HESSIAN=2 * X.T @ X / 64), Unstructured(), 0.5)
    assert torch.equal(W, before)
    assert out.data_ptr() != W.data_ptr() and (out == 0).any()


@pytest.mark.parametrize("kw", [{"block_size": 126}, {"group_size": 30}])
def test_sparsegpt_nm_rejects_blocks_that_split_groups(kw):
    X = torch.randn(64, 16)
    with pytest.raises(PrunekitError, match="multiples of M=4"):
        SparseGPT(**kw).prune(torch.randn(4, 16), _stats(HESSIAN=2 * X.T @ X / 64), NM(2, 4), 0.5)
