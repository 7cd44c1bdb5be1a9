"""DSnoT mask refinement (``--set refine=dsnot``): a golden test against a direct row-by-row
re-implementation, the exact sparsity / N:M validity it must keep, the objective it optimises
(the expected error |Δ_i| never grows), the layer error it should lower, and the settings'
validation, recipe round trip and export."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.cli.main import main
from prunekit.config import PruneConfig
from prunekit.engine.stats import LayerStats, Stat
from prunekit.errors import ConfigError
from prunekit.methods import Refined, check_settings, get_method, settings_schema
from prunekit.methods.dsnot import DSnoT, expected_error
from prunekit.patterns import NM, parse_pattern


def _layer(n_out=24, n_in=32, n=1024, seed=0, offset=1.0):
    """Correlated inputs with non-zero means (as LLM activations have), and their statistics."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(n_in) + 0.3 * torch.randn(n_in, n_in, generator=g)
    X = torch.randn(n, n_in, generator=g) @ mix * torch.rand(n_in, generator=g)
    X = X + offset * torch.randn(n_in, generator=g) + 0.5 * torch.randn(n, 1, generator=g)  # means + a shared factor
    W = 0.1 * torch.randn(n_out, n_in, generator=g)
    stats = LayerStats("model.layers.0.self_attn.q_proj", n, {
        Stat.INPUT_SQNORM: X.pow(2).sum(0), Stat.INPUT_MEAN: X.mean(0),
        Stat.INPUT_VAR: X.var(0, unbiased=False), Stat.HESSIAN: 2 * X.T @ X / n,
    })  # fmt: skip
    return X, W, stats


def _direct(W, W_hat, stats, nm, cycles, threshold, var_power, same_sign):
    """The algorithm of ``methods/dsnot.py``'s docstring, one row and one swap at a time, in
    float64 Python lists."""
    mu = stats[Stat.INPUT_MEAN].double().tolist()
    var = stats[Stat.INPUT_VAR].double().tolist()
    xn = stats[Stat.INPUT_SQNORM].double().sqrt().tolist()
    out = W_hat.clone()
    cols = W.shape[1]
    for i in range(W.shape[0]):
        w, wh = W[i].double().tolist(), W_hat[i].double().tolist()
        kept = [x != 0 for x in wh]
        D = [w[j] * mu[j] for j in range(cols)]
        C = [wh[j] * mu[j] for j in range(cols)]
        delta = sum(D[j] - C[j] for j in range(cols))
        s0 = (delta > 0) - (delta < 0)
        key = {j: D[j] / max(var[j], 1e-12) ** var_power for j in range(cols) if not kept[j]}
        grow_pos = sorted((j for j in key if key[j] > 0), key=lambda j: -key[j])
        grow_neg = sorted((j for j in key if key[j] < 0), key=lambda j: key[j])
        imp = [abs(wh[j]) * xn[j] for j in range(cols)]
        prune_neg = sorted((j for j in range(cols) if kept[j] and C[j] < 0), key=lambda j: imp[j])
        prune_pos = sorted((j for j in range(cols) if kept[j] and C[j] > 0), key=lambda j: imp[j])
        revived: set[int] = set()
        for _ in range(cycles):
            if abs(delta) <= threshold:
                break
            grow = grow_pos if delta > 0 else grow_neg
            if not grow:
                break
            r = grow[0]
            if nm is not None:
                g0 = r - r % nm.m
                cand = [j for j in range(g0, g0 + nm.m) if kept[j] and j not in revived]
                if not cand:
                    break
                p = min(cand, key=lambda j: (imp[j], j))
            else:
                plist = prune_neg if delta > 0 else prune_pos
                if not plist:
                    break
                p = plist[0]
            new = delta - D[r] + C[p]
            if not abs(new) < abs(delta) or (same_sign and ((new > 0) - (new < 0)) != s0):
                break
            grow.pop(0)
            if nm is None:
                plist.pop(0)
            kept[r], kept[p] = True, False
            revived.add(r)
            C[r], C[p] = D[r], 0.0
            out[i, r], out[i, p] = W[i, r], 0.0
            delta = new
    return out


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
@pytest.mark.parametrize("same_sign", [True, False])
@pytest.mark.parametrize("cycles,threshold,var_power", [(20, 1e-3, 1.0), (1, 0.0, 0.5)])
def test_golden_against_a_direct_row_by_row_implementation(pattern, same_sign, cycles, threshold, var_power):
    _, W, st = _layer(seed=1)
    pat = parse_pattern(pattern)
    W_hat, _ = get_method("wanda").prune(W, st, pat, 0.5)
    ref = DSnoT(cycles=cycles, threshold=threshold, var_power=var_power, same_sign=same_sign)
    got, info = ref.refine(W, W_hat, st, pat)
    want = _direct(W, W_hat, st, pat if isinstance(pat, NM) else None, cycles, threshold, var_power, same_sign)
    assert info["dsnot_swaps"] > 0  # the case exercises the swaps
    assert torch.equal(got, want)
    if cycles == 1:  # the cap binds: more cycles swap more
        more, _ = DSnoT(cycles=50, threshold=threshold, var_power=var_power, same_sign=same_sign).refine(W, W_hat, st, pat)
        assert info["dsnot_cycles"] == 1 and not torch.equal(more, got)


