"""The one-pass engine (issue 35, part 3): one forward per block, each target pruned the moment
every calibration batch has reached it, the later targets calibrated on the pruned ones."""

from __future__ import annotations

import json

import pytest
import torch

import prunekit as pk
from conftest import make_llama
from prunekit.errors import ConfigError


@pytest.fixture
def calib():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 384, (6, 24), generator=g)


def _cfg(method="wanda", pattern="unstructured", engine="one-pass", include=(), batch=2):
    return pk.PruneConfig(method=method, pattern=pattern, engine=engine, targets=pk.TargetSpec(include=tuple(include)),
                          calib=pk.CalibConfig(batch_size=batch))  # fmt: skip


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


@pytest.mark.parametrize("method,pattern", [("wanda", "unstructured"), ("sparsegpt", "2:4"), ("sparsegpt", "unstructured")])
@pytest.mark.parametrize("include", [["q_proj"], ["down_proj"], ["o_proj"]])
def test_one_target_per_block_equals_two_passes_bit_for_bit(calib, method, pattern, include):
    """With a single target per block nothing is true-sequential: the two engines must agree exactly."""
    a, b = make_llama(layers=2), make_llama(layers=2)
    ra = pk.prune_(a, _cfg(method, pattern, "two-pass", include), calib, progress=False)
    rb = pk.prune_(b, _cfg(method, pattern, "one-pass", include), calib, progress=False)
    assert _same(a, b) == []
    assert [lr.name for lr in ra.layers] == [lr.name for lr in rb.layers]
    assert [lr.rel_error for lr in ra.layers] == [lr.rel_error for lr in rb.layers]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_later_targets_are_calibrated_on_the_pruned_earlier_ones(calib, method):
    """Golden case, one block: one-pass over {v_proj, o_proj, up_proj, down_proj} equals pruning them
    one at a time with the two-pass engine, each run on the output of the previous one."""
    names = ["v_proj", "o_proj", "up_proj", "down_proj"]
    one = make_llama(layers=1)
    pk.prune_(one, _cfg(method, include=names), calib, progress=False)
    seq = make_llama(layers=1)
    for n in names:
        pk.prune_(seq, _cfg(method, engine="two-pass", include=[n]), calib, progress=False)
    assert _same(one, seq) == []
    two = make_llama(layers=1)
    pk.prune_(two, _cfg(method, engine="two-pass", include=names), calib, progress=False)
    assert "model.layers.0.self_attn.o_proj.weight" in _same(one, two)  # true-sequential changed o_proj
    assert "model.layers.0.self_attn.v_proj.weight" not in _same(one, two)  # the first target did not change


def test_result_does_not_depend_on_thread_timing(calib, monkeypatch):
    import prunekit.engine.onepass as op

    runs = []
    for delay in (0.0, 0.002):
        real = op._Block.hook

        def slow_hook(self, name, real=real, delay=delay):
            fn = real(self, name)

            def wrapped(mod, args):
                import time

                time.sleep(delay * (self.local.batch % 3))  # batches arrive in a different order
                return fn(mod, args)

            return wrapped

        monkeypatch.setattr(op._Block, "hook", slow_hook)
        m = make_llama(layers=2)
        pk.prune_(m, _cfg("sparsegpt"), calib, progress=False)
        runs.append(m)
    assert _same(*runs) == []


def test_an_error_in_a_batch_thread_is_raised_once_and_nothing_hangs(calib, monkeypatch):
    import prunekit.api as api

    seen = []
    real = api.prune_target

    def boom(name, *a, **k):
        seen.append(name)
        if len(seen) == 3:
            raise ConfigError("method failed on purpose")
        return real(name, *a, **k)

    monkeypatch.setattr(api, "prune_target", boom)
    with pytest.raises(ConfigError, match="on purpose"):
        pk.prune_(make_llama(layers=2), _cfg("wanda"), calib, progress=False)
    assert len(seen) == 3


def test_bad_engine_combinations_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="engine must be one of"):
        pk.PruneConfig(engine="three-pass").validate()
    with pytest.raises(ConfigError, match="structured method"):
        pk.PruneConfig(method="flap", engine="one-pass").validate()
    with pytest.raises(ConfigError, match="propagate dense"):
        pk.PruneConfig(engine="one-pass", propagate="dense").validate()


def test_cli_one_pass_records_the_engine(tmp_path, capsys, tiny1_dir, calib_txt):
    from prunekit.cli.main import main

    out = tmp_path / "o"
    rc = main(["prune", str(tiny1_dir), "-m", "sparsegpt", "--engine", "one-pass", "--calib", str(calib_txt),
               "--nsamples", "4", "--seqlen", "16", "--batch-size", "2", "-q", "--out", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["config"]["engine"] == "one-pass" and meta["applied"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    rc = main(["prune", str(tiny1_dir), "-m", "wanda", "--engine", "one-pass", "--stream", "--calib", str(calib_txt),
               "--nsamples", "4", "--seqlen", "16", "-q", "--out", str(tmp_path / "s")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--stream uses the two-pass engine" in err
