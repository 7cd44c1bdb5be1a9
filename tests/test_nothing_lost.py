"""Nothing lost, on every machine (issue 44): dangerous ``--out`` values through every writer, data
that is not what it claims, launchers and pipes, and the silent surprises a new-user audit found.

The writer walk reads the argument parser: a new subcommand with ``--out`` fails
``test_every_writer_subcommand_is_walked`` until it is added to ``WRITERS`` below.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.cli.main import build_parser, main
from prunekit.errors import ConfigError, OutputError


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with the bytes of each file: a test sees any change."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _run(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(rc, err, *needles):
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("prunekit: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture
def work(tmp_path, tokenizer, monkeypatch):
    """A working folder (the current directory) holding the user's files and a one-block model."""
    from conftest import make_llama

    root = tmp_path / "home"
    (root / "project").mkdir(parents=True)
    (root / "project" / "notes.txt").write_text("the user's work")
    model = root / "project" / "model"
    make_llama(layers=1).save_pretrained(model)
    tokenizer.save_pretrained(model)
    from conftest import _corpus

    (root / "project" / "calib.txt").write_text("\n\n".join(_corpus()[:30]))
    monkeypatch.chdir(root / "project")
    return root


# --- 1, 2, 4: one guarded path for every writer ------------------------------------------------------
def _prune(model, calib, out):
    return ["prune", model, "-m", "wanda", "--calib", calib, "--nsamples", "1", "--seqlen", "16", "-q", "--out", out]


def _prune_stream(model, calib, out):
    return [*_prune(model, calib, out), "--stream"]


def _recover(model, calib, out):
    return ["recover", model, "--data", calib, "--tokens", "32", "--seqlen", "16", "-q", "--out", out]


def _demo(model, calib, out):
    return ["demo", "--model", model, "--calib", calib, "--data", calib, "--nsamples", "1", "--seqlen", "16",
            "--eval-windows", "1", "--method", "magnitude", "--out", out]  # fmt: skip


def _export(model, calib, out):
    return ["export", model, "--outtype", "f32", "-q", "--out", out]


def _segment(model, calib, out):
    return ["segment", calib, "-q", "--out", out]


def _ftp_train(model, calib, out):
    return ["ftp-train", model, "--calib", calib, "--nsamples", "2", "--seqlen", "16", "--sparsity", "0", "-q", "--out", out]


# writer -> (argv builder, its dangerous --out values); folder writers must never replace the input
# model, a folder inside it, or the current/home folder or one above; file writers never the input
# (or a file of the input folder), a folder, or an empty path
_DIRS = ["", " ", ".", "..", "./", "~", "model", "model/sub"]
_FILES = ["", " ", ".", "..", "./", "~", "model"]
WRITERS = {
    "prune": (_prune, _DIRS), "prune --stream": (_prune_stream, _DIRS), "recover": (_recover, _DIRS),
    "demo": (_demo, _DIRS), "export": (_export, [*_FILES, "model/config.json"]),
    "segment": (_segment, [*_FILES, "calib.txt"]),
    "ftp-train": (_ftp_train, [*_FILES, "calib.txt", "model/config.json"]),
}  # fmt: skip


def _has_overwrite(cmd: str) -> bool:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return any("--overwrite" in a.option_strings for a in sub.choices[cmd]._actions)


def test_every_writer_subcommand_is_walked():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    writers = {name for name, p in sub.choices.items() if any("--out" in a.option_strings for a in p._actions)}
    assert writers == {w.split()[0] for w in WRITERS}, "add the new writer to WRITERS"


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("writer,out", [(w, o) for w, (_, outs) in WRITERS.items() for o in outs])
def test_dangerous_out_is_refused_and_nothing_changes(work, capsys, monkeypatch, writer, out, overwrite):
    monkeypatch.setenv("HOME", str(work))
    if overwrite and not _has_overwrite(writer.split()[0]):
        pytest.skip(f"{writer} has no --overwrite")
    before = _tree(work)
    argv = WRITERS[writer][0]("model", "calib.txt", out) + (["--overwrite"] if overwrite else [])
    rc, _, err = _run(capsys, argv)
    _one_line(rc, err)
    assert _tree(work) == before, "files changed"


def test_empty_out_says_so(work, capsys):
    rc, _, err = _run(capsys, _prune("model", "calib.txt", ""))
    _one_line(rc, err, "--out is empty")