@pytest.mark.parametrize("base", ["wanda", "sparsegpt", "magnitude"])
@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", 0.5), ("4:8", 0.5)])
def test_exact_sparsity_and_valid_nm_after_refinement(base, pattern, sparsity):
    _, W, st = _layer(n_out=48, n_in=64, seed=2)
    pat = parse_pattern(pattern)
    plain, _ = get_method(base).prune(W, st, pat, sparsity)
    refined, info = get_method(base, refine="dsnot").prune(W, st, pat, sparsity)
    assert info["dsnot_swaps"] > 0 and not torch.equal(plain != 0, refined != 0)
    assert torch.equal((plain == 0).sum(1), (refined == 0).sum(1))  # every row keeps its count
    assert pat.is_satisfied(refined)
    if isinstance(pat, NM):
        groups = (refined != 0).reshape(48, -1, pat.m).sum(2)
        assert torch.equal(groups, (plain != 0).reshape(48, -1, pat.m).sum(2))
    moved = refined != plain  # only swapped weights change: revived to dense, or set to zero
    assert torch.all((refined[moved] == W[moved]) | (refined[moved] == 0))


@pytest.mark.parametrize("seed", range(6))
def test_the_expected_error_never_grows(seed):
    _, W, st = _layer(n_out=32, n_in=48, seed=10 + seed, offset=0.2 + 0.3 * seed)
    mu = st[Stat.INPUT_MEAN]
    for pattern in ("unstructured", "2:4"):
        pat = parse_pattern(pattern)
        for base in ("wanda", "sparsegpt"):
            W_hat, _ = get_method(base).prune(W, st, pat, 0.5)
            for same_sign in (True, False):
                got, _ = DSnoT(same_sign=same_sign).refine(W, W_hat, st, pat)
                before, after = expected_error(W, W_hat, mu).abs(), expected_error(W, got, mu).abs()
                assert bool((after <= before + 1e-5).all()), (base, pattern, same_sign)
                assert float(after.sum()) < float(before.sum())


def test_paper_variant_keeps_the_sign_of_each_rows_error():
    _, W, st = _layer(seed=3)
    mu = st[Stat.INPUT_MEAN]
    W_hat, _ = get_method("wanda").prune(W, st, parse_pattern("unstructured"), 0.5)
    got, _ = DSnoT(same_sign=True, threshold=0.0).refine(W, W_hat, st, parse_pattern("unstructured"))
    before, after = expected_error(W, W_hat, mu), expected_error(W, got, mu)
    assert torch.equal(torch.sign(after), torch.sign(before))


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_layer_reconstruction_error_below_wanda_alone(pattern):
    pat = parse_pattern(pattern)
    for seed in range(3):
        X, W, st = _layer(n_out=64, n_in=64, n=2048, seed=20 + seed)
        err = lambda Wn: float((X @ (W - Wn).T).pow(2).sum())  # noqa: E731
        wanda, _ = get_method("wanda").prune(W, st, pat, 0.5)
        refined, _ = get_method("wanda", refine="dsnot").prune(W, st, pat, 0.5)
        assert err(refined) < err(wanda), seed


def test_refined_method_needs_and_settings():
    m = get_method("sparsegpt", refine="dsnot", refine_cycles=7, block_size=64)
    assert isinstance(m, Refined)
    assert m.needs == {Stat.HESSIAN, Stat.INPUT_MEAN, Stat.INPUT_VAR, Stat.INPUT_SQNORM}
    s = m.settings()
    assert s["block_size"] == 64 and s["refine"] == "dsnot" and s["refine_cycles"] == 7
    assert not isinstance(get_method("wanda"), Refined) and not isinstance(get_method("wanda", refine="none"), Refined)
    for method in ("magnitude", "wanda", "sparsegpt", "alps"):
        assert {"refine", "refine_cycles", "refine_threshold", "refine_same_sign"} <= set(settings_schema(method))
    assert "refine" not in settings_schema("flap")


def test_bad_refine_values_one_line(tmp_path, capsys, tiny_llama_dir, calib_txt):
    base = ["prune", str(tiny_llama_dir), "--calib", str(calib_txt), "--nsamples", "2", "--seqlen", "16",
            "--out", str(tmp_path / "out")]  # fmt: skip
    cases = {
        ("-m", "wanda", "--set", "refine=dsnt"): "did you mean 'dsnot'",
        ("-m", "wanda", "--set", "refine=bogus"): "refine=bogus is not a refinement; it must be one of none, dsnot",
        ("-m", "wanda", "--set", "refine=dsnot", "--set", "refine_cycle=3"): "did you mean 'refine_cycles'",
        ("-m", "wanda", "--set", "refine=dsnot", "--set", "refine_cycles=0"): "refine_cycles=0 is out of range",
        ("-m", "flap", "--set", "refine=dsnot"): "flap is a structured method",
    }
    for args, msg in cases.items():
        rc = main([*base, *args])
        _, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and msg in lines[0], (args, err)
        assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="structured method"):
        PruneConfig(method="flap", method_args={"refine": "dsnot"}).validate()
    with pytest.raises(ConfigError, match="structured method"):
        get_method("flap", refine="dsnot")


