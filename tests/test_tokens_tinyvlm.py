"""The constructed VLM (issue 41): a real LlavaForConditionalGeneration around a frozen LM, a
trained CLIP tower + projector over CNN feature maps; every visual-token method runs on it."""

from __future__ import annotations

import io
import tarfile

import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError, DataError
from prunekit.tokens import tinyvlm as V

from conftest import SHARED, make_llama, needs_shared

NAMES = ("cat", "dog", "ship")
GRID, CH = 3, 16


@pytest.fixture(scope="module")
def word_tok():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<image>", "What", "is", "in", "this", "picture", "?", "This", "a", "of", *NAMES]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<unk>")


@pytest.fixture(scope="module")
def lm(word_tok):
    return make_llama(vocab=len(word_tok.get_vocab()), layers=3, seed=1)


def _vlm(lm, tok, seed=0):
    return V.build_vlm(lm, tok, V.TowerConfig(channels=CH, grid=GRID, hidden=32, layers=1, heads=2), seed=seed)


def _stub(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature maps whose class is a channel pattern (plus noise): a task the tower can learn."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(NAMES), (n,), generator=g)
    f = 0.3 * torch.randn(n, CH, GRID, GRID, generator=g)
    for c in range(len(NAMES)):
        f[y == c, 4 * c : 4 * c + 4] += 2.0
    return f, y


def test_built_model_is_llava_with_the_lm_frozen_and_unchanged(lm, word_tok):
    from transformers import LlavaForConditionalGeneration

    vlm = _vlm(lm, word_tok)
    assert isinstance(vlm, LlavaForConditionalGeneration)
    assert vlm.config.image_token_id == word_tok.convert_tokens_to_ids("<image>")
    tower = {n for n, p in vlm.named_parameters() if p.requires_grad}
    assert tower and all("vision_tower" in n or "multi_modal_projector" in n for n in tower)
    ids = torch.tensor([[2, 3, 4, 5, 6, 7]])
    with torch.no_grad():  # text only: the LLaVA forward is the original LM's forward
        assert torch.allclose(vlm(input_ids=ids).logits, lm(input_ids=ids).logits, atol=1e-5)
    ids, span = V.prompt(word_tok, GRID * GRID, vlm.config.image_token_id)
    assert (ids[0, span] == vlm.config.image_token_id).all() and int((ids == vlm.config.image_token_id).sum()) == GRID * GRID
    assert word_tok.decode(ids[0, span.stop :]).split()[-3:] == ["picture", "of", "a"]


def test_fit_trains_only_the_tower_and_learns_a_separable_task(lm, word_tok):
    vlm = _vlm(lm, word_tok)
    frozen = {n: p.clone() for n, p in vlm.named_parameters() if not p.requires_grad}
    f, y = _stub(96, seed=0)
    before = V.accuracy(vlm, word_tok, *_stub(60, seed=1), names=NAMES)["accuracy"]
    r = V.fit(vlm, word_tok, f, y, epochs=12, batch=16, lr=3e-3, names=NAMES)
    assert r["loss_last20"] < 0.6 * r["loss_first"], r
    after = V.accuracy(vlm, word_tok, *_stub(60, seed=1), names=NAMES)
    assert after["accuracy"] >= max(0.95, before) and after["n"] == 60, (before, after["accuracy"])
    assert all(torch.equal(p, frozen[n]) for n, p in vlm.named_parameters() if n in frozen)


@pytest.mark.parametrize("method", ["fastv", "recoverable", "vflowopt", "coarse-to-fine", "random"])
def test_every_visual_method_runs_on_it_keep1_identical_and_counted(lm, word_tok, method):
    vlm = _vlm(lm, word_tok, seed=2)
    f, y = _stub(4, seed=3)
    ref = V.accuracy(vlm, word_tok, f, y, names=NAMES)
    ids, _ = V.prompt(word_tok, GRID * GRID, vlm.config.image_token_id)
    with torch.no_grad():
        base = V.logits_at_answer(vlm, ids, f)
    opts = {"region": 2} if method == "coarse-to-fine" else {}
    pk.tokens.patch(vlm, method, keep=1.0, **opts)
    with torch.no_grad():
        same = V.logits_at_answer(vlm, ids, f)
    pk.tokens.unpatch(vlm)
    assert torch.equal(same, base)
    pk.tokens.patch(vlm, method, keep=1 / 3, **opts)
    got = V.accuracy(vlm, word_tok, f, y, names=NAMES)
    st = pk.tokens.unpatch(vlm)
    assert st["removed"][st["layer"]] == 4 * (GRID * GRID - 3)  # 3 of 9 visual tokens kept, each of 4 images
    assert st["token_blocks"] < st["token_blocks_dense"] and got["n"] == ref["n"] == 4


def _tar(path, per_class=4):
    from PIL import Image

    with tarfile.open(path, "w") as tf:
        for c in V.CIFAR10:
            for i in range(per_class):
                buf = io.BytesIO()
                Image.new("RGB", (32, 32), (i * 40, 10, 200)).save(buf, format="JPEG")
                info = tarfile.TarInfo(f"test/{c}/{i:04d}.jpg")
                info.size = len(buf.getvalue())
                tf.addfile(info, io.BytesIO(buf.getvalue()))


def test_cifar_halves_are_disjoint_balanced_and_bad_input_is_one_line(tmp_path):
    p = tmp_path / "c.tar"
    _tar(p)
    fit, ev = V.read_cifar10_tar(p, "fit"), V.read_cifar10_tar(p, "eval", per_class=1)
    assert len(fit) == 20 and len(ev) == 10
    assert [y for _, y in ev] == list(range(10))
    assert not {b for b, _ in fit} & {b for b, _ in ev}
    with pytest.raises(ConfigError, match="split='test'"):
        V.read_cifar10_tar(p, "test")
    with pytest.raises(DataError, match="no such CIFAR-10 tar"):
        V.read_cifar10_tar(tmp_path / "missing.tar", "fit")


@needs_shared
def test_the_shared_cifar_tar_splits_into_5000_and_5000():
    tar = SHARED / "cifar10-test" / "cifar10-test-jpeg.tar"
    fit, ev = V.read_cifar10_tar(tar, "fit"), V.read_cifar10_tar(tar, "eval")
    assert len(fit) == len(ev) == 5000
    assert sorted({y for _, y in fit}) == list(range(10))


def test_verbaliser_and_fit_refuse_bad_input_in_one_line(lm, word_tok):
    with pytest.raises(DataError, match="class name 'airplane' is the unknown token"):
        V.label_ids(word_tok, ["airplane"])  # <unk> would be one token: refuse an unknown name too
    vlm = _vlm(lm, word_tok)
    f, y = _stub(8, seed=0)
    with pytest.raises(DataError, match="8 feature maps for 7 labels"):
        V.fit(vlm, word_tok, f, y[:7], names=NAMES)
    with pytest.raises(ConfigError, match="loss='mse'"):
        V.fit(vlm, word_tok, f, y, loss="mse", names=NAMES)
