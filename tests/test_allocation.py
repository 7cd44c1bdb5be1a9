"""Per-layer allocation: OWL against a direct re-implementation, exact means, the blocks hook."""

from __future__ import annotations

import pytest
import torch
from conftest import make_llama

import prunekit as pk
from prunekit.allocation import get_allocator, rebalance
from prunekit.allocation.owl import owl_levels
from prunekit.errors import ConfigError


def _direct_owl(model, calib, M: float, lam: float, S: float) -> tuple[list[float], list[float]]:
    """OWL from scratch: hooks on the dense model give each Linear's Σ x², then the paper's formula."""
    sq: dict[str, torch.Tensor] = {}
    hooks = []
    layers = model.model.layers
    for i, blk in enumerate(layers):
        for n, m in blk.named_modules():
            if isinstance(m, torch.nn.Linear):
                key = f"{i}.{n}"

                def hook(mod, inp, out, key=key):
                    x = inp[0].reshape(-1, inp[0].shape[-1]).double()
                    sq[key] = sq.get(key, 0) + (x * x).sum(0)

                hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(calib)
    for h in hooks:
        h.remove()
    ratios = []
    for i, blk in enumerate(layers):
        scores = torch.cat([
            (m.weight.double().abs() * sq[f"{i}.{n}"].sqrt()[None, :]).flatten()
            for n, m in blk.named_modules() if isinstance(m, torch.nn.Linear)
        ])  # fmt: skip
        ratios.append(float((scores > M * scores.mean()).double().mean()))
    lo, hi = min(ratios), max(ratios)
    d = [(r - lo) / (hi - lo) * 2 * lam for r in ratios]
    keep = [x - sum(d) / len(d) + (1 - S) for x in d]
    return ratios, [1 - k for k in keep]


def _outlier_model():
    """Four blocks whose outlier content differs: block b gets b large input columns in q/k/v."""
    model = make_llama(layers=4, seed=1)
    with torch.no_grad():
        for b, blk in enumerate(model.model.layers):
            for proj in (blk.self_attn.q_proj, blk.self_attn.k_proj, blk.self_attn.v_proj):
                proj.weight[:, : 3 * b] *= 8.0
    return model


def test_owl_matches_a_direct_reimplementation(calib_ids):
    model = _outlier_model()
    S, M, lam = 0.7, 5.0, 0.08
    ratios, levels = _direct_owl(model, calib_ids, M, lam, S)
    assert len(set(round(r, 6) for r in ratios)) == 4  # the construction gives distinct ratios
    cfg = pk.PruneConfig(method="wanda", sparsity=S, allocation="owl", allocation_args={"M": M, "lam": lam})
    rep = pk.prune_(model, cfg, calib_ids, progress=False, report_tokens=0)
    got = rep.allocation["outlier_ratio"]
    for b in range(4):
        assert got[str(b)] == pytest.approx(ratios[b], rel=1e-4, abs=1e-7)
        assert rep.allocation["block_sparsity"][str(b)] == pytest.approx(levels[b], abs=1e-9)
    for lr in rep.layers:  # every Linear of block b is pruned at block b's level
        b = int(lr.name.split(".")[2])
        assert lr.target_sparsity == pytest.approx(levels[b], abs=1e-9)
        assert abs(lr.sparsity - levels[b]) <= 1.0 / lr.shape[1] + 1e-9  # per-row rounding only
    # more outliers -> lower sparsity; the spread is 2 lambda; the mean is S
    order = sorted(range(4), key=lambda b: ratios[b])
    assert [levels[b] for b in order] == sorted(levels, reverse=True)
    assert max(levels) - min(levels) == pytest.approx(2 * lam)
    assert sum(levels) / 4 == pytest.approx(S)


def test_owl_keeps_the_parameter_weighted_mean_when_blocks_differ(calib_ids):
    model = _outlier_model()
    # exclude a Linear from two blocks: the blocks now hold different numbers of target weights
    cfg = pk.PruneConfig(method="wanda", sparsity=0.6, allocation="owl",
                         targets=pk.TargetSpec(exclude=("re:layers\\.[01]\\.mlp\\.down_proj",)))  # fmt: skip
    rep = pk.prune_(model, cfg, calib_ids, progress=False, report_tokens=0)
    n = sum(lr.shape[0] * lr.shape[1] for lr in rep.layers)
    mean = sum(lr.target_sparsity * lr.shape[0] * lr.shape[1] for lr in rep.layers) / n
    assert mean == pytest.approx(0.6, abs=1e-12)
    assert len({round(lr.target_sparsity, 9) for lr in rep.layers}) > 1