def test_demo_never_replaces_the_users_folder_but_replaces_its_own_output(work, capsys):
    (work / "project" / "keep").mkdir()
    (work / "project" / "keep" / "thesis.tex").write_text("years of work")
    before = _tree(work)
    rc, _, err = _run(capsys, _demo("model", "calib.txt", "keep"))
    _one_line(rc, err, "not empty", "--overwrite")
    assert _tree(work) == before
    rc, _, err = _run(capsys, _demo("model", "calib.txt", "demo-out"))
    assert rc == 0, err
    (work / "project" / "demo-out" / "stale.txt").write_text("from the first run")
    rc, _, err = _run(capsys, _demo("model", "calib.txt", "demo-out"))  # `make demo` twice: replaces its own output
    assert rc == 0, err
    assert (work / "project" / "demo-out" / "prunekit.json").is_file()
    assert not (work / "project" / "demo-out" / "stale.txt").exists()
    assert (work / "project" / "keep" / "thesis.tex").read_text() == "years of work"


def test_api_writers_refuse_the_source_folder_and_the_current_one(work, monkeypatch):
    model, tok = pk.load_model("model")
    before = _tree(work)
    for out in ("model", str(work / "project" / "model"), "", ".", ".."):
        with pytest.raises(OutputError):
            pk.save_pretrained_atomic(model, tok, out, overwrite=True)
    from prunekit.export import OutputSlot

    for out in ("", ".", ".."):
        with pytest.raises(OutputError):
            OutputSlot(out, overwrite=True)
    from prunekit.engine.streaming import prune_streaming

    for out in ("model", "", "."):
        with pytest.raises(OutputError):
            prune_streaming("model", out, pk.PruneConfig(method="wanda"), calib=torch.zeros(1, 8, dtype=torch.long),
                            overwrite=True, progress=False)  # fmt: skip
    assert _tree(work) == before


# --- 3: a sparsity just below 1 never prunes a whole row -------------------------------------------
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_sparsity_just_below_one_keeps_one_weight_per_row(tiny_llama, calib_ids, method, caplog):
    from prunekit.patterns import _warn_kept_one

    _warn_kept_one.cache_clear()  # warned once per shape and sparsity in a process
    cfg = pk.PruneConfig(method=method, sparsity=0.9999)
    pk.prune_(tiny_llama, cfg, calib_ids, progress=False)
    for name, m in tiny_llama.model.layers.named_modules():
        if isinstance(m, torch.nn.Linear):
            # the comparison group: a row for Wanda; the matrix for magnitude and SparseGPT's column blocks
            nz = (m.weight != 0).sum(dim=1) if method == "wanda" else (m.weight != 0).sum().reshape(1)
            assert (nz >= 1).all(), (name, nz.min())
    assert "keeping the largest-scoring one" in caplog.text


def test_sparsity_just_below_one_on_the_cli_exits_0_with_a_warning(work, capsys):
    rc, _, err = _run(capsys, ["prune", "model", "-m", "wanda", "--sparsity", "0.9999", "--calib", "calib.txt",
                               "--nsamples", "1", "--seqlen", "16", "-q", "--out", "out"])  # fmt: skip
    assert rc == 0, err
    model, _ = pk.load_model("out")
    for m in model.model.layers.modules():
        if isinstance(m, torch.nn.Linear):
            assert ((m.weight != 0).sum(dim=1) >= 1).all()


# --- 4, 10: calibration tensors through the API ---------------------------------------------------
@pytest.mark.parametrize("bad,needle", [
    (torch.zeros(0, 16, dtype=torch.long), "zero windows"),
    (torch.zeros(2, 16), "integer token ids"),
    (torch.zeros(16, dtype=torch.long), "2-D"),
    (torch.full((2, 16), 10_000, dtype=torch.long), "outside the model's vocabulary"),
    (torch.full((2, 16), -1, dtype=torch.long), "outside the model's vocabulary"),
    ([[1, 2, 3]], "torch.Tensor"),
])  # fmt: skip
@pytest.mark.parametrize("method", ["wanda", "flap"])
def test_bad_calibration_tensors_are_config_errors(tiny_llama, bad, needle, method):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    with pytest.raises(ConfigError, match=needle):
        pk.prune_(tiny_llama, pk.PruneConfig(method=method, sparsity=0.2 if method == "flap" else 0.5), bad, progress=False)
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items()), "the model changed"


def test_a_tokenizer_larger_than_the_vocabulary_is_one_line(tmp_path, capsys, tokenizer, calib_txt):
    from conftest import make_llama

    d = tmp_path / "small-vocab"
    make_llama(vocab=64, layers=1).save_pretrained(d)
    tokenizer.save_pretrained(d)  # 384 tokens
    capsys.readouterr()
    rc, _, err = _run(capsys, _prune(d, calib_txt, tmp_path / "out"))
    _one_line(rc, err, "outside the model's vocabulary")
    assert not (tmp_path / "out").exists()


