"""Zero-shot and few-shot task accuracy from local files, scored as lm-evaluation-harness does.

Tasks (a spec is ``name`` or ``name:PATH``; the default files live in the repository's
``../shared/data``, or under ``$PRUNEKIT_DATA_DIR``):

* ``lambada`` -- LAMBADA, OpenAI's detokenized test file (Paperno et al., ACL 2016; Radford et al.,
  2019), JSON Lines with a ``text`` field. Context = the text up to its last space-separated word,
  target = ``" " + last word``. ``acc``: every target token is the argmax given what precedes it
  (greedy decoding reproduces the word); ``perplexity`` = exp(-mean over examples of the target's
  summed log-likelihood), lm-eval's ``perplexity`` aggregation for ``lambada_openai``.
* ``piqa`` -- PIQA validation (Bisk et al., AAAI 2020): ``goal``/``sol1``/``sol2`` per line and the
  labels either in a ``label`` field or in the sibling ``<stem>-labels.lst`` (one 0/1 a line).
  Context ``"Question: {goal}\\nAnswer:"``, choices ``" " + sol``. ``acc``: argmax of the summed
  log-likelihood; ``acc_norm``: argmax of the log-likelihood divided by the choice's length in
  characters (``len(sol)``, without the leading space -- lm-eval's definition; its byte-length
  variant is a separate ``acc_bytes`` metric, not reported here).
* ``gsm8k`` -- GSM8K test (Cobbe et al., 2021), ``question``/``answer`` (``#### N`` at the end).
  ``num_fewshot`` (default 5) examples drawn from the *train* file (``train.jsonl`` next to the test
  file, or ``fewshot_path``) with ``random.Random(fewshot_seed=1234)``: one ``sample(train, k)``
  per test question in order, as lm-eval's default sampler does. Prompt: the shots as
  ``"Question: q\\nAnswer: a\\n\\n"`` then ``"Question: q\\nAnswer:"``; greedy decoding until a stop
  string (``"Question:"``, ``"</s>"``, ``"<|im_end|>"``, lm-eval ``gsm8k`` v3) or the end-of-text
  token or ``max_gen_toks`` (256) new tokens. Two scores, as lm-eval reports them:
  ``exact_match_strict`` (first match of ``#### (-?[0-9.,]+)``) and ``exact_match_flexible`` (last
  number in the output); both sides are normalized by lm-eval's ``regexes_to_ignore`` (``,``,
  ``$``, everything up to ``#### ``, a final ``.``) and lower-cased before comparison.

Tokenization follows lm-eval's ``HFLM``: context and ``context + continuation`` are encoded with the
tokenizer's default special tokens, the continuation is the tail of the whole encoding (trailing
spaces of the context move to the continuation first), and inputs longer than the model's window
are cut from the left. Standard errors: the sample standard error of the mean (``n - 1``
denominator) for accuracies, as lm-eval's ``mean_stderr``; for perplexity the delta method,
``ppl * stderr(per-example log-likelihood)`` (lm-eval bootstraps it instead).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError

# --------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class TaskInfo:
    """A task's default data file (relative to the data folder) and what the file must hold."""

    name: str
    default: str
    expected: str
    description: str


TASKS: dict[str, TaskInfo] = {
    "lambada": TaskInfo(
        "lambada", "lambada/lambada_test.jsonl",
        "JSON Lines with a string 'text' field (OpenAI LAMBADA test)",
        "LAMBADA (OpenAI) last-word accuracy and perplexity",
    ),
    "piqa": TaskInfo(
        "piqa", "piqa/valid.jsonl",
        "JSON Lines with 'goal', 'sol1', 'sol2' and a 'label' field or a sibling <stem>-labels.lst",
        "PIQA two-choice accuracy (acc, acc_norm)",
    ),
    "gsm8k": TaskInfo(
        "gsm8k", "gsm8k/test.jsonl",
        "JSON Lines with string 'question' and 'answer' ('#### N') fields, train.jsonl beside it",
        "GSM8K few-shot exact match of the final number (strict and flexible)",
    ),
}  # fmt: skip

