"""ARMOR (arXiv:2510.05528): golden test against a direct re-implementation, valid N:M cores,
lower layer loss than SparseGPT, save/reload equality (prunekit.load and trust_remote_code)."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import make_llama  # noqa: E402

import prunekit as pk  # noqa: E402
from prunekit.config import PruneConfig  # noqa: E402
from prunekit.engine.stats import LayerStats, Stat  # noqa: E402
from prunekit.errors import ConfigError  # noqa: E402
from prunekit.methods import get_method  # noqa: E402
from prunekit.methods.armor import (  # noqa: E402
    ArmorLinear, _blocks_of, armor_factorize, armor_modules, armor_overhead,
)  # fmt: skip
from prunekit.patterns import NM  # noqa: E402

NM24 = NM(2, 4)


def _ids() -> torch.Tensor:
    return torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(0))


def _problem(out=16, cols=16, tokens=64, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, cols, generator=g, dtype=dtype)
    X = torch.randn(tokens, cols, generator=g, dtype=dtype) @ torch.randn(cols, cols, generator=g, dtype=dtype)
    X = X * torch.linspace(0.2, 3.0, cols, dtype=dtype)  # uneven channel scales
    return W, X.T @ X


# --- a direct re-implementation: dense block-diagonal matrices, autograd, loops over groups ---------
def _naive(W, Kfull, mask, S, b, iters, lr, swaps):
    out, cols = W.shape
    m, n = 4, 2
    Z = torch.trace(W @ Kfull @ W.T)
    Kf = Kfull / Z
    A = torch.eye(out, dtype=W.dtype).requires_grad_()
    B = torch.eye(cols, dtype=W.dtype).requires_grad_()
    onA = torch.block_diag(*[torch.ones(b, b, dtype=W.dtype)] * (out // b))
    onB = torch.block_diag(*[torch.ones(b, b, dtype=W.dtype)] * (cols // b))
    opt = torch.optim.Adam([A, B], lr=lr)
    S, mask = S.clone(), mask.clone()

    def loss(A, S, B):
        R = A @ S @ B - W
        return torch.trace(R @ Kf @ R.T)

    for _ in range(iters):
        opt.zero_grad()
        loss(A, S, B).backward()
        A.grad *= onA  # the wrappers stay block-diagonal
        B.grad *= onB
        opt.step()
        Ad, Bd = A.detach(), B.detach()
        touched: set = set()  # a group is re-solved at most once per iteration
        for _ in range(swaps):  # every (row block, column block) cell: best exact group re-solve
            base = loss(Ad, S, Bd)
            moves = []
            for p, q in itertools.product(range(out // b), range(cols // b)):
                best = (0.0, None)
                for r in range(p * b, p * b + b):
                    for c0 in range(q * b, q * b + b, m):
                        if (r, c0) in touched:
                            continue
                        S0 = S.clone()
                        S0[r, c0 : c0 + m] = 0
                        for sup in itertools.combinations(range(m), n):
                            basis = []
                            for j in sup:
                                E = torch.zeros_like(S)
                                E[r, c0 + j] = 1
                                basis.append(Ad @ E @ Bd)
                            R0 = Ad @ S0 @ Bd - W
                            Gm = torch.tensor([[torch.trace(x @ Kf @ y.T) for y in basis] for x in basis])
                            h = torch.tensor([torch.trace(x @ Kf @ R0.T) for x in basis])
                            vals = -torch.linalg.solve(Gm, h)
                            S1 = S0.clone()
                            S1[r, [c0 + j for j in sup]] = vals
                            gain = float(base - loss(Ad, S1, Bd))
                            if gain > best[0]:
                                best = (gain, (r, c0, sup, vals))
                if best[1] is not None:
                    moves.append(best[1])
            for r, c0, sup, vals in moves:
                touched.add((r, c0))
                S[r, c0 : c0 + m] = 0
                mask[r, c0 : c0 + m] = False
                for j, v in zip(sup, vals):
                    S[r, c0 + j] = v
                    mask[r, c0 + j] = True
        # core: Jacobi-preconditioned gradient step with step 1/λmax, on the kept entries
        S_ = S.clone().requires_grad_()
        loss(Ad, S_, Bd).backward()
        Ka, Kb = Ad.T @ Ad, Bd @ Kf @ Bd.T
        da, db = torch.diagonal(Ka), torch.diagonal(Kb)
        lam = torch.linalg.eigvalsh(Ka / torch.outer(da, da).sqrt())[-1] * torch.linalg.eigvalsh(
            Kb / torch.outer(db, db).sqrt())[-1]  # fmt: skip
        S = S - mask * S_.grad / (2 * torch.outer(da, db)) / lam
    return S, A.detach(), B.detach(), float(loss(A.detach(), S, B.detach()))


def _blocks(M, b):
    return torch.stack([M[i : i + b, i : i + b] for i in range(0, M.shape[0], b)])


def test_golden_against_direct_implementation():
    W, H = _problem()
    b = 8
    K = _blocks_of(H, b)  # proxy=block: the b×b diagonal blocks of H
    Kfull = torch.block_diag(*K)
    mask = NM24.select(W.abs() * torch.diagonal(H).sqrt())
    fac = armor_factorize(W, K, mask, W * mask, NM24, b, iters=3, lr=0.01, swaps=2)
    S, A, B, L = _naive(W, Kfull, mask, W * mask, b, iters=3, lr=0.01, swaps=2)
    assert fac.swaps > 0
    assert torch.equal(fac.S != 0, S != 0)  # the same groups re-selected, the same supports
    torch.testing.assert_close(fac.S, S, rtol=1e-5, atol=1e-7)  # (support solves are damped 1e-7)
    torch.testing.assert_close(fac.A, _blocks(A, b), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fac.B, _blocks(B, b), rtol=1e-5, atol=1e-7)
    assert fac.losses[-1] == pytest.approx(L, rel=1e-6)
    assert fac.losses[-1] < fac.losses[0]


def _stats(H, name="layer"):
    return LayerStats(name, 64, {Stat.HESSIAN: H.float(), Stat.INPUT_SQNORM: torch.diagonal(H).float()})


def _hloss(W, What, H):
    D = (W - What).double()
    return float(torch.trace(D @ H.double() @ D.T) / torch.trace(W.double() @ H.double() @ W.double().T))


@pytest.mark.parametrize("proxy", ["hessian", "diag", "block"])
def test_core_is_exact_2of4_and_beats_sparsegpt(proxy):
    W, H = _problem(out=32, cols=64, tokens=256, seed=1, dtype=torch.float32)
    st = _stats(H.double())
    core, info = get_method("armor", block_size=16, iters=15, proxy=proxy).prune(W, st, NM24, 0.5)
    groups = (core.reshape(32, 16, 4) != 0).sum(-1)
    assert bool((groups == 2).all())  # exactly 2 of every 4 kept (valid 2:4, sparsity exactly 50%)
    A, B = info["armor_A"], info["armor_B"]
    What = torch.block_diag(*A.double()) @ core.double() @ torch.block_diag(*B.double())
    sgpt, _ = get_method("sparsegpt").prune(W, st, NM24, 0.5)
    if proxy == "hessian":  # the real layer loss: starts at SparseGPT's solution and goes below it
        assert _hloss(W, What, H) < 0.95 * _hloss(W, sgpt, H)
    assert info["proxy_final"] < info["proxy_init"]


def test_wrapper_free_start_is_the_init():
    W, H = _problem(out=32, cols=32, seed=2, dtype=torch.float32)
    st = _stats(H)
    core, info = get_method("armor", block_size=16, iters=0, init="wanda").prune(W, st, NM24, 0.5)
    wanda, _ = get_method("wanda").prune(W, st, NM24, 0.5)
    torch.testing.assert_close(core, wanda)
    assert torch.equal(info["armor_A"], torch.eye(16).expand(2, 16, 16))


def test_armor_linear_computes_A_core_B():
    lin = torch.nn.Linear(16, 8, bias=True)
    A, B = torch.randn(2, 4, 4), torch.randn(4, 4, 4)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        ref = x @ (torch.block_diag(*A) @ lin.weight @ torch.block_diag(*B)).T + lin.bias
        from prunekit.methods.remote_code_armor import make_armor

        make_armor(lin, 4, A, B)
        torch.testing.assert_close(lin(x), ref, rtol=1e-5, atol=1e-5)
    assert isinstance(lin, ArmorLinear)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, tokenizer):
    model = make_llama()
    cfg = PruneConfig(method="armor", pattern="2:4", method_args={"block_size": 16, "iters": 4})
    report = pk.prune_(model, cfg, _ids(), progress=False)
    with torch.no_grad():
        ref = model(_ids()).logits
    out = pk.save_pretrained_atomic(model, tokenizer, tmp_path_factory.mktemp("armor") / "m", {})
    return model, report, ref, out


def test_tiny_llama_prunes_and_reports(pruned):
    model, report, _, _ = pruned
    mods = armor_modules(model)
    assert len(mods) == 14 and len(report.layers) == 14
    for lr in report.layers:
        assert lr.sparsity == 0.5
        assert "armor_A" not in lr.info and lr.info["proxy_final"] < lr.info["proxy_init"]
    assert all(NM24.is_satisfied(m.weight) for m in mods.values())
    json.dumps(report.to_dict() if hasattr(report, "to_dict") else [lr.info for lr in report.layers])
    ov = armor_overhead(model)
    assert ov["wrapped_linears"] == 14 and ov["block_size"] == 16
    assert ov["wrapper_params"] == sum(m.armor_A.numel() + m.armor_B.numel() for m in mods.values())


def test_saved_folder_reloads_identically(pruned):
    _, _, ref, out = pruned
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["prunekit_armor"]["block_size"] == 16 and len(cfg["prunekit_armor"]["modules"]) == 14
    assert cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_prunekit_armor.")
    model, _ = pk.load(out)
    assert len(armor_modules(model)) == 14
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()).logits, ref, rtol=0, atol=0)


def test_trust_remote_code_loads_identically(pruned):
    from transformers import AutoModelForCausalLM

    _, _, ref, out = pruned
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(model).__name__ == "PrunekitArmorLlamaForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()).logits, ref, rtol=0, atol=0)


def test_block_size_not_dividing_is_one_line():
    model = make_llama()
    cfg = PruneConfig(method="armor", pattern="2:4", method_args={"block_size": 24, "iters": 1})
    with pytest.raises(ConfigError) as e:
        pk.prune_(model, cfg, _ids(), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "block_size=24" in msg and "[64, 64]" in msg


def test_unstructured_pattern_is_refused():
    W, H = _problem(dtype=torch.float32)
    from prunekit.patterns import parse_pattern

    with pytest.raises(ConfigError, match="N:M patterns only"):
        get_method("armor", block_size=8).prune(W, _stats(H), parse_pattern("unstructured"), 0.5)
    with pytest.raises(ConfigError, match="block_size"):
        get_method("armor", block_size=2).prune(W, _stats(H), NM24, 0.5)


def test_cli_prune_and_bad_block_size(tiny_llama_dir, calib_txt, tmp_path, capsys):
    from prunekit.cli.main import main

    base = ["prune", str(tiny_llama_dir), "--method", "armor", "--pattern", "2:4", "--calib", str(calib_txt),
            "--nsamples", "2", "--seqlen", "16", "-q"]  # fmt: skip
    rc = main(base + ["--set", "block_size=24", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "block_size=24" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "bad").exists()
    rc = main(base + ["--set", "block_size=16", "--set", "iters=2", "--out", str(tmp_path / "ok")])
    assert rc == 0, capsys.readouterr().err
    model, _ = pk.load(tmp_path / "ok")
    assert len(armor_modules(model)) == 14


def test_streaming_is_refused_in_one_line(tiny_llama_dir, calib_txt, tmp_path, capsys):
    from prunekit.cli.main import main

    argv = ["prune", str(tiny_llama_dir), "--method", "armor", "--pattern", "2:4", "--calib", str(calib_txt),
            "--nsamples", "2", "--seqlen", "16", "-q", "--stream", "--out", str(tmp_path / "s")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "armor" in err[0] and "--stream" in err[0]
    assert not (tmp_path / "s").exists()


def test_family_without_remote_class_still_reloads_with_prunekit(tokenizer, tmp_path):
    from conftest import make_opt

    model = make_opt()
    cfg = PruneConfig(method="armor", pattern="2:4", method_args={"block_size": 16, "iters": 2})
    pk.prune_(model, cfg, _ids(), progress=False)
    with torch.no_grad():
        ref = model(_ids()).logits
    out = pk.save_pretrained_atomic(model, tokenizer, tmp_path / "opt", {})
    saved = json.loads((out / "config.json").read_text())
    assert saved["prunekit_armor"]["modules"] and "auto_map" not in saved  # no OPT remote class
    back, _ = pk.load(out)
    with torch.no_grad():
        torch.testing.assert_close(back(_ids()).logits, ref, rtol=0, atol=0)
