"""Týr-the-Pruner: OBS local pruning, on-disk supernet, budget-keeping search, export, errors."""

from __future__ import annotations

import itertools
import math
import tempfile

import pytest
import torch

from prunekit.config import PruneConfig
from prunekit.errors import ConfigError
from prunekit.models.adapters import get_adapter
from prunekit.structured import STRUCTURED_METHODS, tyr
from prunekit.structured import common as C

VOCAB = 300
FAST = dict(step=16, levels=2, generations=4, population=6, survivors="3", stage_tokens="64,128",
            fitness_seqlen=32, windows=4)  # fmt: skip


def _llama(layers: int = 2, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a sharper output distribution than the random init gives
        model.lm_head.weight.mul_(20)
    return model


def _ids(n: int = 8, seq: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq), generator=torch.Generator().manual_seed(seed))


def _prune(model, ids, sparsity=0.3, **over):
    args = {**FAST, **over}
    return STRUCTURED_METHODS.get("tyr")(model, PruneConfig(method="tyr", sparsity=sparsity, method_args=args),
                                         ids, None, False)  # fmt: skip


def _correlated(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g) / math.sqrt(d) + torch.eye(d)
    return torch.randn(n, d, generator=g) @ A * torch.linspace(0.2, 2.0, d)


# --- local pruning -----------------------------------------------------------------------------
def test_reconstruction_is_least_squares_and_beats_plain_removal():
    X = _correlated(400, 24).double()
    W = torch.randn(10, 24, generator=torch.Generator().manual_seed(1)).double()
    H = tyr.damped(X.T @ X, 1e-10, torch.float64)
    keep, W_K = tyr.obs_channel_levels(W, H, [12], rounds=4)[12]
    ref = torch.linalg.lstsq(X[:, keep], X @ W.T).solution.T  # naive least squares
    torch.testing.assert_close(W_K, ref, rtol=1e-6, atol=1e-7)  # the OBS updates end at the LS optimum
    torch.testing.assert_close(tyr.reconstruct(W, H, keep), ref, rtol=1e-6, atol=1e-7)
    err = lambda Wk: (X @ W.T - X[:, keep] @ Wk.T).norm()  # noqa: E731
    assert err(W_K) < 0.9 * err(W[:, keep])  # OBS reconstruction vs plain column removal
    # and OBS selection beats removing the smallest-norm columns (both refitted)
    mag = W.norm(dim=0).topk(12).indices.sort().values
    mag_err = (X @ W.T - X[:, mag] @ tyr.reconstruct(W, H, mag).T).norm()
    assert err(W_K) <= mag_err


def test_obs_channel_pick_matches_brute_force():
    """One column at a time, the OBS cost equals the exact refit error of removing that column."""
    X = _correlated(300, 10, seed=2).double()
    W = torch.randn(6, 10, generator=torch.Generator().manual_seed(3)).double()
    H = tyr.damped(X.T @ X, 1e-12, torch.float64)
    for width in (9, 7):
        got = tyr.obs_channel_levels(W, H, [width], rounds=10 - width)[width][0]
        best, best_err = None, math.inf
        if width == 9:  # a single removal: brute force over every column
            for j in range(10):
                k = torch.tensor([i for i in range(10) if i != j])
                e = (X @ W.T - X[:, k] @ tyr.reconstruct(W, H, k).T).pow(2).sum().item()
                if e < best_err:
                    best, best_err = k, e
            assert torch.equal(got, best)
        assert got.numel() == width and torch.equal(got, got.sort().values)
    # nested levels: a narrower level keeps a subset of a wider one
    lv = tyr.obs_channel_levels(W, H, [8, 6, 4], rounds=3)
    assert set(lv[4][0].tolist()) <= set(lv[6][0].tolist()) <= set(lv[8][0].tolist())