GSM8K_UNTIL = ("Question:", "</s>", "<|im_end|>")
DEFAULT_SETTINGS: dict[str, Any] = {
    "batch_tokens": 2048,  # log-likelihood batches hold about this many padded tokens
    "num_fewshot": 5,  # gsm8k
    "fewshot_seed": 1234,  # gsm8k (lm-eval's default fewshot seed)
    "fewshot_path": None,  # gsm8k: the train file the shots come from
    "max_gen_toks": 256,  # gsm8k
    "until": GSM8K_UNTIL,  # gsm8k stop strings (the end-of-text token always stops too)
    "max_length": None,  # model window; None: from the config, else 2048
}


@dataclass(frozen=True)
class TaskSpec:
    """One parsed entry of a task list: the task name and an optional data path."""

    name: str
    path: str | None = None


def task_names() -> list[str]:
    """The registered task names."""
    return list(TASKS)


def parse_task_specs(specs: str | Sequence[str]) -> list[TaskSpec]:
    """Parse ``"lambada,piqa:PATH"`` (or a list of such entries) into :class:`TaskSpec` objects.

    Raises:
        ConfigError: an empty list, an unknown task name or a task listed twice.
    """
    items = specs.split(",") if isinstance(specs, str) else [s for x in specs for s in str(x).split(",")]
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise ConfigError(f"no task given in {specs!r}: use e.g. 'lambada,piqa' (tasks: {', '.join(TASKS)})")
    out: list[TaskSpec] = []
    for item in items:
        name, _, path = item.partition(":")
        name = name.strip().lower()
        if name not in TASKS:
            close = difflib.get_close_matches(name, list(TASKS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown task {name!r} in {item!r}: {hint}tasks are {', '.join(TASKS)} (as NAME or NAME:PATH)"
            )
        if any(s.name == name for s in out):
            raise ConfigError(f"task {name!r} is listed twice in {specs!r}: give each task once")
        out.append(TaskSpec(name, path.strip() or None))
    return out


def data_dir() -> Path:
    """The folder holding the default task files: ``$PRUNEKIT_DATA_DIR``, else the repository's
    ``../shared/data``, else ``../shared/data`` relative to the working directory."""
    env = os.environ.get("PRUNEKIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    repo_shared = Path(__file__).resolve().parents[3].parent / "shared" / "data"
    return repo_shared if repo_shared.is_dir() else Path("..") / "shared" / "data"


def resolve_task_path(spec: TaskSpec) -> Path:
    """The data file of a task spec (a folder resolves to the default file name inside it).

    Raises:
        DataError: the file does not exist.
    """
    info = TASKS[spec.name]
    p = Path(spec.path).expanduser() if spec.path else data_dir() / info.default
    if p.is_dir():
        p = p / Path(info.default).name
    if not p.is_file():
        how = f"{spec.name}:PATH" if spec.path is None else "an existing file"
        raise DataError(f"{spec.name} data file {str(p)!r} not found: expected {info.expected}; pass {how}")
    return p


# ---------------------------------------------------------------------------------------- loading


def _read_records(path: Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """Read JSON Lines whose records carry string ``fields``; one-line DataError otherwise."""
    recs = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: expected JSON Lines") from None
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{ln} is not valid JSON ({e.msg}): expected one JSON object a line") from None
        missing = [f for f in fields if not isinstance(rec, dict) or not isinstance(rec.get(f), str)]
        if missing:
            raise DataError(f"{path}:{ln} has no string field {missing[0]!r}: expected fields {', '.join(fields)}")
        recs.append(rec)
    if not recs:
        raise DataError(f"{path} holds no records: expected JSON Lines with fields {', '.join(fields)}")
    return recs


@dataclass
class LambadaDoc:
    context: str
    target: str


@dataclass
class PiqaDoc:
    context: str
    choices: list[str]  # without the leading space (lengths for acc_norm)
    label: int


@dataclass
class Gsm8kDoc:
    question: str
    answer: str


def load_lambada(path: Path) -> list[LambadaDoc]:
    """LAMBADA records split as lm-eval's ``lambada_openai`` does (on the last ``" "``)."""
    docs = []
    for i, rec in enumerate(_read_records(path, ["text"]), 1):
        words = rec["text"].split(" ")
        if len(words) < 2 or not words[-1]:
            raise DataError(f"{path} record {i} has no last word after a space: {rec['text'][-40:]!r}")
        docs.append(LambadaDoc(" ".join(words[:-1]), " " + words[-1]))
    return docs


def _label(value: Any, where: str) -> int:
    s = str(value).strip()
    if s not in ("0", "1"):
        raise DataError(f"{where}: label {s!r} is not 0 or 1")
    return int(s)


def load_piqa(path: Path) -> list[PiqaDoc]:
    """PIQA records with labels from a ``label`` field or ``<stem>-labels.lst`` next to the file."""
    recs = _read_records(path, ["goal", "sol1", "sol2"])
    if all("label" in r for r in recs):
        labels = [_label(r["label"], f"{path} record {i}") for i, r in enumerate(recs, 1)]
    else:
        lst = path.with_name(f"{path.name.split('.')[0]}-labels.lst")
        if not lst.is_file():
            raise DataError(f"PIQA labels not found: {path} has no 'label' field and {str(lst)!r} does not exist")
        rows = [r for r in lst.read_text(encoding="utf-8").splitlines() if r.strip()]
        if len(rows) != len(recs):
            raise DataError(f"{lst} has {len(rows)} labels for {len(recs)} records in {path}: lines must align")
        labels = [_label(r, f"{lst}:{i}") for i, r in enumerate(rows, 1)]
    return [
        PiqaDoc(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], y)
        for r, y in zip(recs, labels)
    ]  # fmt: skip


def load_gsm8k(path: Path) -> list[Gsm8kDoc]:
    """GSM8K records (``question``, ``answer``)."""
    return [Gsm8kDoc(r["question"], r["answer"]) for r in _read_records(path, ["question", "answer"])]


# ------------------------------------------------------------------------------ gsm8k answer rules

_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")
INVALID = "[invalid]"


def _regex_pick(pattern: re.Pattern[str], text: str, which: int) -> str:
    """lm-eval's ``regex`` filter: ``findall``, pick match ``which``, first non-empty group."""
    found = pattern.findall(text)
    if not found:
        return INVALID
    m = found[which]
    if isinstance(m, tuple):
        m = next((g for g in m if g), INVALID)
    return m.strip()


def strict_extract(text: str) -> str:
    """The number after the first ``#### `` (lm-eval ``gsm8k`` ``strict-match``)."""
    return _regex_pick(_STRICT, text, 0)


def flexible_extract(text: str) -> str:
    """The last number-like string in the text (lm-eval ``gsm8k`` ``flexible-extract``)."""
    return _regex_pick(_FLEXIBLE, text, -1)


def normalize_answer(s: str) -> str:
    """Apply lm-eval's ``regexes_to_ignore`` for ``gsm8k`` in order, then lower-case."""
    for pat in _IGNORE:
        s = re.sub(pat, "", s)
    return s.lower()


def gsm8k_match(extracted: str, reference_answer: str) -> bool:
    """Exact match of an extracted answer against a full reference answer (``... #### N``)."""
    return normalize_answer(extracted) == normalize_answer(reference_answer)


def gsm8k_prompt(doc: Gsm8kDoc, shots: Sequence[Gsm8kDoc]) -> str:
    """Few-shot prompt in lm-eval's layout (target delimiter ``" "``, shot delimiter ``"\\n\\n"``)."""
    parts = [f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in shots]
    return "".join(parts) + f"Question: {doc.question}\nAnswer:"


# -------------------------------------------------------------------------------------- scoring


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, verbose=False)["input_ids"])


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``(context, continuation)`` as lm-eval's ``HFLM`` builds them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        cont = list(tokenizer(continuation, add_special_tokens=False, verbose=False)["input_ids"])
        return ([prefix], cont) if cont and cont[0] != prefix else (cont[:1], cont[1:])
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


