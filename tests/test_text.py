"""prunekit.text: spans, the rules splitter, file checks and the segment CLI (no encoder needed)."""

import json
import random

import pytest

import prunekit as pk
from prunekit.cli.main import main
from prunekit.errors import ConfigError
from prunekit.text import Span, gaps, reconstruct, sentences
from prunekit.text.evaluate import PRF, join_units, pk as p_k, ud_documents, windowdiff
from prunekit.text.rules import iter_spans


def _texts(text, method="rules"):
    return [s.of(text) for s in sentences(text, method)]


GOLDEN = [
    # abbreviations and initials
    ("Dr. Smith went to Washington. He arrived on Monday.", ["Dr. Smith went to Washington.", "He arrived on Monday."]),
    ("See Fig. 3 and No. 5 for details. Done.", ["See Fig. 3 and No. 5 for details.", "Done."]),
    ("We met J. R. R. Tolkien there. It rained.", ["We met J. R. R. Tolkien there.", "It rained."]),
    ("I live in the U.S. The weather is nice.", ["I live in the U.S.", "The weather is nice."]),
    ("She works for the U.S. Army now. Good.", ["She works for the U.S. Army now.", "Good."]),
    ("Fruit, e.g. apples, is sold. Buy some.", ["Fruit, e.g. apples, is sold.", "Buy some."]),
    ("We open at 9 a.m. on Mondays. Come early.", ["We open at 9 a.m. on Mondays.", "Come early."]),
    # decimals, money, versions
    ("The price rose 3.5% to $12.50. Analysts were surprised.", ["The price rose 3.5% to $12.50.", "Analysts were surprised."]),
    ("Use version 2.0.1 now. It is 1.5 times faster.", ["Use version 2.0.1 now.", "It is 1.5 times faster."]),
    # quotes and brackets
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ('"Stop!" he said. Nobody moved.', ['"Stop!" he said.', "Nobody moved."]),
    ("It works (mostly.) Try it.", ["It works (mostly.)", "Try it."]),
    ("\u201cReally?\u201d she asked. Yes.", ["\u201cReally?\u201d she asked.", "Yes."]),
    # ellipses
    ("Wait... what happened? I don't know\u2026 Maybe nothing.", ["Wait... what happened?", "I don't know\u2026", "Maybe nothing."]),
    ("And then... Silence.", ["And then...", "Silence."]),
    # lists and line structure
    ("Items:\n1. Apples\n2. Pears\n- Plums\n", ["Items:", "1. Apples", "2. Pears", "- Plums"]),
    ("1. ELECTRONIC COMMUNICATIONS\n\nWhen you use it, you agree.", ["1. ELECTRONIC COMMUNICATIONS", "When you use it, you agree."]),
    ("This paragraph was hard-wrapped by an old mail client so it\nwraps onto the next line. And ends.",
     ["This paragraph was hard-wrapped by an old mail client so it\nwraps onto the next line.", "And ends."]),
    ("Let me know\nyou can come", ["Let me know", "you can come"]),  # short lines are units
    ("I have a box. other boxes are red.", ["I have a box.", "other boxes are red."]),
    ("Prices rose, etc. and then fell.", ["Prices rose, etc. and then fell."]),
    ("Is it? Yes! Really?! OK.", ["Is it?", "Yes!", "Really?!", "OK."]),
    ("does it have wifi? i want to use it.", ["does it have wifi?", "i want to use it."]),
]


@pytest.mark.parametrize("text,want", GOLDEN, ids=[g[0][:30] for g in GOLDEN])
def test_rules_golden(text, want):
    assert _texts(text) == want


def test_spans_are_offsets_into_unchanged_text():
    text = "  Hello there.  General Kenobi!\n\n"
    spans = sentences(text, "rules")
    assert spans == [Span(2, 14, 1.0), Span(16, 31, 1.0)]
    assert reconstruct(text, spans) == text
    assert all(text[a:b].strip() == "" for a, b in gaps(text, spans))


_ALPHABET = list("abcXYZ .,!?;:\"'()\n\t\u00a0\u2026\u201c\u201d") + ["\u00e9", "\u4e2d", "\U0001F600", "\r\n", "Dr.", "e.g.", "3.5", "U.S."]


@pytest.mark.parametrize("seed", range(40))
def test_property_spans_plus_gaps_rebuild_random_unicode(seed):
    rng = random.Random(seed)
    pieces = [rng.choice(_ALPHABET) if rng.random() < 0.85 else chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(rng.randrange(0, 400))]
    text = "".join(pieces)
    text = "".join(ch for ch in text if not (0xD800 <= ord(ch) <= 0xDFFF))
    spans = sentences(text, "rules")
    assert reconstruct(text, spans) == text
    pos = 0
    for s in spans:
        assert pos <= s.start < s.end <= len(text)
        assert text[pos : s.start].strip() == ""  # gaps are whitespace only
        assert not text[s.start].isspace() and not text[s.end - 1].isspace()
        pos = s.end
    assert text[pos:].strip() == ""
    # streaming in tiny blocks gives the same spans as one call
    blocks = [text[i : i + 7] for i in range(0, len(text), 7)]
    assert list(iter_spans(blocks)) == spans