def test_obs_heads_gqa_valid_and_first_pick_brute_force():
    geo = C.Geometry(heads=4, kv_heads=2, head_dim=3, hidden=5, intermediate=8, attn_prunable=True)
    X = _correlated(300, 12, seed=4).double()
    W = torch.randn(5, 12, generator=torch.Generator().manual_seed(5)).double()
    H = tyr.damped(X.T @ X, 1e-12, torch.float64)
    keep, W_h = tyr.obs_head_levels(W, H, geo, [1])[1]
    assert keep.numel() == 2 and sorted(int(h) // geo.group for h in keep) == [0, 1]  # one per KV group
    # brute force: in each group the removed head is the one whose refit error is smallest
    best, best_err = None, math.inf
    for a, b in itertools.product((0, 1), (2, 3)):
        k = torch.tensor([a, b])
        cols = torch.cat([torch.arange(h * 3, h * 3 + 3) for h in k])
        e = (X @ W.T - X[:, cols] @ tyr.reconstruct(W, H, cols).T).pow(2).sum().item()
        if e < best_err:
            best, best_err = k, e
    assert torch.equal(keep, best)
    cols = torch.cat([torch.arange(h * 3, h * 3 + 3) for h in keep])
    torch.testing.assert_close(W_h, tyr.reconstruct(W, H, cols), rtol=1e-6, atol=1e-7)


# --- the method --------------------------------------------------------------------------------
def test_search_at_least_as_good_as_uniform_and_budget_kept():
    model = _llama(layers=3)
    adapter = get_adapter(model)
    geo = C.geometry(model, adapter)
    costs = C.costs(model, adapter, geo)
    before = C.block_param_total(model, adapter)
    rep = _prune(model, _ids(), sparsity=0.3, rounds=1)
    curve = rep.settings["search"]["rounds"][0]["fitness"]
    assert curve[-1] <= curve[0]  # the uniform start is the first parent (elitist search)
    assert all(b <= a for a, b in zip(curve, curve[1:]))
    q0, c0 = tyr.initial_widths(geo, costs, 0.3, "mlp", 1)
    assert q0 == geo.group
    uniform_after = before - 3 * (geo.intermediate - c0) * costs.channel
    after = C.block_param_total(model, adapter)
    assert after == uniform_after  # paired moves never change the parameter count
    assert abs((before - after) - 0.3 * before) <= 3 * costs.channel / 2  # target within one channel per block


def test_search_strictly_better_when_one_block_matters_little():
    model = _llama(layers=2)
    with torch.no_grad():  # block 1's MLP barely contributes: its channels should go first
        model.model.layers[1].mlp.down_proj.weight.mul_(0.02)
    rep = _prune(model, _ids(), sparsity=0.3, rounds=1, generations=6)
    curve = rep.settings["search"]["rounds"][0]["fitness"]
    assert curve[-1] < curve[0]
    widths = [b["intermediate"] for b in rep.settings["blocks"]]
    assert widths[1] < widths[0]
    assert model.config.prunekit_block_widths is not None


def test_coarse_to_fine_rounds_halve_the_step_and_align():
    model = _llama(layers=2)
    rep = _prune(model, _ids(), sparsity=0.3, rounds=2, step=32, align=8)
    assert [r["step"] for r in rep.settings["search"]["rounds"]] == [32, 16]
    assert all(b["intermediate"] % 8 == 0 for b in rep.settings["blocks"])


def test_saved_folder_reloads_to_equal_logits(tmp_path, tokenizer):
    import prunekit as pk

    model = _llama(layers=2)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(0.02)
    ids = _ids()
    _prune(model, ids, sparsity=0.3, rounds=1, generations=6)
    assert model.config.prunekit_block_widths is not None
    with torch.no_grad():
        ref = model(ids).logits
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, _ = pk.load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ref, rtol=0, atol=0)


def test_uniform_result_is_a_stock_config(tmp_path):
    from transformers import AutoModelForCausalLM

    model = _llama(layers=2)
    ids = _ids()
    rep = _prune(model, ids, sparsity=0.25, generations=0, rounds=1, split="ratio")
    assert getattr(model.config, "prunekit_block_widths", None) is None
    assert model.config.num_attention_heads < 4 and model.config.num_key_value_heads == 2
    assert model.config.intermediate_size == rep.settings["start"]["intermediate"]
    with torch.no_grad():
        ref = model(ids).logits
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, ref, rtol=0, atol=0)