def _model_max_length(model: nn.Module, override: int | None) -> int:
    if override:
        return int(override)
    cfg = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


def _selected_logits(model: nn.Module, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits ``[num_true, V]`` at the positions where the boolean ``keep [B, T]`` is true.

    Only those positions go through ``lm_head`` when the model accepts a boolean
    ``logits_to_keep`` (transformers 5); otherwise all logits are computed and indexed.
    """
    n = int(keep.sum())
    try:
        out = model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
        if out.dim() == 2 and out.shape[0] == n:
            return out.float()
        if out.dim() == 3 and out.shape[:2] == keep.shape:
            return out[keep].float()
    except (TypeError, IndexError, RuntimeError, ValueError):
        pass
    return model(input_ids=ids, use_cache=False).logits[keep].float()


@torch.no_grad()
def loglikelihoods(
    model: nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    *,
    batch_tokens: int = 2048,
    max_length: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """``(sum of log p(continuation | context), continuation is the greedy decode)`` per request.

    Requests (context ids, continuation ids) are sorted by length, right-padded into batches of
    about ``batch_tokens`` tokens (a causal model never looks at the padding on the right), and
    cut from the left to the model's window as lm-eval does (``(ctx + cont)[-(L+1):][:-1]``).
    """
    window = _model_max_length(model, max_length)
    device = next(model.parameters()).device
    rows = []
    for ctx, cont in requests:
        if not ctx or not cont:
            raise DataError("a task example tokenized to an empty context or continuation: check the data file")
        if len(cont) > window:
            raise DataError(f"a continuation of {len(cont)} tokens does not fit the model window of {window}: "
                            f"set max_length or shorten the example")  # fmt: skip
        rows.append(((ctx + cont)[-(window + 1) :][:-1], cont))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    pos = 0
    while pos < len(order):
        width = len(rows[order[pos]][0])
        size = max(1, batch_tokens // max(width, 1))
        batch = order[pos : pos + size]
        pos += len(batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        keep = torch.zeros(len(batch), width, dtype=torch.bool)
        for r, i in enumerate(batch):
            inp, cont = rows[i]
            ids[r, : len(inp)] = torch.tensor(inp)
            keep[r, len(inp) - len(cont) : len(inp)] = True
        logp = F.log_softmax(_selected_logits(model, ids.to(device), keep.to(device)), dim=-1).cpu()
        start = 0
        for i in batch:
            cont = torch.tensor(rows[i][1])
            lp = logp[start : start + len(cont)]
            start += len(cont)
            ll = lp.gather(1, cont[:, None]).sum().item()
            results[i] = (ll, bool((lp.argmax(-1) == cont).all()))
        if progress:
            progress(len(batch))
    return results


def _cache_kwarg(model: nn.Module) -> str:
    """The forward argument that takes the KV cache: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    tokenizer,
    prompt: str,
    *,
    until: Sequence[str] = GSM8K_UNTIL,
    max_gen_toks: int = 256,
    max_length: int | None = None,
) -> str:
    """Greedy continuation of ``prompt`` (KV cache, batch 1), cut at the first stop string.

    Stops at the end-of-text token, when the decoded text contains a stop string, or after
    ``max_gen_toks`` tokens; the prompt is cut from the left to ``window - max_gen_toks`` tokens.
    """
    window = _model_max_length(model, max_length)
    device = next(model.parameters()).device
    ctx = _encode(tokenizer, prompt)[-max(1, window - max_gen_toks) :]
    eos = tokenizer.eos_token_id
    ids = torch.tensor([ctx], device=device)
    cache_kw = _cache_kwarg(model)
    past, gen = None, []
    for _ in range(max_gen_toks):
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kw: past})
        past = getattr(out, "cache", None)
        past = getattr(out, "past_key_values", None) if past is None else past
        nxt = int(out.logits[0, -1].argmax())
        if nxt == eos:
            break
        gen.append(nxt)
        if any(s in tokenizer.decode(gen[-48:], skip_special_tokens=True) for s in until if s):
            break
        ids = torch.tensor([[nxt]], device=device)
    text = tokenizer.decode(gen, skip_special_tokens=True)
    for s in until:
        if s:
            text = text.split(s)[0]
    return text


