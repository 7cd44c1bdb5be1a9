"""No traceback, ever: every flag, setting and recipe field is checked; OS failures and signals
end in one line; nothing is written on failure (issue 10).

The property tests read the argument parser and the method registry, so a new flag or a new
method setting is covered without touching this file.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prunekit as pk
from prunekit.cli.main import build_parser, main
from prunekit.errors import ConfigError, OutputError
from prunekit.methods import list_methods, settings_schema

BAD_VALUES = ["abc", "0", "-1", "-5", "nan", "inf", "1e30", "99999999999999999999", "", " "]


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _run(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_refused(rc, err, before, root, label):
    lines = err.strip().splitlines()
    assert rc == 2, (label, rc, err)
    assert len(lines) == 1 and lines[0].startswith("prunekit: error: "), (label, err)
    assert "Traceback" not in err and "internal error" not in err, (label, err)
    assert _tree(root) == before, (label, "files changed")


# --- the issue's table, row by row -----------------------------------------------------------------
def _issue_rows(d: Path, model: Path, calib: Path):
    bad_yaml = d / "bad.yaml"
    bad_yaml.write_text("method: [wanda\n")
    wrong_type = d / "wrong.yaml"
    wrong_type.write_text("method: wanda\ncalib:\n  nsamples: lots\n")
    targets_list = d / "targets.yaml"
    targets_list.write_text("method: wanda\ntargets: [mlp]\n")
    unknown_calib = d / "unknown.yaml"
    unknown_calib.write_text("method: wanda\ncalib:\n  nsample: 4\n")
    afile = d / "afile"
    afile.write_text("x")
    p = ["prune", model, "--calib", calib, "--nsamples", "2", "--seqlen", "16", "-q"]
    ev = ["eval", model, "--data", calib, "-q"]
    out = ["--out", d / "out"]
    return {
        "batch-size 0": ([*p, "-m", "wanda", "--batch-size", "0", *out], "--batch-size"),
        "eval seqlen 0": ([*ev, "--seqlen", "0"], "--seqlen"),
        "eval seqlen 1": ([*ev, "--seqlen", "1"], "--seqlen"),
        "max-windows 0": ([*ev, "--seqlen", "16", "--max-windows", "0"], "--max-windows"),
        "max-windows -3": ([*ev, "--seqlen", "16", "--max-windows", "-3"], "--max-windows"),
        "invalid regex": ([*p, "-m", "wanda", "--exclude", "re:[", *out], "not a valid regular expression"),
        "block_size=0": ([*p, "-m", "sparsegpt", "--set", "block_size=0", *out], "block_size=0"),
        "block_size=abc": ([*p, "-m", "sparsegpt", "--set", "block_size=abc", *out], "block_size=abc"),
        "block_size=-5": ([*p, "-m", "sparsegpt", "--set", "block_size=-5", *out], "block_size=-5"),
        "per_row=abc": ([*p, "-m", "magnitude", "--set", "per_row=abc", *out], "true or false"),
        "damp=-1": ([*p, "-m", "sparsegpt", "--set", "damp=-1", *out], "damp=-1 is out of range"),
        "flap 2:4": ([*p, "-m", "flap", "--pattern", "2:4", *out], "structured method"),
        "recipe malformed": ([*p, "--recipe", bad_yaml, *out], "not valid YAML at line"),
        "recipe wrong type": ([*p, "--recipe", wrong_type, *out], "calib.nsamples=lots"),
        "recipe targets list": ([*p, "--recipe", targets_list, *out], "targets must be a mapping"),
        "recipe unknown calib key": ([*p, "--recipe", unknown_calib, *out], "unknown key calib.nsample"),
        "recipe missing": ([*p, "--recipe", d / "missing.yaml", *out], "does not exist"),
        "recipe folder": ([*p, "--recipe", d, *out], "is a folder"),
        "out under a file": ([*p, "-m", "wanda", "--out", afile / "sub"], "which is a file"),
        "out under /proc": ([*p, "-m", "wanda", "--out", "/proc/prunekit-test/x"], "cannot write --out"),
        "nsamples 0 echoes": ([*p[:4], "--nsamples", "0", "-m", "wanda", *out], "0 is out of range"),
    }


def test_issue_table_rows_refused_in_one_line(tmp_path, capsys, tiny1_dir, calib_txt):
    rows = _issue_rows(tmp_path, tiny1_dir, calib_txt)
    for label, (argv, msg) in rows.items():
        before = _tree(tmp_path)
        rc, _, err = _run(capsys, argv)
        _assert_refused(rc, err, before, tmp_path, label)
        assert msg in err, (label, err)


# --- property tests: every flag of every subcommand, every setting of every method -----------------
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    ap = build_parser()
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _base_argv(cmd: str, d: Path, model: Path, calib: Path) -> list:
    return {
        "prune": ["prune", model, "-m", "magnitude", "--calib", calib, "--nsamples", "2", "--seqlen", "16",
                  "-q", "--out", d / "out"],
        "eval": ["eval", model, "--data", calib, "--seqlen", "16", "--max-windows", "1", "-q"],
        "info": ["info", model],
        "ls": ["ls"],
        "recommend": ["recommend", "--goal", "speed"],
        "recover": ["recover", model, "--data", calib, "--tokens", "64", "--seqlen", "16", "-q", "--out", d / "out"],
        "demo": ["demo", "--model", model, "--calib", calib, "--data", calib, "--nsamples", "2",
                 "--seqlen", "16", "--eval-windows", "1", "--out", d / "demo-out"],
        "fetch": ["fetch", "qwen2.5-coder-0.5b", "--wheels", d / "no-wheels"],  # never downloads: no such folder
        "segment": ["segment", calib, "-q"],
        "export": ["export", model, "--outtype", "f32", "-q", "--out", d / "m.gguf"],
        "decode": ["decode", model, "--prompt", "The water", "--max-new-tokens", "2", "--lookup", "2:4"],
        "reason": ["reason", model, "--data", "gsm8k", "--limit", "1", "--n", "2", "--max-new-tokens", "2"],
        "context": ["context", "prune", "--question", "water", "--passages", calib, "--method", "bm25", "--reader", model],
        "tokens": ["tokens", model, "--method", "random", "--layer", "0", "--keep", "0.5", "--prompt", "The water",
                   "--max-new-tokens", "2"],
        "ftp-train": ["ftp-train", model, "--calib", calib, "--nsamples", "2", "--seqlen", "16", "--sparsity", "0",
                      "--steps", "1", "-q", "--out", d / "out" / "r.safetensors"],
        "prompt-search": ["prompt-search", model, "--task", "sst-2", "--budget", "1", "--test-limit", "4", "--json"],
    }[cmd]  # fmt: skip


def _with_flag(argv: list, flag: str, value: str) -> list:
    argv = list(argv)
    if flag in argv:
        i = argv.index(flag)
        return argv[:i] + argv[i + 2 :] + [flag, value]
    return argv + [flag, value]


def _outcome_ok(rc, err, before, root, label) -> None:
    """Either refused cleanly (2, one line, nothing written) or accepted (0); never a traceback."""
    assert "Traceback" not in err, (label, err)
    if rc == 0:
        return
    _assert_refused(rc, err, before, root, label)


def _cleanup_outputs(root: Path) -> None:
    import shutil

    for name in ("out", "demo-out"):
        shutil.rmtree(root / name, ignore_errors=True)


def test_every_numeric_and_text_flag_with_bad_values(tmp_path, capsys, tiny1_dir, calib_txt):
    seen = 0
    for cmd, parser in _subcommands().items():
        base = _base_argv(cmd, tmp_path, tiny1_dir, calib_txt)
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or action.dest in ("help", "out", "recipe"):
                continue
            flag = action.option_strings[-1]
            # lm-eval indexes its task registry on every call (~10 s): two values are enough there
            values = ["abc", ""] if action.dest.startswith("lm_eval") else BAD_VALUES
            for v in values:
                argv = _with_flag(base, flag, v)
                before = _tree(tmp_path)
                t0 = time.perf_counter()
                rc, _, err = _run(capsys, argv)
                if os.environ.get("PRUNEKIT_TEST_TIMES") and time.perf_counter() - t0 > 1:
                    print(f"SLOW {time.perf_counter() - t0:.1f}s {cmd} {flag} {v!r} rc={rc}", file=sys.__stderr__)
                _outcome_ok(rc, err, before, tmp_path, f"{cmd} {flag} {v!r}")
                if action.type is not None and v in ("abc", "", " ", "nan", "1e30", "-5"):
                    assert rc == 2, f"{cmd} {flag} {v!r} was accepted"  # typed flags refuse these
                _cleanup_outputs(tmp_path)
                seen += 1
    assert seen > 100  # the walk really visited the flags


def test_every_method_setting_with_bad_values(tmp_path, capsys, tiny1_dir, calib_txt):
    base = ["prune", tiny1_dir, "--calib", calib_txt, "--nsamples", "2", "--seqlen", "16", "-q",
            "--out", tmp_path / "out"]  # fmt: skip
    checked = 0
    shared_done: set[str] = set()  # the refine_* settings every unstructured method shares: once is enough
    for method in list_methods():
        for name, s in settings_schema(method).items():
            if name.startswith("refine"):
                if name in shared_done:
                    continue
                shared_done.add(name)
            for v in BAD_VALUES + ["true", "1.5", "null"]:
                argv = [*base, "-m", method, "--set", f"{name}={v}"]
                before = _tree(tmp_path)
                rc, _, err = _run(capsys, argv)
                label = f"{method} {name}={v!r}"
                _outcome_ok(rc, err, before, tmp_path, label)
                if v in ("", " ", "nan", "inf") and s.type is not str:
                    assert rc == 2 and f"setting {name}=" in err, label
                _cleanup_outputs(tmp_path)
                checked += 1
        rc, _, err = _run(capsys, [*base, "-m", method, "--set", "no_such_setting=1"])
        assert rc == 2 and "has no setting no_such_setting" in err, method
    assert checked >= 10 * len(list_methods())


def test_settings_validated_in_the_python_api_too():
    with pytest.raises(ConfigError, match="block_size=0 is out of range"):
        pk.PruneConfig(method="sparsegpt", method_args={"block_size": 0}).validate()
    with pytest.raises(ConfigError, match="per_row=abc is invalid"):
        pk.PruneConfig(method="magnitude", method_args={"per_row": "abc"}).validate()
    with pytest.raises(ConfigError, match="nsamples=0"):
        pk.PruneConfig(calib=pk.CalibConfig(nsamples=0)).validate()
    with pytest.raises(ConfigError, match="batch_size=0"):
        pk.PruneConfig(calib=pk.CalibConfig(batch_size=0)).validate()
    with pytest.raises(ConfigError, match="structured method"):
        pk.PruneConfig(method="flap", pattern="2:4").validate()
    with pytest.raises(ConfigError, match="regular expression"):
        pk.PruneConfig(targets=pk.TargetSpec(include=("re:(",))).validate()
    with pytest.raises(ConfigError, match="unknown key calib.foo"):
        pk.PruneConfig.from_dict({"calib": {"foo": 1}})
    assert pk.get_method("sparsegpt", block_size="64").block_size == 64  # typed from a string
    import torch

    with pytest.raises(ConfigError, match="max_windows"):
        pk.perplexity(torch.nn.Linear(2, 2), torch.zeros(1, 8, dtype=torch.long), seqlen=4, max_windows=0)
    with pytest.raises(ConfigError, match="seqlen"):
        pk.perplexity(torch.nn.Linear(2, 2), torch.zeros(1, 8, dtype=torch.long), seqlen=1)


def test_recipe_round_trip_keeps_typed_settings(tmp_path, capsys, tiny1_dir, calib_txt):
    out = tmp_path / "o"
    rc, _, err = _run(capsys, ["prune", tiny1_dir, "-m", "sparsegpt", "--set", "block_size=64", "--calib", calib_txt,
                               "--nsamples", "2", "--seqlen", "16", "-q", "--out", out])  # fmt: skip
    assert rc == 0, err
    cfg = json.loads((out / "prunekit.json").read_text())["config"]
    assert cfg["method_args"] == {"block_size": 64}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(pk.PruneConfig.from_dict(cfg).to_yaml())
    assert pk.PruneConfig.from_file(recipe).method_args == {"block_size": 64}


# --- operating-system failures ------------------------------------------------------------------
def _prune_argv(model, calib, out):
    return ["prune", model, "-m", "magnitude", "--calib", calib, "--nsamples", "2", "--seqlen", "16", "-q",
            "--out", out]  # fmt: skip


def test_read_only_output_fails_before_loading(tmp_path, capsys, tiny1_dir, calib_txt, monkeypatch):
    import prunekit.export.hf as hf
    import prunekit.models as models

    def boom(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(models, "load_model", boom)

    def ro(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(hf.tempfile, "mkdtemp", ro)
    before = _tree(tmp_path)
    rc, _, err = _run(capsys, _prune_argv(tiny1_dir, calib_txt, tmp_path / "new" / "out"))
    _assert_refused(rc, err, before, tmp_path, "read-only")
    assert "Read-only file system" in err and "cannot write --out" in err


def test_not_enough_space_refused_before_loading(tmp_path, capsys, tiny1_dir, calib_txt, monkeypatch):
    import shutil as sh

    import prunekit.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    real = sh.disk_usage
    monkeypatch.setattr(sh, "disk_usage", lambda p: real(p)._replace(free=1000))
    before = _tree(tmp_path)
    rc, _, err = _run(capsys, _prune_argv(tiny1_dir, calib_txt, tmp_path / "out"))
    _assert_refused(rc, err, before, tmp_path, "no space")
    assert "not enough free space" in err and "MB" in err


@pytest.mark.parametrize("failure", ["enospc", "safetensors", "permission"])
def test_write_failures_are_one_line(tmp_path, capsys, tiny1_dir, calib_txt, monkeypatch, failure):
    from transformers import PreTrainedModel

    def fail(self, *a, **k):
        if failure == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "model.safetensors")
        if failure == "permission":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "model.safetensors")
        from safetensors import SafetensorError

        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", fail)
    before = _tree(tmp_path)
    rc, _, err = _run(capsys, _prune_argv(tiny1_dir, calib_txt, tmp_path / "out"))
    _assert_refused(rc, err, before, tmp_path, failure)
    assert ("Permission denied" if failure == "permission" else "No space left on device") in err


def test_save_api_raises_output_error(tmp_path, tiny_llama, tokenizer, monkeypatch):
    import prunekit.export.hf as hf

    monkeypatch.setattr(hf.tempfile, "mkdtemp", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))))  # fmt: skip
    with pytest.raises(OutputError, match="Read-only file system"):
        pk.save_pretrained_atomic(tiny_llama, tokenizer, tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


def test_permissions_follow_the_umask(tmp_path, capsys, tiny1_dir, calib_txt):
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        rc, _, err = _run(capsys, _prune_argv(tiny1_dir, calib_txt, out))
    finally:
        os.umask(old)
    assert rc == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


def test_missing_parents_are_created_and_removed_on_failure(tmp_path, capsys, tiny1_dir, calib_txt):
    rc, _, err = _run(capsys, _prune_argv(tiny1_dir, calib_txt, tmp_path / "a" / "b" / "out"))
    assert rc == 0 and (tmp_path / "a" / "b" / "out" / "config.json").is_file(), err
    before = _tree(tmp_path)
    argv = _prune_argv(tiny1_dir, calib_txt, tmp_path / "c" / "d" / "out") + ["--set", "per_row=maybe"]
    rc, _, err = _run(capsys, argv)
    _assert_refused(rc, err, before, tmp_path, "bad setting with new parents")


def test_stale_temp_folder_is_removed_with_a_note(tmp_path, capsys, tiny1_dir, calib_txt):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / f".out.tmp-prunekit-{dead.pid}-abcd1234"
    (stale / "junk").mkdir(parents=True)
    legacy = tmp_path / ".out.tmp-k3j4h5g6"  # the naming of prunekit 0.1.0
    legacy.mkdir()
    alive = tmp_path / f".out.tmp-prunekit-{os.getpid()}-zzzz"  # a run in progress: left alone
    alive.mkdir()
    assert pk.export.stale_temp_folders(tmp_path / "out") == sorted([stale, legacy])
    rc, _, err = _run(capsys, _prune_argv(tiny1_dir, calib_txt, tmp_path / "out"))
    assert rc == 0, err
    assert not stale.exists() and not legacy.exists() and alive.exists()
    assert err.count("temporary folder left by an interrupted prunekit run") == 2


def test_prunekit_json_records_what_the_output_is(tmp_path, capsys, tiny1_dir, calib_txt):
    import hashlib

    out = tmp_path / "out"
    rc, _, err = _run(capsys, ["prune", tiny1_dir, "-m", "flap", "--calib", calib_txt, "--nsamples", "2",
                               "--seqlen", "16", "-q", "--out", out])  # fmt: skip
    assert rc == 0, err
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["applied"]["pattern"] == "structured"
    src = meta["source_model"]
    assert src["path"] == str(Path(tiny1_dir).resolve()) and src["kind"] == "folder"
    w = {x["file"]: x["sha256"] for x in src["weights"]}
    assert w["model.safetensors"] == hashlib.sha256((Path(tiny1_dir) / "model.safetensors").read_bytes()).hexdigest()
    n = meta["parameters"]
    assert n["pruned"] < n["dense"] and n["pruned"] == sum(p.numel() for p in pk.load_model(str(out))[0].parameters())


def test_cut_off_message_is_complete(tmp_path, capsys, calib_txt):
    d = tmp_path / "only-config"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    rc, _, err = _run(capsys, ["info", d])
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert not err.rstrip().endswith(":") and not err.rstrip().endswith("one of:"), err


# --- signals ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
@pytest.mark.parametrize("delay", [0.3, 0.8, 3.0])  # during imports / model loading / pruning
def test_signals_exit_cleanly_and_leave_no_temp(tmp_path, tiny_llama_dir, calib_txt, sig, code, delay):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "prunekit", "prune", str(tiny_llama_dir), "-m", "sparsegpt", "--calib",
           str(calib_txt), "--nsamples", "1024", "--seqlen", "64", "--batch-size", "1", "-q", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    time.sleep(delay)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:  # finished before the signal: nothing to check on this machine
        pytest.skip("the prune finished before the signal arrived")
    if p.returncode == -sig and not err.strip():  # a loaded machine: Python itself was still starting
        assert not out.exists() and not any(tmp_path.glob(".out.tmp-prunekit-*"))
        pytest.skip("the signal arrived before the interpreter ran any prunekit code (default action, nothing written)")
    assert p.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "nothing was written" in lines[0] and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == [], "temporary folder left behind"