def test_supernet_lives_on_disk_and_is_removed(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []
    real = tyr.Supernet.load

    def spy(self, b, kind, width):
        p = self.path(b, kind, width)
        seen.append((p, p.is_file(), p.stat().st_size if p.is_file() else 0))
        return real(self, b, kind, width)

    monkeypatch.setattr(tyr.Supernet, "load", spy)
    model = _llama(layers=2)
    rep = _prune(model, _ids(), sparsity=0.3, rounds=2, split="ratio")
    assert seen and all(ok and size > 0 for _, ok, size in seen)
    assert all(str(p).startswith(str(tmp_path)) for p, _, _ in seen)
    assert {p.name.split("_")[1][:4] for p, _, _ in seen} >= {"mlp1", "attn"}
    assert rep.settings["search"]["supernet_files"] > 0
    assert not any(tmp_path.iterdir())  # every round's directory is gone


@pytest.mark.parametrize(
    "over,msg",
    [
        (dict(stage_tokens="128,64"), "must increase"),
        (dict(stage_tokens="64,x"), "comma list of positive integers"),
        (dict(survivors="3,2"), "needs 1 value"),
        (dict(survivors="9"), "exceed population"),
        (dict(levels=0), "levels=0 is out of range"),
        (dict(split="heads"), "not allowed"),
        (dict(align=1000), "align=1000 exceeds"),
        (dict(stage_tokens="64,100000"), "lower stage_tokens"),
        (dict(fitness_seqlen=32, stage_tokens="40,50"), "same number"),
    ],
)
def test_bad_settings_one_line(over, msg):
    with pytest.raises(ConfigError) as e:
        _prune(_llama(layers=1), _ids(), **over)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_infeasible_sparsity_one_line():
    with pytest.raises(ConfigError) as e:
        _prune(_llama(layers=1), _ids(), sparsity=0.95)
    assert "\n" not in str(e.value)


def test_cli_prune_and_bad_set(tmp_path, capsys, tiny_llama_dir, calib_txt):
    import prunekit as pk
    from prunekit.cli.main import main

    out = tmp_path / "tyr"
    common = ["prune", str(tiny_llama_dir), "--method", "tyr", "--sparsity", "0.25", "--calib", str(calib_txt),
              "--nsamples", "6", "--seqlen", "64"]  # fmt: skip
    sets = ["--set", "generations=2", "--set", "population=3", "--set", "stage_tokens=64,128",
            "--set", "fitness_seqlen=32", "--set", "step=16", "--set", "rounds=1", "--set", "survivors=2"]  # fmt: skip
    rc = main([*common, *sets, "--out", str(out)])
    _, err = capsys.readouterr()
    assert rc == 0, err
    model, _ = pk.load(out)
    assert model(torch.zeros(1, 8, dtype=torch.long)).logits.shape[-1] == 384
    rc = main([*common, "--set", "stage_tokens=512,64", "--out", str(tmp_path / "bad")])
    _, err = capsys.readouterr()
    assert rc != 0 and "stage_tokens=512,64 must increase" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_supernet_folders_of_dead_runs_are_removed(tmp_path):
    """A run killed with SIGKILL cannot clean its supernet; the next run removes it (not live ones)."""
    import os
    import subprocess

    from prunekit.structured.tyr import supernet_dir

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"prunekit-tyr-{dead.pid}-abcd"
    live = tmp_path / f"prunekit-tyr-{os.getppid()}-efgh"
    other = tmp_path / "prunekit-tyr-notapid"
    for d in (stale, live, other):
        d.mkdir()
        (d / "level.safetensors").write_bytes(b"x")
    new = supernet_dir(tmp_path)
    assert new.is_dir() and new.name.startswith(f"prunekit-tyr-{os.getpid()}-")
    assert not stale.exists() and live.exists() and other.exists()