# ------------------------------------------------------------------------------------ statistics


def mean_stderr(values: Sequence[float]) -> float | None:
    """Sample standard error of the mean (``n - 1`` denominator); None below two values."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def _acc(values: Sequence[float]) -> tuple[float, float | None]:
    return sum(values) / len(values), mean_stderr(values)


# ---------------------------------------------------------------------------------------- tasks


@dataclass
class _Bar:
    """A tqdm bar when progress is on, else a no-op."""

    desc: str
    total: int
    enabled: bool
    _bar: Any = field(default=None, init=False)

    def __enter__(self) -> Callable[[int], None]:
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit="req", dynamic_ncols=True)
            return self._bar.update
        return lambda n: None

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def _take(docs: list, limit: int | None) -> list:
    return docs if limit is None else docs[:limit]


def _run_lambada(model, tokenizer, path: Path, limit, progress, s) -> dict[str, Any]:
    docs = _take(load_lambada(path), limit)
    reqs = [encode_pair(tokenizer, d.context, d.target) for d in docs]
    with _Bar("lambada", len(reqs), progress) as upd:
        res = loglikelihoods(model, reqs, batch_tokens=s["batch_tokens"], max_length=s["max_length"], progress=upd)
    lls = [ll for ll, _ in res]
    acc, acc_se = _acc([float(g) for _, g in res])
    ppl = math.exp(-sum(lls) / len(lls))
    ll_se = mean_stderr(lls)
    return {
        "metrics": {"acc": acc, "perplexity": ppl},
        "stderr": {"acc": acc_se, "perplexity": None if ll_se is None else ppl * ll_se},
        "n": len(docs),
    }


def _run_piqa(model, tokenizer, path: Path, limit, progress, s) -> dict[str, Any]:
    docs = _take(load_piqa(path), limit)
    reqs = [encode_pair(tokenizer, d.context, " " + c) for d in docs for c in d.choices]
    with _Bar("piqa", len(reqs), progress) as upd:
        res = loglikelihoods(model, reqs, batch_tokens=s["batch_tokens"], max_length=s["max_length"], progress=upd)
    acc, acc_norm, k = [], [], 0
    for d in docs:
        lls = [res[k + j][0] for j in range(len(d.choices))]
        k += len(d.choices)
        acc.append(float(max(range(len(lls)), key=lambda j: (lls[j], -j)) == d.label))
        normed = [ll / len(c) for ll, c in zip(lls, d.choices)]
        acc_norm.append(float(max(range(len(normed)), key=lambda j: (normed[j], -j)) == d.label))
    (a, a_se), (an, an_se) = _acc(acc), _acc(acc_norm)
    return {"metrics": {"acc": a, "acc_norm": an}, "stderr": {"acc": a_se, "acc_norm": an_se}, "n": len(docs)}


def _gsm8k_shots_path(path: Path, s: dict[str, Any]) -> Path:
    shots = Path(s["fewshot_path"]).expanduser() if s["fewshot_path"] else path.with_name("train.jsonl")
    if not shots.is_file():
        raise DataError(f"gsm8k few-shot file {str(shots)!r} not found: put train.jsonl next to {path} or set fewshot_path")
    if shots.resolve() == path.resolve():
        raise ConfigError(f"gsm8k few-shot examples would come from the evaluated file {path}: use the train file")
    return shots


def _run_gsm8k(model, tokenizer, path: Path, limit, progress, s) -> dict[str, Any]:
    docs = _take(load_gsm8k(path), limit)
    k = int(s["num_fewshot"])
    if k < 0:
        raise ConfigError(f"num_fewshot must be >= 0, got {k}")
    pool = load_gsm8k(_gsm8k_shots_path(path, s)) if k else []
    if k > len(pool) and k:
        raise DataError(f"gsm8k few-shot file has {len(pool)} examples, fewer than num_fewshot={k}")
    rnd = random.Random(s["fewshot_seed"])
    strict, flexible = [], []
    with _Bar("gsm8k", len(docs), progress) as upd:
        for d in docs:
            shots = rnd.sample(pool, k) if k else []
            out = greedy_generate(
                model, tokenizer, gsm8k_prompt(d, shots), until=tuple(s["until"]),
                max_gen_toks=int(s["max_gen_toks"]), max_length=s["max_length"],
            )  # fmt: skip
            strict.append(float(gsm8k_match(strict_extract(out), d.answer)))
            flexible.append(float(gsm8k_match(flexible_extract(out), d.answer)))
            upd(1)
    (st, st_se), (fl, fl_se) = _acc(strict), _acc(flexible)
    return {
        "metrics": {"exact_match_strict": st, "exact_match_flexible": fl},
        "stderr": {"exact_match_strict": st_se, "exact_match_flexible": fl_se},
        "n": len(docs),
        "num_fewshot": k,
    }


_RUNNERS = {"lambada": _run_lambada, "piqa": _run_piqa, "gsm8k": _run_gsm8k}


def _check_settings(limit: int | None, settings: dict[str, Any]) -> dict[str, Any]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a whole number >= 1 (or None for the full set), got {limit!r}")
    unknown = [k for k in settings if k not in DEFAULT_SETTINGS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(DEFAULT_SETTINGS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown task setting {unknown[0]!r}: {hint}settings are {', '.join(DEFAULT_SETTINGS)}")
    s = {**DEFAULT_SETTINGS, **settings}
    if not isinstance(s["batch_tokens"], int) or s["batch_tokens"] < 1:
        raise ConfigError(f"batch_tokens must be an integer >= 1, got {s['batch_tokens']!r}")
    if not isinstance(s["max_gen_toks"], int) or s["max_gen_toks"] < 1:
        raise ConfigError(f"max_gen_toks must be an integer >= 1, got {s['max_gen_toks']!r}")
    if isinstance(s["until"], str):
        s["until"] = (s["until"],)
    return s


@torch.no_grad()
def evaluate_tasks(
    model: nn.Module,
    tokenizer,
    tasks: list[str] | str,
    limit: int | None = None,
    progress: bool = True,
    **settings: Any,
) -> dict[str, dict[str, Any]]:
    """Score ``model`` on tasks (see the module docstring for the rules).

    Args:
        tasks: ``"lambada,piqa:PATH"`` or a list of such specs.
        limit: score only the first ``limit`` examples of each task (None: all).
        progress: show a tqdm bar per task.
        settings: ``batch_tokens``, ``max_length`` (all tasks); ``num_fewshot``, ``fewshot_seed``,
            ``fewshot_path``, ``max_gen_toks``, ``until`` (gsm8k).

    Returns:
        ``{task: {"metrics": {...}, "stderr": {...}, "n": int, "seconds": float, "path": str}}``
        (gsm8k adds ``num_fewshot``); metrics are fractions (0-1) except ``perplexity``.

    Raises:
        ConfigError: unknown task or setting, ``limit < 1``.
        DataError: a task file that is missing or malformed.
    """
    specs = parse_task_specs(tasks)
    s = _check_settings(limit, settings)
    paths = {spec.name: resolve_task_path(spec) for spec in specs}  # fail before any scoring
    was_training = model.training
    model.eval()
    out: dict[str, dict[str, Any]] = {}
    try:
        for spec in specs:
            t0 = time.perf_counter()
            res = _RUNNERS[spec.name](model, tokenizer, paths[spec.name], limit, progress, s)
            out[spec.name] = {**res, "seconds": time.perf_counter() - t0, "path": str(paths[spec.name])}
    finally:
        model.train(was_training)
    return out