def test_owl_with_lambda_zero_is_uniform(calib_ids):
    a, b = _outlier_model(), _outlier_model()
    pk.prune_(a, pk.PruneConfig(method="wanda", sparsity=0.5, allocation="owl", allocation_args={"lam": 0}),
              calib_ids, progress=False)  # fmt: skip
    pk.prune_(b, pk.PruneConfig(method="wanda", sparsity=0.5), calib_ids, progress=False)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_owl_levels_and_rebalance_math():
    lv = owl_levels([0.01, 0.03, 0.02], 0.5, 0.1)
    assert lv == pytest.approx([0.6, 0.4, 0.5]) and owl_levels([0.2, 0.2], 0.5, 0.1) == [0.5, 0.5]
    s = rebalance([0.98, 0.2, 0.2], [1, 1, 2], 0.7, cap=0.99)
    assert max(s) <= 0.99 and sum(x * n for x, n in zip(s, [1, 1, 2])) / 4 == pytest.approx(0.7)


def test_blocks_allocator_is_the_per_block_hook(calib_ids):
    model = make_llama(layers=2)
    cfg = pk.PruneConfig(method="magnitude", sparsity=0.5, allocation="blocks",
                         allocation_args={"levels": "0.3,0.7", "rebalance": False})  # fmt: skip
    rep = pk.prune_(model, cfg, calib_ids, progress=False)
    by_block = {int(lr.name.split(".")[2]): lr.target_sparsity for lr in rep.layers}
    assert by_block == {0: 0.3, 1: 0.7}
    cfg = pk.PruneConfig(method="magnitude", sparsity=0.5, allocation="blocks", allocation_args={"levels": "0.1,0.3"})
    rep = pk.prune_(make_llama(layers=2), cfg, calib_ids, progress=False)
    assert {int(lr.name.split(".")[2]): round(lr.target_sparsity, 9) for lr in rep.layers} == {0: 0.4, 1: 0.6}
    with pytest.raises(ConfigError, match="levels has 3 values"):
        pk.prune_(make_llama(layers=2), pk.PruneConfig(method="magnitude", allocation="blocks",
                  allocation_args={"levels": "0.1,0.2,0.3"}), calib_ids, progress=False)  # fmt: skip


def test_allocation_bad_input():
    with pytest.raises(ConfigError, match="fixes it at 0.5"):
        pk.PruneConfig(method="wanda", pattern="2:4", allocation="owl").validate()
    with pytest.raises(ConfigError, match="structured method"):
        pk.PruneConfig(method="flap", allocation="owl").validate()
    with pytest.raises(ConfigError, match="lam=0.7 is out of range"):
        pk.PruneConfig(method="wanda", allocation="owl", allocation_args={"lam": 0.7}).validate()
    with pytest.raises(ConfigError, match="did you mean 'owl'"):
        pk.PruneConfig(method="wanda", allocation="owll").validate()
    with pytest.raises(ConfigError, match="has no setting"):
        get_allocator("owl", {"m": 5})
    cfg = pk.PruneConfig(method="sparsegpt", sparsity=0.7, allocation="owl", allocation_args={"M": 7.0})
    assert pk.PruneConfig.from_yaml(cfg.to_yaml()) == cfg


def test_every_allocation_setting_with_bad_values_on_the_cli(tmp_path, capsys, tiny_llama_dir, calib_txt):
    from prunekit.allocation import ALLOCATORS
    from prunekit.cli.main import main
    from prunekit.settings import schema_of

    for name in ALLOCATORS.names():
        for key in schema_of(ALLOCATORS.get(name)):
            for v in ("abc", "-1", "nan", "", "1e30"):
                argv = [str(tiny_llama_dir), "-m", "wanda", "--allocation", name, "--alloc-set", f"{key}={v}",
                        "--calib", str(calib_txt), "--nsamples", "2", "--seqlen", "16", "-q", "--out", str(tmp_path / "o")]  # fmt: skip
                rc = main(["prune", *argv])
                err = capsys.readouterr().err
                assert "Traceback" not in err and (rc == 0 or (rc == 2 and err.count("\n") == 1)), (name, key, v, err)
                if rc == 0:
                    import shutil

                    shutil.rmtree(tmp_path / "o")