def test_streaming_long_input_matches_whole():
    rng = random.Random(0)
    words = ["alpha", "beta", "Dr.", "3.5", "gamma.", "Delta!", "e.g.", "eps?", "\n", "\n\n", "zeta..."]
    text = " ".join(rng.choice(words) for _ in range(60000))
    whole = sentences(text, "rules")
    streamed = list(iter_spans(text[i : i + 4096] for i in range(0, len(text), 4096)))
    assert streamed == whole and len(whole) > 1000


def test_empty_and_blank_text_give_no_spans():
    assert sentences("", "rules") == [] and sentences(" \n\t ", "rules") == []


def test_unknown_method_is_one_clear_error():
    with pytest.raises(ConfigError, match="did you mean 'rules'"):
        sentences("Hi.", method="rulez")
    with pytest.raises(ConfigError, match="unknown topic method"):
        pk.text.topics("a\nb", method="nope")


def test_sentences_refuses_bytes():
    with pytest.raises(ConfigError, match="takes a str"):
        sentences(b"Hi. There.", "rules")


def test_join_units_corruptions_keep_gold_ends():
    units = [("Hello, World!", " "), ("Second one.", "\n"), ("...", " "), ("Third", "")]
    text, ends = join_units(units)
    assert text == "Hello, World! Second one.\n... Third" and ends == [13, 25, 29]
    text, ends = join_units(units, lower=True, no_punct=True, no_newlines=True)
    assert text == "hello world second one third" and ends == [11, 22]
    assert [text[e - 3 : e] for e in ends] == ["rld", "one"]


def test_ud_documents_runs_sentences_together(tmp_path):
    f = tmp_path / "x.conllu"
    f.write_text("# newdoc id = d1\n# newpar id = p1\n# text = A b.\n1\tA\n\n# text = C d.\n1\tC\n\n"
                 "# newpar id = p2\n# text = E.\n1\tE\n\n# newdoc id = d2\n# text = F g?\n1\tF\n\n")
    docs = ud_documents(f)
    assert docs == [("A b. C d.\nE.", [4, 9]), ("F g?", [])]
    assert ud_documents(f, "all")[0] == ("a b c d e", [3, 7])


def test_prf_and_segmentation_metrics():
    m = PRF()
    m.add({1, 2, 3}, {2, 3, 4})
    assert (m.tp, m.fp, m.fn) == (2, 1, 1) and abs(m.f1 - 2 / 3) < 1e-12
    ref = {4, 9}
    assert p_k(ref, ref, 15, 3) == 0.0 and windowdiff(ref, ref, 15, 3) == 0.0
    assert p_k(ref, set(), 15, 3) > 0 and windowdiff(ref, {3, 9}, 15, 3) > 0
    # a near miss costs less than no boundary at all under WindowDiff with a large window
    assert windowdiff(ref, {5, 9}, 15, 3) < windowdiff(ref, set(), 15, 3)


# --- CLI -------------------------------------------------------------------------------------------
def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_segment_rules_json_and_out(tmp_path, capsys):
    f = tmp_path / "a.txt"
    text = "Dr. Smith came. He left at 3.30 p.m. today.\r\n\r\nNew para\u2026 \u00e9t\u00e9!"
    f.write_bytes(text.encode("utf-8"))
    rc, out, err = _run(capsys, "segment", str(f), "--method", "rules", "--json")
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["method"] == "rules" and res["chars"] == len(text) and res["spans_count"] == 3
    assert [text[s["start"] : s["end"]] for s in res["spans"]] == ["Dr. Smith came.", "He left at 3.30 p.m. today.", "New para\u2026 \u00e9t\u00e9!"]
    o = tmp_path / "spans.jsonl"
    rc, out, err = _run(capsys, "segment", str(f), "--method", "rules", "--out", str(o), "--quiet")
    assert rc == 0 and [json.loads(x)["end"] for x in o.read_text().splitlines()] == [15, 43, len(text)]
    rc, out, err = _run(capsys, "segment", str(f), "--method", "rules")
    assert rc == 0 and out.splitlines()[0] == "0\t15\t1.000\tDr. Smith came."