def test_settings_round_trip_through_a_yaml_recipe(tmp_path):
    cfg = PruneConfig(method="wanda", pattern="2:4",
                      method_args={"refine": "dsnot", "refine_cycles": 7, "refine_same_sign": False}).validate()  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(cfg.to_yaml())
    back = PruneConfig.from_file(path)
    assert back.method_args == cfg.method_args
    m = get_method(back.method, **back.method_args)
    assert m.refiner == DSnoT(cycles=7, same_sign=False)
    assert check_settings("wanda", {"refine": "dsnot", "refine_threshold": "0"})["refine_threshold"] == 0.0


def test_cli_prune_with_refine_reloads_equal_to_the_api(tmp_path, capsys, tiny_llama_dir, calib_txt):
    from transformers import AutoModelForCausalLM

    import prunekit as pk
    from prunekit.config import CalibConfig

    out = tmp_path / "pruned"
    rc = main(["prune", str(tiny_llama_dir), "-m", "wanda", "--pattern", "2:4", "--set", "refine=dsnot",
               "--calib", str(calib_txt), "--nsamples", "4", "--seqlen", "32", "--out", str(out), "-q"])  # fmt: skip
    _, err = capsys.readouterr()
    assert rc == 0, err
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["config"]["method_args"]["refine"] == "dsnot"
    assert meta["report"]["settings"]["refine"] == "dsnot"
    assert sum(layer["info"].get("dsnot_swaps", 0) for layer in meta["report"]["layers"]) > 0

    model, tok = pk.load_model(str(tiny_llama_dir))
    cfg = PruneConfig(method="wanda", pattern="2:4", method_args={"refine": "dsnot"},
                      calib=CalibConfig(source=str(calib_txt), nsamples=4, seqlen=32))  # fmt: skip
    pk.prune_(model, cfg, tokenizer=tok, progress=False, report_tokens=0)
    plain, _ = pk.load_model(str(tiny_llama_dir))
    pk.prune_(plain, PruneConfig(method="wanda", pattern="2:4", calib=cfg.calib), tokenizer=tok,
              progress=False, report_tokens=0)  # fmt: skip
    saved = AutoModelForCausalLM.from_pretrained(out)  # plain transformers
    ref, base = dict(model.named_parameters()), dict(plain.named_parameters())
    differs = 0
    for name, p in saved.named_parameters():
        assert torch.equal(p.data, ref[name].data), name
        if ".layers." in name and name.endswith("proj.weight"):
            assert NM(2, 4).is_satisfied(p.data), name
            differs += int(not torch.equal(p.data, base[name].data))
    assert differs > 0  # the refinement changed the Wanda masks


def test_streaming_prune_with_refine_equals_in_memory(tmp_path):
    from conftest import make_llama
    from transformers import AutoModelForCausalLM

    import prunekit as pk
    from prunekit.engine.streaming import prune_streaming

    ckpt = tmp_path / "llama"
    make_llama(layers=2).save_pretrained(ckpt, max_shard_size="40KB")
    calib = torch.randint(0, 384, (4, 24), generator=torch.Generator().manual_seed(1))
    cfg = PruneConfig(method="sparsegpt", pattern="2:4", method_args={"refine": "dsnot"})
    report = prune_streaming(ckpt, tmp_path / "out", cfg, calib=calib, progress=False)
    assert report.settings["refine"] == "dsnot"
    streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ref = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    pk.prune_(ref, cfg, calib, progress=False)
    want = dict(ref.state_dict())
    for k, v in streamed.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_layers_setting_refines_only_the_chosen_kind():
    _, W, st = _layer(seed=4)
    pat = parse_pattern("unstructured")
    W_hat, _ = get_method("wanda").prune(W, st, pat, 0.5)
    mlp = LayerStats("model.layers.3.mlp.up_proj", st.num_tokens, st.tensors)
    attn = LayerStats("transformer.h.0.attn.c_attn", st.num_tokens, st.tensors)
    only_attn = DSnoT(layers="attention")
    assert torch.equal(only_attn.refine(W, W_hat, mlp, pat)[0], W_hat)
    assert torch.equal(only_attn.refine(W, W_hat, attn, pat)[0], DSnoT().refine(W, W_hat, attn, pat)[0])
    assert not torch.equal(DSnoT(layers="mlp").refine(W, W_hat, mlp, pat)[0], W_hat)
    assert torch.equal(DSnoT(layers="mlp").refine(W, W_hat, attn, pat)[0], W_hat)
    assert get_method("wanda", refine="dsnot", refine_layers="attention").refiner.layers == "attention"
    with pytest.raises(ConfigError, match="refine_layers=attn is not allowed"):
        get_method("wanda", refine="dsnot", refine_layers="attn")