def test_a_model_without_block_linears_is_told_so(tiny_llama):
    for layer in tiny_llama.model.layers:
        for n, m in list(layer.named_children()):
            if n in ("self_attn", "mlp"):
                setattr(layer, n, torch.nn.Identity())
    with pytest.raises(ConfigError, match="no Linear inside its decoder blocks"):
        pk.prune_(tiny_llama, pk.PruneConfig(method="magnitude"), progress=False)


# --- 6, 9, 10: data that is not what it claims -----------------------------------------------------
def _bad_sources(d: Path) -> dict[str, tuple[str, str]]:
    (d / "latin1.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    (d / "latin1.raw").write_bytes(b" = Title = \n caf\xe9 \n")
    full = gzip.compress(b"".join(json.dumps({"text": f"doc {i} " * 50}).encode() + b"\n" for i in range(200)))
    (d / "cut.jsonl.gz").write_bytes(full[: len(full) // 2])
    (d / "wt").mkdir()
    (d / "wt" / "wiki.test.raw").write_text("x\n")
    os.mkfifo(d / "fifo.txt")
    return {
        "non-utf8 jsonl": (str(d / "latin1.jsonl"), "latin1.jsonl:2 is not UTF-8"),
        "non-utf8 wikitext": (f"wikitext2:{d / 'latin1.raw'}", "not UTF-8"),
        "truncated gz": (str(d / "cut.jsonl.gz"), "truncated or corrupt gzip"),
        "wikitext folder": (f"wikitext2:{d / 'wt'}", "is a folder (it holds wiki.test.raw)"),
        "wikitext nothing": ("wikitext2:", "needs the raw file's path"),
        "fifo": (str(d / "fifo.txt"), "not a regular file"),
    }


@pytest.mark.parametrize("case", ["non-utf8 jsonl", "non-utf8 wikitext", "truncated gz", "wikitext folder",
                                  "wikitext nothing", "fifo"])  # fmt: skip
def test_bad_sources_are_one_line(tmp_path, capsys, tiny1_dir, case):
    spec, needle = _bad_sources(tmp_path)[case]
    rc, _, err = _run(capsys, _prune(tiny1_dir, spec, tmp_path / "out"))
    _one_line(rc, err, needle)
    assert not (tmp_path / "out").exists()


def test_a_fifo_recipe_is_refused_without_blocking(tmp_path, capsys, tiny1_dir):
    os.mkfifo(tmp_path / "recipe.yaml")
    rc, _, err = _run(capsys, ["prune", tiny1_dir, "--recipe", tmp_path / "recipe.yaml", "--out", tmp_path / "o"])
    _one_line(rc, err, "not a regular file")


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory, tokenizer):
    from conftest import make_opt

    d = tmp_path_factory.mktemp("opt") / "opt"
    make_opt().save_pretrained(d)  # 512 learned positions
    tokenizer.save_pretrained(d)
    return d


def test_seqlen_beyond_learned_positions_is_one_line(tmp_path, capsys, opt_dir, calib_txt):
    rc, _, err = _run(capsys, ["eval", opt_dir, "--data", calib_txt, "--seqlen", "600"])
    _one_line(rc, err, "longer than this model's 512 learned positions")
    rc, _, err = _run(capsys, ["prune", opt_dir, "-m", "wanda", "--calib", calib_txt, "--nsamples", "1",
                               "--seqlen", "600", "-q", "--out", tmp_path / "out"])  # fmt: skip
    _one_line(rc, err, "longer than this model's 512 learned positions")
    assert not (tmp_path / "out").exists()


def test_seqlen_beyond_rotary_positions_is_noted(tmp_path, capsys, tiny1_dir, calib_txt):
    limit = json.loads((tiny1_dir / "config.json").read_text())["max_position_embeddings"]
    rc, _, err = _run(capsys, ["eval", tiny1_dir, "--data", calib_txt, "--seqlen", limit + 8, "--max-windows", "1"])
    assert rc == 0, err
    assert f"beyond this model's max_position_embeddings {limit}" in err


def test_disk_full_while_streaming_says_resume_continues(tmp_path, capsys, tiny_llama_dir, calib_txt, monkeypatch):
    import safetensors.torch as st
    from safetensors import SafetensorError

    calls = []

    def full(*a, **k):
        calls.append(1)
        if len(calls) > 1:  # the first block is written, the second finds the disk full
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
        return real(*a, **k)

    real = st.save_file
    monkeypatch.setattr(st, "save_file", full)
    rc, _, err = _run(capsys, _prune_stream(tiny_llama_dir, calib_txt, tmp_path / "out"))
    lines = err.strip().splitlines()
    assert rc == 2 and "Traceback" not in err and "internal error" not in err, err
    assert any("disk full" in ln and "--resume" in ln for ln in lines), err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob("*.partial")), "a half-written shard was left"
    monkeypatch.setattr(st, "save_file", real)
    rc, _, err = _run(capsys, [*_prune_stream(tiny_llama_dir, calib_txt, tmp_path / "out"), "--resume"])
    assert rc == 0, err


# --- 7: torchrun --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", ["0", "1"])
def test_torchrun_without_stream_is_refused_once(tmp_path, capsys, tiny1_dir, calib_txt, monkeypatch, rank):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    rc, _, err = _run(capsys, _prune(tiny1_dir, calib_txt, tmp_path / "out"))
    assert rc == 2
    if rank == "0":
        _one_line(rc, err, "torchrun", "--stream")
    else:
        assert err == "", "every rank repeated the line"
    assert not (tmp_path / "out").exists()


# --- 9: pipes ---------------------------------------------------------------------------------------
def test_ls_into_a_closed_pipe_is_quiet():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "prunekit", "ls", "--guide"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)  # fmt: skip
    p.stdout.readline()
    p.stdout.close()  # `| head -1`
    err = p.stderr.read().decode()
    rc = p.wait(timeout=120)
    assert "Broken pipe" not in err and "Traceback" not in err and err.strip() == "", err
    assert rc in (0, 141, -signal.SIGPIPE), rc


