"""Streaming prune from disk (prunekit.engine.streaming): equal to the in-memory prune bit for bit,
dtype kept, resumable after a crash, data-parallel statistics over torch.distributed (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_llama
from safetensors import safe_open

import prunekit as pk
from prunekit.engine.streaming import prune_streaming, resume_dir
from prunekit.errors import ConfigError, ModelLoadError, OutputError
from prunekit.export import stale_temp_folders

SRC = Path(__file__).resolve().parents[1] / "src"


def _save(model, folder: Path, shard: str | None = "40KB", dtype=None) -> Path:
    if dtype is not None:
        model = model.to(dtype)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kw)
    return folder


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A 3-block fp32 Llama saved in several shards."""
    return _save(make_llama(layers=3), tmp_path_factory.mktemp("ckpt") / "llama")


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 384, (6, 24), generator=g)


def _load(folder: Path, dtype="auto"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def _in_memory(folder: Path, cfg: pk.PruneConfig, calib: torch.Tensor):
    model = _load(folder)
    report = pk.prune_(model, cfg, calib, progress=False)
    return model, report


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    out = {}
    for fname in sorted(set(index.values())):
        with safe_open(str(folder / fname), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def _digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {q.name: hashlib.sha256(q.read_bytes()).hexdigest() for q in sorted(folder.iterdir()) if q.is_file()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method,pattern", [("wanda", "unstructured"), ("sparsegpt", "2:4"), ("magnitude", "unstructured")])
def test_streaming_equals_in_memory_bit_for_bit(ckpt, calib, tmp_path, method, pattern):
    cfg = pk.PruneConfig(method=method, pattern=pattern, calib=pk.CalibConfig(batch_size=4))
    out = tmp_path / "out"
    before = _digests(ckpt)
    report = prune_streaming(ckpt, out, cfg, calib=calib, progress=False)
    assert _digests(ckpt) == before  # the input shards are read, never written
    ref, ref_report = _in_memory(ckpt, cfg, calib)
    loaded = _load(out)  # plain from_pretrained
    _assert_same(dict(loaded.state_dict()), dict(ref.state_dict()))
    assert [lr.name for lr in report.layers] == [lr.name for lr in ref_report.layers]
    assert [lr.rel_error for lr in report.layers] == [lr.rel_error for lr in ref_report.layers]
    assert report.sparsity == pytest.approx(0.5)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 1 + 3  # non-block tensors + one shard per block
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["applied"]["method"] == method and meta["streaming"]["device"] == "cpu"
    assert meta["parameters"]["nonzero"] == sum(int((p != 0).sum()) for p in ref.parameters())
    assert (out / "generation_config.json").is_file()
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".")]  # no temp folder left


def test_single_file_checkpoint_and_tokenizer_files_copied(tokenizer, calib, tmp_path):
    src = _save(make_llama(layers=2), tmp_path / "single", shard=None)
    tokenizer.save_pretrained(src)
    assert (src / "model.safetensors").is_file()
    cfg = pk.PruneConfig(method="wanda")
    out = tmp_path / "out"
    prune_streaming(src, out, cfg, calib=calib, progress=False)
    ref, _ = _in_memory(src, cfg, calib)
    _assert_same(dict(_load(out).state_dict()), dict(ref.state_dict()))
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()


def test_bf16_checkpoint_stays_bf16_and_equals_in_memory(calib, tmp_path):
    src = _save(make_llama(layers=2), tmp_path / "bf16", dtype=torch.bfloat16)
    cfg = pk.PruneConfig(method="sparsegpt", pattern="2:4")
    out = tmp_path / "out"
    prune_streaming(src, out, cfg, calib=calib, progress=False)
    got = _tensors(out)
    assert {t.dtype for t in got.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    ref, _ = _in_memory(src, cfg, calib)
    assert next(ref.parameters()).dtype == torch.bfloat16
    _assert_same(got, {k: v for k, v in ref.state_dict().items() if k in got})
    w = got["model.layers.0.mlp.down_proj.weight"]
    assert (w.reshape(w.shape[0], -1, 4) != 0).sum(-1).max() <= 2


def test_dtype_override_writes_bf16(ckpt, calib, tmp_path):
    out = tmp_path / "out"
    prune_streaming(ckpt, out, pk.PruneConfig(method="wanda"), calib=calib, dtype="bf16", progress=False)
    got = _tensors(out)
    assert {t.dtype for t in got.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = _load(out)
    assert next(model.parameters()).dtype == torch.bfloat16
    # the same as pruning the checkpoint loaded in bf16 (rotary tables stay fp32 either way)
    ref = _load(ckpt, dtype=torch.bfloat16)
    pk.prune_(ref, pk.PruneConfig(method="wanda"), calib, progress=False)
    _assert_same(got, {k: v for k, v in ref.state_dict().items() if k in got})


class _Crash(Exception):
    pass


def _crash_after(k: int):
    def cb(i: int) -> None:
        if i == k:
            raise _Crash(f"after block {i}")

    return cb


def test_resume_after_exception_is_bit_identical(ckpt, calib, tmp_path):
    cfg = pk.PruneConfig(method="sparsegpt", pattern="unstructured", sparsity=0.6)
    full = tmp_path / "full"
    prune_streaming(ckpt, full, cfg, calib=calib, progress=False)
    out = tmp_path / "out"
    with pytest.raises(_Crash):
        prune_streaming(ckpt, out, cfg, calib=calib, progress=False, after_block=_crash_after(0))
    work = resume_dir(out.absolute())
    assert work.is_dir() and not out.exists()
    assert json.loads((work / ".resume" / "state.json").read_text())["next_block"] == 1
    assert work not in stale_temp_folders(out.absolute())  # never taken for a dead run's folder
    notes: list[str] = []
    seen: list[int] = []
    report = prune_streaming(ckpt, out, cfg, calib=calib, progress=False, resume=True,
                             notify=notes.append, after_block=seen.append)  # fmt: skip
    assert seen == [1, 2]  # block 0 was not redone
    assert any("resuming from block 1" in n for n in notes)
    _assert_same(_tensors(out), _tensors(full))
    assert len(report.layers) == 3 * 7  # the report covers the blocks of both runs
    assert not work.exists()
    assert json.loads((out / "prunekit.json").read_text())["streaming"]["resumed_from_block"] == 1


_KILL_SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {src!r})
import prunekit as pk
from prunekit.engine.streaming import prune_streaming
calib = torch.load({calib!r})
def cb(i):
    if i == {k}:
        os.kill(os.getpid(), signal.SIGKILL)
prune_streaming({ckpt!r}, {out!r}, pk.PruneConfig(method="wanda", sparsity=0.4), calib=calib,
                progress=False, after_block=cb)
"""


def test_resume_after_sigkill_is_bit_identical(ckpt, calib, tmp_path):
    cfg = pk.PruneConfig(method="wanda", sparsity=0.4)
    full = tmp_path / "full"
    prune_streaming(ckpt, full, cfg, calib=calib, progress=False)
    torch.save(calib, tmp_path / "calib.pt")
    out = tmp_path / "out"
    script = _KILL_SCRIPT.format(src=str(SRC), calib=str(tmp_path / "calib.pt"), k=1, ckpt=str(ckpt), out=str(out))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists() and resume_dir(out.absolute()).is_dir()
    seen: list[int] = []
    prune_streaming(ckpt, out, cfg, calib=calib, progress=False, resume=True, after_block=seen.append)
    assert seen == [2]
    _assert_same(_tensors(out), _tensors(full))


def test_resume_with_another_config_is_refused_and_keeps_the_state(ckpt, calib, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(_Crash):
        prune_streaming(ckpt, out, pk.PruneConfig(method="wanda"), calib=calib, progress=False,
                        after_block=_crash_after(0))  # fmt: skip
    with pytest.raises(ConfigError, match="different config") as e:
        prune_streaming(ckpt, out, pk.PruneConfig(method="wanda", sparsity=0.3), calib=calib, progress=False, resume=True)
    assert "\n" not in str(e.value)
    assert (resume_dir(out.absolute()) / ".resume" / "state.json").is_file()
    # without --resume the old state is discarded and the run starts over
    notes: list[str] = []
    seen: list[int] = []
    prune_streaming(ckpt, out, pk.PruneConfig(method="wanda", sparsity=0.3), calib=calib, progress=False,
                    notify=notes.append, after_block=seen.append)  # fmt: skip
    assert seen == [0, 1, 2] and any("discarded" in n for n in notes)
    assert not resume_dir(out.absolute()).exists()


def test_cuda_without_gpu_is_one_line_config_error(ckpt, calib, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no CUDA GPU") as e:
        prune_streaming(ckpt, tmp_path / "out", pk.PruneConfig(), calib=calib, device="cuda", progress=False)
    assert "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())


def test_missing_and_truncated_shards_name_the_file(ckpt, calib, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 64)
    with pytest.raises(ModelLoadError, match=shard.name) as e:
        prune_streaming(broken, tmp_path / "out", pk.PruneConfig(), calib=calib, progress=False)
    assert "truncated" in str(e.value) and "\n" not in str(e.value)
    shard.unlink()
    with pytest.raises(ModelLoadError, match=f"{shard.name} is missing"):
        prune_streaming(broken, tmp_path / "out", pk.PruneConfig(), calib=calib, progress=False)
    assert not (tmp_path / "out").exists()


def test_not_enough_disk_is_refused_before_work(ckpt, calib, tmp_path, monkeypatch):
    import prunekit.export.hf as hf

    real = hf.shutil.disk_usage
    monkeypatch.setattr(hf.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(OutputError, match="not enough free space"):
        prune_streaming(ckpt, tmp_path / "out", pk.PruneConfig(), calib=calib, progress=False)
    assert not any(q for q in tmp_path.iterdir())


@pytest.mark.parametrize("cfg,match", [
    (pk.PruneConfig(method="flap"), "structured"),
    (pk.PruneConfig(method="wanda", allocation="owl"), "allocation 'owl'"),
    (pk.PruneConfig(method="gblm"), "gradients"),
    (pk.PruneConfig(method="armor", pattern="2:4"), "adds modules"),
])  # fmt: skip
def test_unsupported_configs_are_refused(ckpt, calib, tmp_path, cfg, match):
    with pytest.raises(ConfigError, match=match):
        prune_streaming(ckpt, tmp_path / "out", cfg, calib=calib, progress=False)


def test_non_empty_output_needs_overwrite(ckpt, calib, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        prune_streaming(ckpt, out, pk.PruneConfig(), calib=calib, progress=False)
    prune_streaming(ckpt, out, pk.PruneConfig(), calib=calib, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "prunekit.json").is_file()


_DIST_SCRIPT = """
import sys, torch, torch.distributed as dist
torch.set_num_threads(1)
sys.path.insert(0, {src!r})
import prunekit as pk
from prunekit.engine.streaming import prune_streaming
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=sys.argv[2], rank=rank, world_size=2)
calib = torch.load({calib!r})
cfg = pk.PruneConfig(method={method!r}, pattern={pattern!r}, calib=pk.CalibConfig(batch_size=2))
rep = prune_streaming({ckpt!r}, {out!r}, cfg, calib=calib, progress=False)
dist.barrier()
dist.destroy_process_group()
print("done", rank, rep.sparsity)
"""


_TORCHRUN_SCRIPT = """
import sys, torch, torch.distributed as dist
torch.set_num_threads(1)
sys.path.insert(0, {src!r})
import prunekit as pk
from prunekit.engine.streaming import init_distributed_from_env, prune_streaming
assert init_distributed_from_env("cpu") and dist.get_backend() == "gloo"
cfg = pk.PruneConfig(method={method!r}, pattern={pattern!r}, calib=pk.CalibConfig(batch_size=2))
rep = prune_streaming({ckpt!r}, {out!r}, cfg, calib=torch.load({calib!r}), progress=False)
dist.barrier()
dist.destroy_process_group()
print("done", dist.is_initialized(), rep.sparsity)
"""


def _run_data_parallel(launcher: str, script: str, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if launcher == "torchrun":
        torchrun = Path(sys.executable).with_name("torchrun")
        cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "--no-python", sys.executable, "-c", script]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("done") == 2
        return
    for r in _launch2(script, f"file://{tmp_path / 'pg'}"):
        assert r.returncode == 0, r.stderr[-3000:]
        assert "done" in r.stdout


@pytest.mark.parametrize("method,pattern,launcher", [
    ("wanda", "unstructured", "torchrun"), ("sparsegpt", "2:4", "file"),
])  # fmt: skip
def test_data_parallel_statistics_over_gloo_match_one_process(ckpt, calib, tmp_path, method, pattern, launcher):
    """Two gloo ranks (launched by torchrun, or joined through a file:// rendezvous), three
    calibration windows each: the pruned weights equal the single-process result up to float
    summation order (masks identical on >= 99.9% of the weights; weights within 1e-4 relative
    where the masks agree)."""
    torch.save(calib, tmp_path / "calib.pt")
    out = tmp_path / "dp"
    if launcher == "torchrun":
        script = _TORCHRUN_SCRIPT.format(src=str(SRC), calib=str(tmp_path / "calib.pt"), method=method,
                                         pattern=pattern, ckpt=str(ckpt), out=str(out))  # fmt: skip
    else:
        script = _DIST_SCRIPT.format(src=str(SRC), calib=str(tmp_path / "calib.pt"), method=method,
                                     pattern=pattern, ckpt=str(ckpt), out=str(out))  # fmt: skip
    _run_data_parallel(launcher, script, tmp_path)
    cfg = pk.PruneConfig(method=method, pattern=pattern, calib=pk.CalibConfig(batch_size=2))
    single = tmp_path / "single"
    prune_streaming(ckpt, single, cfg, calib=calib, progress=False)
    a, b = _tensors(out), _tensors(single)
    assert set(a) == set(b)
    dense = _tensors(ckpt)
    for k in a:
        if torch.equal(dense[k], b[k]):  # not pruned: copied unchanged
            assert torch.equal(a[k], b[k]), k
            continue
        agree = ((a[k] == 0) == (b[k] == 0)).float().mean().item()
        assert agree >= 0.999, (k, agree)
        both = (a[k] != 0) & (b[k] != 0)
        torch.testing.assert_close(a[k][both], b[k][both], rtol=1e-4, atol=1e-5)
    assert not resume_dir(out.absolute()).exists()


def test_ranks_that_disagree_are_refused(ckpt, calib, tmp_path):
    torch.save(calib, tmp_path / "calib.pt")
    script = textwrap.dedent("""
        import sys, torch, torch.distributed as dist
        torch.set_num_threads(1)
        sys.path.insert(0, {src!r})
        import prunekit as pk
        from prunekit.engine.streaming import prune_streaming
        from prunekit.errors import ConfigError
        rank = int(sys.argv[1])
        dist.init_process_group("gloo", init_method={init!r}, rank=rank, world_size=2)
        cfg = pk.PruneConfig(method="wanda", sparsity=0.5 if rank == 0 else 0.6)
        try:
            prune_streaming({ckpt!r}, {out!r}, cfg, calib=torch.load({calib!r}), progress=False)
        except ConfigError as e:
            print("refused:", e)
    """).format(src=str(SRC), init=f"file://{tmp_path / 'pg'}", ckpt=str(ckpt), out=str(tmp_path / "o"),
                calib=str(tmp_path / "calib.pt"))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-2000:]
        assert "refused:" in so and "disagree" in so
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("family", ["gpt2", "gemma3_text", "mixtral", "qwen3_moe"])
def test_families_stream_bit_for_bit_and_keep_their_checkpoint_keys(family, tmp_path):
    """GPT-2 (Conv1D, tied lm_head, learned positions), Gemma3 (per-layer-type rotary and
    masks), Mixtral and Qwen3-MoE (per-expert checkpoint keys that transformers fuses on load,
    Mixtral's block_sparse_moe renaming): equal to the in-memory prune, and the output keeps
    the input's tensor names."""
    from test_families import VOCAB, make

    src = tmp_path / "src"
    make(family).save_pretrained(src, max_shard_size="200KB")
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    cfg = pk.PruneConfig(method="sparsegpt")
    out = tmp_path / "out"
    report = prune_streaming(src, out, cfg, calib=ids, progress=False, report_tokens=64)
    ref = _load(src)
    ref_report = pk.prune_(ref, cfg, ids, progress=False, report_tokens=64)
    _assert_same(dict(_load(out).state_dict()), dict(ref.state_dict()))
    assert [lr.name for lr in report.layers] == [lr.name for lr in ref_report.layers]
    in_keys = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(_tensors(out)) == set(in_keys)


def test_checkpoint_keys_that_do_not_match_are_one_line(tmp_path, calib):
    from safetensors.torch import save_file

    src = _save(make_llama(layers=2), tmp_path / "src")
    index = src / "model.safetensors.index.json"
    body = json.loads(index.read_text())
    save_file({"model.layers.0.mlp.extra.weight": torch.zeros(2, 2)}, str(src / "extra.safetensors"))
    body["weight_map"]["model.layers.0.mlp.extra.weight"] = "extra.safetensors"
    index.write_text(json.dumps(body))
    with pytest.raises(ModelLoadError, match="'model.layers.0.mlp.extra.weight' .* is not a parameter") as e:
        prune_streaming(src, tmp_path / "out", pk.PruneConfig(), calib=calib, progress=False)
    assert "\n" not in str(e.value)
    del body["weight_map"]["model.layers.0.mlp.extra.weight"]
    del body["weight_map"]["model.layers.1.mlp.down_proj.weight"]
    index.write_text(json.dumps(body))
    with pytest.raises(ModelLoadError, match="no tensor 'model.layers.1.mlp.down_proj.weight'"):
        prune_streaming(src, tmp_path / "out", pk.PruneConfig(), calib=calib, progress=False)
    assert not (tmp_path / "out").exists()


_DIST_RESUME = """
import os, signal, sys, torch, torch.distributed as dist
torch.set_num_threads(1)
sys.path.insert(0, {src!r})
import prunekit as pk
from prunekit.engine.streaming import prune_streaming
rank, init, out, resume, kill = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
def cb(i):
    if i == kill:
        os.kill(os.getpid(), signal.SIGKILL)
cfg = pk.PruneConfig(method="sparsegpt", calib=pk.CalibConfig(batch_size=2))
prune_streaming({ckpt!r}, out, cfg, calib=torch.load({calib!r}), progress=False, resume=resume, after_block=cb)
dist.barrier()
dist.destroy_process_group()
"""


def _launch2(script: str, *args: str) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, so, se) for p, (so, se) in zip(procs, outs)]


def test_data_parallel_run_killed_and_resumed_is_bit_identical(ckpt, calib, tmp_path):
    """Both ranks SIGKILLed after block 0; relaunched with resume, each rank continues from its
    own saved inputs and the output equals an uninterrupted 2-rank run bit for bit."""
    torch.save(calib, tmp_path / "calib.pt")
    script = _DIST_RESUME.format(src=str(SRC), ckpt=str(ckpt), calib=str(tmp_path / "calib.pt"))
    full, out = tmp_path / "full", tmp_path / "out"
    for r in _launch2(script, f"file://{tmp_path / 'pg1'}", str(full), "0", "-1"):
        assert r.returncode == 0, r.stderr[-2000:]
    killed = _launch2(script, f"file://{tmp_path / 'pg2'}", str(out), "0", "0")
    assert [r.returncode for r in killed] == [-signal.SIGKILL] * 2, killed[0].stderr[-2000:]
    assert not out.exists() and resume_dir(out.absolute()).is_dir()
    for r in _launch2(script, f"file://{tmp_path / 'pg3'}", str(out), "1", "-1"):
        assert r.returncode == 0, r.stderr[-2000:]
    _assert_same(_tensors(out), _tensors(full))
    assert json.loads((out / "prunekit.json").read_text())["streaming"]["resumed_from_block"] == 1


def test_rank0_output_error_reaches_every_rank(ckpt, calib, tmp_path):
    """Only rank 0 reserves the output; its one-line error is raised on every rank (no hang)."""
    torch.save(calib, tmp_path / "calib.pt")
    out = tmp_path / "o"
    out.mkdir()
    (out / "x.txt").write_text("x")
    script = textwrap.dedent("""
        import sys, torch, torch.distributed as dist
        torch.set_num_threads(1)
        sys.path.insert(0, {src!r})
        import prunekit as pk
        from prunekit.engine.streaming import prune_streaming
        from prunekit.errors import OutputError
        rank = int(sys.argv[1])
        dist.init_process_group("gloo", init_method=sys.argv[2], rank=rank, world_size=2)
        try:
            prune_streaming({ckpt!r}, {out!r}, pk.PruneConfig(), calib=torch.load({calib!r}), progress=False)
        except OutputError as e:
            print("refused:", e)
    """).format(src=str(SRC), ckpt=str(ckpt), out=str(out), calib=str(tmp_path / "calib.pt"))
    for r in _launch2(script, f"file://{tmp_path / 'pg'}"):
        assert r.returncode == 0, r.stderr[-2000:]
        assert "refused:" in r.stdout and "not empty" in r.stdout
    assert sorted(q.name for q in out.iterdir()) == ["x.txt"]


def test_resume_refused_for_disk_space_keeps_the_finished_blocks(ckpt, calib, tmp_path, monkeypatch):
    import prunekit.export.hf as hf

    out = tmp_path / "out"
    cfg = pk.PruneConfig(method="wanda")
    with pytest.raises(_Crash):
        prune_streaming(ckpt, out, cfg, calib=calib, progress=False, after_block=_crash_after(1))
    real = hf.shutil.disk_usage
    monkeypatch.setattr(hf.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(OutputError, match="not enough free space"):
        prune_streaming(ckpt, out, cfg, calib=calib, progress=False, resume=True)
    monkeypatch.setattr(hf.shutil, "disk_usage", real)
    seen: list[int] = []
    prune_streaming(ckpt, out, cfg, calib=calib, progress=False, resume=True, after_block=seen.append)
    assert seen == [2]


def test_device_and_dtype_arguments_are_checked():
    from prunekit.engine.streaming import resolve_device
    from prunekit.models.shards import parse_dtype

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu0", "tpu"):
        with pytest.raises(ConfigError, match=bad):
            resolve_device(bad)
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("float16") is torch.float16
    assert parse_dtype(None) is None
    with pytest.raises(ConfigError, match="'int8' is not one of"):
        parse_dtype("int8")
