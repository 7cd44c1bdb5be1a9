"""Final answers of reasoning traces: extraction and equivalence for GSM8K, MATH and multiple choice.

One place for the three kinds of answer the reasoning benchmarks use, so that voting (every trace's
answer becomes a *key*; equal keys vote together) and scoring (key against the gold answer) agree:

* ``gsm8k`` -- a number. From a trace: the last ``\\boxed{...}``, else the number after the last
  ``answer is`` / ``#### ``, else the last number in the text (lm-eval ``gsm8k`` ``flexible-extract``).
  Canonical form: commas, ``$``, units' trailing ``.`` dropped, ``18.00`` -> ``18``, ``1/2`` -> ``0.5``.
  Gold: the number after ``#### `` in the dataset's ``answer`` field.
* ``math`` -- a LaTeX expression. From a trace: the last ``\\boxed{...}`` / ``\\fbox{...}``
  (balanced braces), else Minerva's ``final answer is $X$``. Canonical form: Hendrycks et al.'s
  ``is_equiv`` string normalisation (MATH, arXiv 2103.03874) -- spaces, ``\\left``/``\\right``,
  ``\\!``, units, ``^\\circ``, ``\\$``, ``%`` removed, ``dfrac``/``tfrac`` -> ``frac``, ``\\frac12`` ->
  ``\\frac{1}{2}``, ``a/b`` -> ``\\frac{a}{b}``, ``0.5`` for ``.5``, a leading ``x =`` dropped -- and,
  as lm-eval's ``minerva_math`` also does, ``\\text{...}`` unwrapped and a trailing ``.`` dropped.
* ``mc`` -- a choice letter (``A``-``J``). From a trace: ``answer is (B)``, ``\\boxed{B}``, else the
  last stand-alone capital letter among the choices. Canonical form: the upper-case letter.

``key(text, kind)`` is the canonical extracted answer (``None`` when a trace has none);
``equivalent(a, b, kind)`` compares two raw answers; ``gold(record_answer, kind)`` reads a
dataset's reference. The rules are deterministic string rules (no sympy), as the common harnesses'
default metrics are.
"""

from __future__ import annotations

import re
from fractions import Fraction

KINDS = ("gsm8k", "math", "mc")

# ------------------------------------------------------------------------------------------ boxed


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed X``) in ``text``."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = i + (6 if text.startswith("\\boxed", i) else 5)
    rest = text[j:]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):  # "\boxed 5"
        m = re.match(r"\s+([^\s$]+)", rest)
        return m.group(1) if m else None
    k = rest.find("{")
    if k < 0 or rest[:k].strip():
        return None
    depth = 0
    for n, ch in enumerate(rest[k:], k):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[k + 1 : n]
    return None  # unbalanced: the trace was cut inside the box


# ----------------------------------------------------------------------------------------- gsm8k
_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+"
_NUM_RE = re.compile(_NUM)
_ANSWER_IS = re.compile(r"(?:answer is|answer:|####)\s*[:=]?\s*\$?\s*\\?\(?\s*(" + _NUM + ")", re.IGNORECASE)