# --- 11: flags that were ignored silently -------------------------------------------------------------
def test_duplicate_set_keys_are_refused(tmp_path, capsys, tiny1_dir, calib_txt):
    rc, _, err = _run(capsys, [*_prune(tiny1_dir, calib_txt, tmp_path / "o"), "--set", "block_size=8", "--set",
                               "block_size=16", "-m", "sparsegpt"])  # fmt: skip
    _one_line(rc, err, "given twice")


def test_recover_budget_without_select_is_refused(tmp_path, capsys, tiny1_dir, calib_txt):
    rc, _, err = _run(capsys, [*_recover(tiny1_dir, calib_txt, tmp_path / "o"), "--budget", "8"])
    _one_line(rc, err, "--select paser")


def test_fewshot_on_a_zero_shot_task_is_refused(capsys, tiny1_dir, tmp_path):
    rc, _, err = _run(capsys, ["eval", tiny1_dir, "--tasks", "piqa", "--fewshot", "3"])
    _one_line(rc, err, "--fewshot 3 applies to gsm8k")
    rc, _, err = _run(capsys, ["eval", tiny1_dir, "--lm-eval", "piqa", "--lm-eval-include", tmp_path / "nope"])
    _one_line(rc, err, "is not a folder")


# --- 13: a data-free method does not calibrate ------------------------------------------------------
def test_magnitude_reads_and_forwards_no_calibration(tiny_llama, monkeypatch, tmp_path, capsys, tiny1_dir):
    import prunekit.api as api
    import prunekit.data as data

    def boom(*a, **k):
        raise AssertionError("calibrated")

    monkeypatch.setattr(api, "run_layerwise", boom)
    monkeypatch.setattr(api, "calibration_windows", boom)
    monkeypatch.setattr(data, "calibration_windows", boom)
    monkeypatch.setattr(data, "load_source", boom)
    rep = pk.prune_(tiny_llama, pk.PruneConfig(method="magnitude"), progress=False)
    assert rep.sparsity == pytest.approx(0.5, abs=0.01) and rep.calib["source"] is None
    rc, out, err = _run(capsys, ["prune", tiny1_dir, "-m", "magnitude", "--out", tmp_path / "m"])
    assert rc == 0, err
    assert "calibration: none" in out


# --- 14: what the docs and the guide promise ---------------------------------------------------------
def test_low_level_method_call_takes_a_text_pattern():
    from prunekit.engine import LayerStats, Stat
    from prunekit.methods import get_method
    from prunekit.patterns import NM

    W = torch.randn(8, 16)
    stats = LayerStats("x", 64, {Stat.INPUT_SQNORM: torch.rand(16) + 0.1})
    for name in ("wanda", "magnitude"):
        Wp, _ = get_method(name).prune(W, stats, "2:4", 0.5)
        assert NM(2, 4).is_satisfied(Wp) and (Wp == 0).float().mean() == 0.5