def _bad_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\t\n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 ol\u00e9. Fin.".encode("latin-1"))
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 8)
    late = tmp_path / "late.txt"  # invalid byte after several blocks of good text
    late.write_bytes(b"Good text. " * 20000 + b"\xff\xfe bad")
    return {
        "empty": (empty, "is empty"),
        "whitespace": (blank, "only whitespace"),
        "non-utf8": (latin1, "not valid UTF-8"),
        "binary": (binary, "binary file"),
        "late non-utf8": (late, "not valid UTF-8 (byte 220000)"),
        "missing": (tmp_path / "nope.txt", "does not exist"),
        "folder": (tmp_path, "not a regular file"),
    }


@pytest.mark.parametrize("case", ["empty", "whitespace", "non-utf8", "binary", "late non-utf8", "missing", "folder"])
def test_cli_bad_files_one_line_exit_2_nothing_written(tmp_path, capsys, case):
    path, msg = _bad_files(tmp_path)[case]
    o = tmp_path / "out.jsonl"
    rc, out, err = _run(capsys, "segment", str(path), "--method", "rules", "--out", str(o))
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunekit: error: ") and msg in lines[0]
    assert not o.exists() and not list(tmp_path.glob(".out.jsonl.*"))


@pytest.mark.parametrize("argv,msg", [
    (["--method", "nope"], "unknown sentence method 'nope'"),
    (["--unit", "topic", "--method", "rules"], "unknown topic method 'rules'"),
    (["--unit", "paragraph"], "--unit 'paragraph'"),
    (["--method", "rules", "--threshold", "0.5"], "threshold applies to method 'sat' only"),
    (["--method", "rules", "--k", "3"], "--k applies to --unit topic only"),
    (["--threshold", "2"], "out of range"),
    (["--unit", "topic", "--k", "2", "--threshold", "0.5"], "not both"),
    (["--k", "0", "--unit", "topic"], "out of range"),
])
def test_cli_bad_flags(tmp_path, capsys, argv, msg):
    f = tmp_path / "a.txt"
    f.write_text("One. Two.")
    rc, out, err = _run(capsys, "segment", str(f), *argv)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and msg in err


def test_cli_50mb_single_line_streams(tmp_path, capsys):
    """A 50 MB line without a single newline: rules streams it in 64 KB blocks."""
    import tracemalloc

    f = tmp_path / "big.txt"
    unit = ("Word " + "word " * 2000 + "end. ").encode()
    with open(f, "wb") as fh:
        for _ in range(50 * (1 << 20) // (len(unit) * 1000)):
            fh.write(unit * 1000)
    o = tmp_path / "spans.jsonl"
    tracemalloc.start()
    rc, out, err = _run(capsys, "segment", str(f), "--method", "rules", "--out", str(o), "--json")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["spans_count"] == res["chars"] // len(unit) and "spans" not in res
    assert peak < 32 * (1 << 20)  # far below the 50 MB file: nothing holds the whole text


def test_cli_topic_refuses_text_over_its_limit(tmp_path, capsys, monkeypatch):
    from prunekit.text import cli as text_cli

    monkeypatch.setattr(text_cli, "MAX_TOPIC_CHARS", 100)
    f = tmp_path / "a.txt"
    f.write_text("A line.\n" * 20)
    rc, out, err = _run(capsys, "segment", str(f), "--unit", "topic", "--method", "tiling")
    assert rc == 2 and out == "" and "--unit sentence, which streams" in err and len(err.strip().splitlines()) == 1


def test_iter_sentences_with_progress_bar_gives_the_same_spans(capsys):
    text = "One here. Two there! Three? " * 500
    blocks = [text[i : i + 999] for i in range(0, len(text), 999)]
    spans = list(pk.text.iter_sentences(blocks, "rules", progress=True, total=len(text)))
    assert spans == sentences(text, "rules") and len(spans) == 1500


def test_iter_blocks_keeps_crlf_and_never_splits_a_character(tmp_path):
    f = tmp_path / "a.txt"
    text = "\u00e9\u4e2d\U0001F600 line\r\n" * 3000
    f.write_bytes(text.encode("utf-8"))
    blocks = list(pk.text.iter_blocks(f, block_bytes=7))
    assert "".join(blocks) == text and len(blocks) > 1000


def test_cli_out_never_replaces_the_input_or_an_existing_file(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("One. Two.")
    rc, out, err = _run(capsys, "segment", str(f), "--method", "rules", "--out", str(f), "--overwrite")
    assert rc == 2 and "is the input" in err and f.read_text() == "One. Two."
    o = tmp_path / "spans.jsonl"
    o.write_text("keep")
    rc, out, err = _run(capsys, "segment", str(f), "--method", "rules", "--out", str(o))
    assert rc == 2 and "--overwrite" in err and o.read_text() == "keep"
    rc, out, err = _run(capsys, "segment", str(f), "--method", "rules", "--out", str(o), "--overwrite", "-q")
    assert rc == 0 and [json.loads(x)["end"] for x in o.read_text().splitlines()] == [4, 9]