def canonical_number(s: str) -> str | None:
    """``"$1,234.50"`` -> ``"1234.5"``; ``"18.00"`` -> ``"18"``; ``"3/4"`` -> ``"0.75"``; None if not a number."""
    s = s.strip().replace(",", "").replace("$", "").replace("\\!", "").rstrip(".").strip()
    s = re.sub(r"\\(?:text|mathrm)\{[^}]*\}", "", s).strip()
    s = s.replace("\\%", "").rstrip("%").strip()
    m = re.fullmatch(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", s)
    if m:
        s = f"{m.group(1)}/{m.group(2)}"
    try:
        v = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    if v.denominator == 1:
        return str(v.numerator)
    f = float(v)
    return repr(round(f, 10)).rstrip("0").rstrip(".") if "e" not in repr(f) else repr(f)


def gsm8k_key(text: str) -> str | None:
    """The final number a GSM8K trace states (see the module docstring), canonical; None if none."""
    box = last_boxed(text)
    if box is not None:
        nums = _NUM_RE.findall(box)
        c = canonical_number(box) or (canonical_number(nums[-1]) if nums else None)
        if c is not None:
            return c
    found = _ANSWER_IS.findall(text)
    if found:
        c = canonical_number(found[-1])
        if c is not None:
            return c
    nums = _NUM_RE.findall(text)
    return canonical_number(nums[-1]) if nums else None


def gsm8k_gold(answer: str) -> str | None:
    """The reference number of a GSM8K ``answer`` field (after ``#### ``), canonical."""
    tail = answer.rsplit("####", 1)[-1] if "####" in answer else answer
    nums = _NUM_RE.findall(tail)
    return canonical_number(nums[0]) if nums else None


# ------------------------------------------------------------------------------------------ math
_UNITS = ("units", "unit", "cm", "inches", "inch", "feet", "meters", "degrees", "dollars", "cents", "square")


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}`` (single-character arguments)."""
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        out += "\\frac"
        if p.startswith("{") or len(p) < 1:
            out += p
            continue
        a, rest = p[0], p[1:]
        if rest.startswith("{"):
            out += "{" + a + "}" + rest
        elif rest:
            out += "{" + a + "}{" + rest[0] + "}" + rest[1:]
        else:
            out += "{" + a + "}"
    return out


def _fix_slash(s: str) -> str:
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def _fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def normalize_math(s: str) -> str:
    """Hendrycks' ``strip_string`` normalisation plus Minerva's ``\\text{}`` unwrapping (see the module docstring)."""
    s = s.strip().replace("\n", "").rstrip(".").strip()
    s = s.replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\text\{\s*(" + "|".join(_UNITS) + r")\s*\}", "", s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    if "=" in s and len(s.split("=")[0].strip()) <= 2:  # "x = 5" -> "5"
        s = s.split("=", 1)[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _fix_slash(s)
    return s


_FINAL_IS = re.compile(r"final answer is\s*\$(.+?)\$", re.IGNORECASE | re.DOTALL)


def math_key(text: str) -> str | None:
    """The normalised final answer of a MATH-style trace: the last ``\\boxed{}``, else ``final answer is $X$``."""
    box = last_boxed(text)
    if box is None:
        found = _FINAL_IS.findall(text)
        if not found:
            return None
        box = found[-1]
    k = normalize_math(box)
    return k or None


# ------------------------------------------------------------------------------- multiple choice
_MC_IS = re.compile(r"answer is\s*:?\s*\(?\s*([A-J])\b\)?", re.IGNORECASE)


def mc_key(text: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The chosen letter: ``answer is (B)``, ``\\boxed{B}``, else the last stand-alone choice letter."""
    box = last_boxed(text)
    if box is not None:
        m = re.search(r"\b([A-J])\b", box.replace("\\text{", " ").upper())
        if m and m.group(1) in letters:
            return m.group(1)
    found = [x.upper() for x in _MC_IS.findall(text) if x.upper() in letters]
    if found:
        return found[-1]
    # a bare capital letter is too often a word ("I think", "A train"): only "(B)" or "B)" count
    found = [x for x in re.findall(r"(?<![A-Za-z(])\(?([A-J])\)(?![A-Za-z])", text) if x in letters]
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------- shared


def key(text: str, kind: str = "gsm8k") -> str | None:
    """The canonical final answer of a trace's text for ``kind`` (``gsm8k``, ``math``, ``mc``); None if none."""
    if kind == "gsm8k":
        return gsm8k_key(text)
    if kind == "math":
        return math_key(text)
    if kind == "mc":
        return mc_key(text)
    from ..errors import ConfigError

    raise ConfigError(f"unknown answer kind {kind!r}: use one of {', '.join(KINDS)}")


def canonical(answer: str, kind: str = "gsm8k") -> str | None:
    """A raw answer (already extracted, e.g. a dataset's gold) in canonical form."""
    if kind == "gsm8k":
        return canonical_number(answer)
    if kind == "math":
        return normalize_math(str(answer)) or None
    if kind == "mc":
        a = str(answer).strip().strip("()").upper()
        return a if len(a) == 1 and a.isalpha() else None
    return key(answer, kind)


def equivalent(a: str | None, b: str | None, kind: str = "gsm8k") -> bool:
    """Two raw answers name the same final answer (after canonicalisation); None never matches."""
    if a is None or b is None:
        return False
    ca, cb = canonical(a, kind), canonical(b, kind)
    return ca is not None and ca == cb


def gold(record_answer: str, kind: str = "gsm8k") -> str | None:
    """The canonical reference answer of a dataset record's answer field."""
    if kind == "gsm8k":
        return gsm8k_gold(str(record_answer))
    return canonical(str(record_answer), kind)
