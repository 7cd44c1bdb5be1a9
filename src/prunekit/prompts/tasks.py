"""Few-shot classification tasks as verbalised next-token prediction (RLPrompt / ClaPS protocol).

An example ``x`` with prompt ``z`` is the token sequence ``z ⊕ "Input: x\\n<cue>"``; its label is
the argmax of the LM's next-token log-probability over the label words (one token each, with a
leading space). Data: the RLPrompt 16-shot splits under ``fewshot-classification/<task>/``
(``16-<seed>/{train,dev}.tsv``, one ``test.tsv``), read in place and never copied.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError

DATA_ENV = "PRUNEKIT_FEWSHOT_DATA"
DEFAULT_ROOT = Path("/work/shared/data/fewshot-classification")
SEEDS = (13, 21, 42, 87, 100)


@dataclass(frozen=True)
class TaskSpec:
    folder: str
    cue: str  # the text after the input, before the label word
    labels: tuple[str, ...]  # label words, index = label id
    manual: str  # a hand-written instruction (the "manual prompt" baseline)


TASKS: dict[str, TaskSpec] = {
    "sst-2": TaskSpec("sst-2", "Sentiment:", ("negative", "positive"),
                      "Classify the sentiment of the movie review as negative or positive.\n\n"),
    "agnews": TaskSpec("agnews", "Topic:", ("World", "Sports", "Business", "Tech"),
                       "Classify the news article by topic: World, Sports, Business or Tech.\n\n"),
    "subj": TaskSpec("subj", "Type:", ("subjective", "objective"),
                     "Is the sentence a subjective opinion or an objective fact? Answer subjective or objective.\n\n"),
    "trec": TaskSpec("trec", "Answer type:", ("Description", "Entity", "Expression", "Human", "Location", "Number"),
                     "Classify what the question asks for: Description, Entity, Expression, Human, Location or Number.\n\n"),
}  # fmt: skip
ALIASES = {"sst2": "sst-2", "ag_news": "agnews", "ag-news": "agnews"}


@dataclass
class Task:
    name: str
    cue: str
    labels: list[str]
    train: list[tuple[str, int]]
    dev: list[tuple[str, int]]
    test: list[tuple[str, int]] = field(default_factory=list)
    manual: str = ""

    def query(self, x: str) -> str:
        return f"Input: {x}\n{self.cue}"

    def demo(self, x: str, y: int) -> str:
        return f"{self.query(x)} {self.labels[y]}\n\n"

    def check(self) -> None:
        if not self.labels:
            raise DataError(f"task {self.name}: no label words; give one word per class")
        for split in ("train", "dev"):
            if not getattr(self, split):
                raise DataError(f"task {self.name}: the {split} split is empty; give labelled examples")
        for split in ("train", "dev", "test"):
            bad = [y for _, y in getattr(self, split) if not 0 <= y < len(self.labels)]
            if bad:
                raise DataError(f"task {self.name}: {split} has label {bad[0]} but only {len(self.labels)} "
                                f"label words {self.labels}; add the missing label words")  # fmt: skip


def data_root() -> Path:
    return Path(os.environ.get(DATA_ENV) or DEFAULT_ROOT)


def _read(path: Path) -> list[tuple[str, int]]:
    if not path.is_file():
        raise DataError(f"{path} not found; set {DATA_ENV} to the fewshot-classification folder")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    out = []
    for r in rows[1:]:
        if len(r) < 2 or not r[-1].strip().lstrip("-").isdigit():
            raise DataError(f"{path}: row {r[:1]} has no integer label in its last column")
        out.append(("\t".join(r[:-1]).strip(), int(r[-1])))
    return out


def load_task(name: str, seed: int = 13, root: str | Path | None = None, test_limit: int | None = None) -> Task:
    """The 16-shot ``train``/``dev`` of ``seed`` and the ``test`` set (first ``test_limit`` rows of
    a fixed shuffle when given) of task ``name`` (sst-2, agnews, subj, trec)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    if seed not in SEEDS:
        raise ConfigError(f"task seed {seed} has no split; choose one of {', '.join(map(str, SEEDS))}")
    spec = TASKS[key]
    base = Path(root) if root else data_root()
    d = base / spec.folder
    test = _read(d / "test.tsv")
    if test_limit is not None and test_limit < len(test):
        import random

        idx = sorted(random.Random(0).sample(range(len(test)), test_limit))
        test = [test[i] for i in idx]
    t = Task(key, spec.cue, list(spec.labels), _read(d / f"16-{seed}" / "train.tsv"),
             _read(d / f"16-{seed}" / "dev.tsv"), test, spec.manual)  # fmt: skip
    t.check()
    return t
