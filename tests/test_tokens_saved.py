"""FTP saved folder: ``prunekit.tokens.ftp.save_routed`` → ``prunekit.load`` re-attaches the routing."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_llama

import prunekit as pk
from prunekit.errors import ConfigError, DataError, PrunekitError


def _ids(n=32, seed=1):
    return torch.randint(3, 383, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def routed():
    from prunekit.tokens import ftp

    m = make_llama(layers=4)
    calib = torch.randint(0, 384, (4, 64), generator=torch.Generator().manual_seed(0))
    return m, ftp.train(m, calib, ftp.FTPConfig(sparsity=0.3, steps=20))


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_saved_folder_loads_with_the_same_routing(routed, tokenizer, tmp_path, kv):
    from prunekit.tokens import ftp

    m, routers = routed
    out = ftp.save_routed(m, tokenizer, routers, tmp_path / "routed", {"note": "test"}, kv=kv)
    assert (out / "config.json").is_file() and (out / ftp.ROUTERS_FILE).is_file()
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["note"] == "test" and meta["token_routing"]["method"] == "ftp" and meta["token_routing"]["kv"] == kv
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temp folder was renamed into place
    ids = _ids()
    with torch.no_grad():
        pk.tokens.patch(m, method="ftp", routers=routers, kv=kv)
        a = m(ids).logits
        sa = pk.tokens.unpatch(m)
        m2, tok2 = pk.load(out, dtype="float32")
        b = m2(ids).logits
        sb = pk.tokens.stats(m2)
        dense = pk.tokens.unpatch(m2) and m2(ids).logits
    assert torch.equal(a, b)
    assert sb["token_blocks"] == sa["token_blocks"] < sa["token_blocks_dense"] and sb["removed"] == sa["removed"]
    assert not torch.equal(dense, b)  # routing was really on; unpatch gives the plain model back
    assert tok2 is not None


def test_plain_folder_loads_without_routing(tokenizer, tmp_path):
    m = make_llama(layers=2)
    d = pk.save_pretrained_atomic(m, tokenizer, tmp_path / "plain", {"method": "none"})
    m2, _ = pk.load(d, dtype="float32")
    assert pk.tokens.unpatch(m2) == {}


def test_routers_of_another_model_are_one_line(routed, tokenizer, tmp_path):
    from prunekit.tokens import ftp

    _, routers = routed
    other = make_llama(layers=2)
    with pytest.raises(ConfigError, match="trained for another model") as e:
        ftp.save_routed(other, tokenizer, routers, tmp_path / "x")
    assert "\n" not in str(e.value) and not (tmp_path / "x").exists()
    # a folder whose routers file was swapped for another model's: prunekit.load refuses in one line
    m, _ = routed
    d = ftp.save_routed(m, tokenizer, routers, tmp_path / "ok")
    d2 = ftp.save_routed(other, tokenizer, ftp.Routers([0.0, 0.5], signature=ftp.model_signature(other)), tmp_path / "small")
    (d / ftp.ROUTERS_FILE).write_bytes((d2 / ftp.ROUTERS_FILE).read_bytes())
    with pytest.raises(ConfigError, match="was trained for another model") as e:
        pk.load(d)
    assert "\n" not in str(e.value)
    meta = json.loads((d / "prunekit.json").read_text())
    meta["token_routing"] = {"method": "fastv"}
    (d / "prunekit.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="not an FTP routing entry") as e:
        pk.load(d)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="kv='x'"):
        ftp.save_routed(m, tokenizer, routers, tmp_path / "y", kv="x")
    with pytest.raises(PrunekitError, match="not empty|exists"):
        ftp.save_routed(m, tokenizer, routers, tmp_path / "small")


def _cli(capsys, argv):
    from prunekit.cli.main import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return rc, (json.loads(last) if rc == 0 and last.startswith("{") else None), err


def test_cli_ftp_train_writes_a_loadable_folder(capsys, tiny_llama_dir, calib_txt, tmp_path):
    d = tmp_path / "routed"
    rc, res, err = _cli(capsys, ["ftp-train", tiny_llama_dir, "--calib", calib_txt, "--nsamples", "2", "--seqlen", "32",
                                 "--steps", "5", "-q", "--out", d, "--json"])  # fmt: skip
    assert rc == 0 and res["kind"] == "folder", err
    m, tok = pk.load(d, dtype="float32")
    with torch.no_grad():
        m(_ids())
    st = pk.tokens.unpatch(m)
    assert st["token_blocks"] == 32 + 32 - round(0.6 * 32)  # 2 blocks, block 1 at 0.6
    rc, _, err = _cli(capsys, ["ftp-train", tiny_llama_dir, "--calib", calib_txt, "--nsamples", "2", "--seqlen", "32",
                               "-q", "--out", d])  # fmt: skip
    assert rc == 2 and len(err.strip().splitlines()) == 1, err


def test_prune_method_ftp_adapter_writes_the_folder(tiny_llama_dir, calib_txt, tmp_path):
    import argparse

    from prunekit.tokens.cli import prune_ftp

    base = dict(model=str(tiny_llama_dir), calib=str(calib_txt), token_sparsity=0.3, nsamples=2, seqlen=32, seed=None,
                dtype=None, out=str(tmp_path / "p"), overwrite=False, quiet=True, json=True, pattern=None, sparsity=None,
                recipe=None, allocation=None, experts=None, then=None, eval_data=None, eval_tasks=None, stream=False,
                recover=False, resume=False, set=[], include=[], exclude=[])  # fmt: skip
    res = prune_ftp(argparse.Namespace(**base))
    assert res["kind"] == "folder"
    m, _ = pk.load(tmp_path / "p", dtype="float32")
    assert pk.tokens.unpatch(m)["token_blocks_dense"] == 0  # attached, nothing run yet
    with pytest.raises(ConfigError, match="drop --pattern") as e:
        prune_ftp(argparse.Namespace(**{**base, "pattern": "2:4", "out": str(tmp_path / "q")}))
    assert "\n" not in str(e.value)


def test_cli_prune_method_ftp_goes_through_prune(capsys, tiny_llama_dir, calib_txt, tmp_path):
    d = tmp_path / "viaprune"
    rc, res, err = _cli(capsys, ["prune", tiny_llama_dir, "--method", "ftp", "--token-sparsity", "0.3", "--calib", calib_txt,
                                 "--nsamples", "2", "--seqlen", "32", "-q", "--out", d, "--json"])  # fmt: skip
    assert rc == 0 and res["kind"] == "folder", err
    m, _ = pk.load(d, dtype="float32")
    with torch.no_grad():
        m(_ids())
    st = pk.tokens.unpatch(m)
    assert st["token_blocks"] < st["token_blocks_dense"]  # the routers skipped token-blocks
    for argv, msg in ((["--method", "ftp", "--pattern", "2:4"], "drop --pattern"),
                      (["--method", "wanda", "--token-sparsity", "0.3"], "--token-sparsity belongs to --method ftp"),
                      (["--method", "ftp", "--token-sparsity", "1.5"], "token-sparsity")):  # fmt: skip
        rc, _, err = _cli(capsys, ["prune", tiny_llama_dir, *argv, "--calib", calib_txt, "-q", "--out", tmp_path / "bad"])
        assert rc == 2 and len(err.strip().splitlines()) == 1 and msg in err, err
        assert not (tmp_path / "bad").exists()