def test_recommend_picks_the_best_cell_measured_at_the_budget():
    from prunekit import guide as G

    data = G.load_data()
    # the routine protocol with the most 70% cells (recommend() prefers the protocol with the most rows)
    at70 = max(([r for r in P["rows"] if r["sparsity"] == 0.7 and r["pattern"] == "unstructured" and r["perplexity"]]
                for P in data["protocols"] if P["routine"]), key=len, default=[])  # fmt: skip
    if not at70:
        pytest.skip("no 70% cells measured")
    best = min(at70, key=lambda r: r["perplexity"])
    rec = G.recommend("quality", 0.7)
    assert rec.method == best["method"] and rec.sparsity == 0.7
    method, flags = G.cell_method(best["method"])
    assert f"--method {method} " in rec.command and flags in rec.command


def test_guide_does_not_call_registered_methods_missing():
    from prunekit import guide as G

    rec = G.recommend("domain", 0.5)
    assert not any("not yet implemented" in n and "D-Pruner" in n for n in rec.notes)
    assert "dpruner" in " ".join(rec.notes)


# --- 8: hub ids without a network ----------------------------------------------------------------------
def test_an_unreachable_hub_id_is_one_line_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    rc, _, err = _run(capsys, ["prune", "work/typo", "-m", "wanda", "--out", "o"])  # HF_HUB_OFFLINE=1 (conftest)
    _one_line(rc, err, "not a local path either", "work/ is a local folder", "HF_HUB_OFFLINE")
    import socket

    def no_net(*a, **k):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(socket, "create_connection", no_net)
    rc, _, err = _run(capsys, ["eval", "someorg/somemodel"])
    _one_line(rc, err, "not a local path either", "no network")
    assert list(tmp_path.iterdir()) == [tmp_path / "work"]


def test_lm_eval_errors_come_without_its_warnings(capsys, tiny1_dir):
    pytest.importorskip("lm_eval")
    rc, _, err = _run(capsys, ["eval", tiny1_dir, "--lm-eval", "no_such_task_xyz", "--limit", "1", "-q"])
    _one_line(rc, err, "no_such_task_xyz")


def test_eval_with_a_tokenizer_larger_than_the_vocabulary_is_one_line(tmp_path, capsys, tokenizer, calib_txt):
    from conftest import make_llama

    d = tmp_path / "small-vocab"
    make_llama(vocab=64, layers=1).save_pretrained(d)
    tokenizer.save_pretrained(d)
    capsys.readouterr()
    rc, _, err = _run(capsys, ["eval", d, "--data", calib_txt, "--seqlen", "16", "--max-windows", "2"])
    _one_line(rc, err, "outside the model's vocabulary")


def test_grad_checkpointing_gives_the_same_steps(tokenizer):
    """Recomputed activations: the first block runs twice per step (forward, then again in the
    backward pass), and the losses are those of the plain run."""
    pytest.importorskip("peft")
    from conftest import _corpus, make_llama

    from prunekit.recovery.lora import RecoveryConfig, recover_

    docs = _corpus()[:40]
    reports, calls = [], []
    for gc in (False, True):
        model = make_llama()
        n, mlp = [0], model.model.layers[0].mlp
        real = mlp.forward

        def counted(*a, n=n, real=real, **k):
            n[0] += 1
            return real(*a, **k)

        mlp.forward = counted  # (recomputation bypasses forward hooks)
        cfg = RecoveryConfig(tokens=4 * 2 * 32, seqlen=32, batch_size=2, grad_checkpointing=gc, dropout=0.0)
        reports.append(recover_(model, tokenizer, docs, cfg, progress=False))
        calls.append(n[0])
        assert not getattr(model, "is_gradient_checkpointing", False)  # switched off again
    assert calls == [4, 8], calls
    assert reports[0].losses == pytest.approx(reports[1].losses, rel=1e-5)


# --- issue 35, loose ends: discoverable allocators/refiners, no import circle below the CLI ----------
def test_ls_lists_allocations_and_refiners_with_their_settings(capsys):
    from prunekit.allocation import ALLOCATORS
    from prunekit.methods.dsnot import REFINERS

    rc, out, _ = _run(capsys, ["ls"])
    assert rc == 0
    for name in ALLOCATORS.names():
        assert f"\n  {name} " in out, name
    for name in REFINERS:
        assert f"\n  {name} " in out and "refine_cycles=" in out
    assert "M=5" in out and "levels" in out
    rc, out, _ = _run(capsys, ["ls", "--json"])
    d = json.loads(out.strip().splitlines()[-1])
    assert set(d["allocations"]) == set(ALLOCATORS.names()) and set(d["refiners"]) == set(REFINERS)


def test_demo_and_guide_do_not_import_the_cli():
    code = "import sys, prunekit.demo, prunekit.guide; prunekit.guide.has_recover_command(); print('prunekit.cli.main' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
