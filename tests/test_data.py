import gzip
import json

import pytest
import torch

from prunekit.data import calibration_windows, eval_token_ids, load_source
from prunekit.errors import DataError

from conftest import SHARED, needs_shared


def test_builtin_halves_are_disjoint():
    a, b = load_source("builtin", "calib"), load_source("builtin", "eval")
    assert set(a.documents).isdisjoint(b.documents)
    assert abs(a.num_chars - b.num_chars) / (a.num_chars + b.num_chars) < 0.1
    assert a.num_chars + b.num_chars > 400_000


def test_text_jsonl_gz_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("alpha text")
    recs = [{"text": "doc one"}, {"text": "doc two", "url": "u"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "gz doc"}) + "\n")
    (tmp_path / "c4-valid").mkdir()
    (tmp_path / "c4-valid" / "held.txt").write_text("held out")
    assert load_source(str(tmp_path / "a.txt")).documents == ["alpha text"]
    assert load_source(str(tmp_path / "b.jsonl")).documents == ["doc one", "doc two"]
    assert load_source(str(tmp_path / "c.jsonl.gz")).documents == ["gz doc"]
    folder = load_source(str(tmp_path))
    assert sorted(folder.documents) == ["alpha text", "doc one", "doc two", "gz doc"]  # valid/ skipped


def test_wikitext_protocol_join(tmp_path):
    p = tmp_path / "wiki.raw"
    p.write_text(" = T = \n\n line one \n")
    src = load_source(f"wikitext2:{p}", "eval")
    assert src.joined == " = T = \n\n\n\n\n\n line one \n"  # rows keep their '\n', joined by '\n\n'


@pytest.mark.parametrize("content", ["", "   \n\n  "])
def test_empty_source_is_refused(tmp_path, content):
    p = tmp_path / "empty.txt"
    p.write_text(content)
    with pytest.raises(DataError, match="empty"):
        load_source(str(p))


def test_bad_jsonl_and_missing(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"txt": 1}\n')
    with pytest.raises(DataError, match="text"):
        load_source(str(p))
    with pytest.raises(DataError, match="not found"):
        load_source(str(tmp_path / "nope.txt"))


def test_calibration_windows_seeded(tokenizer, calib_txt):
    a = calibration_windows(str(calib_txt), tokenizer, 6, 32, seed=1)
    b = calibration_windows(str(calib_txt), tokenizer, 6, 32, seed=1)
    c = calibration_windows(str(calib_txt), tokenizer, 6, 32, seed=2)
    assert a.shape == (6, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every window is a contiguous slice of the tokenized text
    ids = tokenizer(calib_txt.read_text(), add_special_tokens=False)["input_ids"]
    s = " ".join(map(str, ids))
    assert all(" ".join(map(str, w.tolist())) in s for w in a)


def test_too_short_calibration_text(tmp_path, tokenizer):
    p = tmp_path / "short.txt"
    p.write_text("just a few words")
    with pytest.raises(DataError, match="only .* tokens"):
        calibration_windows(str(p), tokenizer, 4, 2048)


def test_documents_longer_than_seqlen_are_preferred(tmp_path, tokenizer):
    long_doc = "the quick brown fox jumps over the lazy dog. " * 40
    recs = [{"text": "short"}] * 50 + [{"text": long_doc}]
    p = tmp_path / "c4.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs))
    w = calibration_windows(str(p), tokenizer, 5, 64, seed=0)
    long_ids = " ".join(map(str, tokenizer(long_doc, add_special_tokens=False)["input_ids"]))
    assert all(" ".join(map(str, x.tolist())) in long_ids for x in w)


@needs_shared
def test_shared_wikitext_and_c4(tokenizer):
    src = load_source(f"wikitext2:{SHARED / 'wikitext-2-raw' / 'wiki.test.raw'}", "eval")
    rows = (SHARED / "wikitext-2-raw" / "wiki.test.raw").read_text().splitlines(keepends=True)
    assert len(rows) == 4358 and src.joined == "\n\n".join(rows)
    c4 = load_source(str(SHARED / "c4-sample"))
    assert len(c4.documents) == 1128  # 1000 jsonl + 128 picovoice c4-train; c4-valid skipped
    ids = eval_token_ids(src, tokenizer)
    assert ids.shape[0] == 1 and ids.shape[1] > 100_000
