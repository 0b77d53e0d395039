"""The study's math scoring (PEFT-Arena's ``third_party/math_eval``: ``parser.extract_answer``,
``parser.strip_string`` and ``grader.math_equal``), written from its behaviour.

* extraction, in order: Minerva's "final answer is $X$. I hope"; the last ``\\boxed{}``; the text
  after the last "he answer is"; after the last "final answer is"; else the last number;
* normalisation (:func:`strip_string`): LaTeX spellings, ``\\text{}``, units, ``$``, ``%``,
  degrees, number words, ``x=``, fractions and ``a/b``;
* equivalence (:func:`math_equal`): case-insensitive string equality; for two numbers, relative
  tolerance 1e-4 against the gold, the gold ÷ 100 and the gold × 100 (percentages); else
  brackets dropped, tuples compared part by part, then symbolic equality (sympy, with the same
  1e-4 numeric fallback).

Deliberate differences (docs/eval.md): number words are converted only when the whole answer is a
number in words (the study's word2number also pulls numbers out of mixed text), and symbolic
comparison is skipped for answers over 300 characters instead of running under a 1 s time-out.
"""

from __future__ import annotations

import re
from math import isclose

# The study's unit vocabulary (removed as whole words from answers), and each with an "s".
_UNITS = [
    "east", "degree", "mph", "kmph", "ft", "m sqaure", " m east", "sq m", "deg", "mile", "q .", "monkey", "prime",
    "ratio", "profit of rs", "rd", "o", "gm", "p . m", "lb", "tile", "per", "dm", "lt", "gain", "ab", "way", "west",
    "a .", "b .", "c .", "d .", "e .", "f .", "g .", "h .", "t", "a", "h", "no change", "men", "soldier", "pie", "bc",
    "excess", "st", "inches", "noon", "percent", "by", "gal", "kmh", "c", "acre", "rise", "a . m", "th", "π r 2", "sq",
    "mark", "l", "toy", "coin", "sq . m", "gallon", "° f", "profit", "minw", "yr", "women", "feet", "am", "pm", "hr",
    "cu cm", "square", "v â € ™", "are", "rupee", "rounds", "cubic", "cc", "mtr", "s", "ohm", "number", "kmph", "day",
    "hour", "minute", "min", "second", "man", "woman", "sec", "cube", "mt", "sq inch", "mp", "∏ cm ³", "hectare",
    "more", "sec", "unit", "cu . m", "cm 2", "rs .", "rs", "kg", "g", "month", "km", "m", "cm", "mm", "apple", "liter",
    "loss", "yard", "pure", "year", "increase", "decrease", "d", "less", "Surface", "litre", "pi sq m", "s .", "metre",
    "meter", "inch",
]
_UNITS = _UNITS + [u + "s" for u in _UNITS]
_UNIT_RES = [re.compile(r"(^|\W)" + u + r"($|\W)") for u in _UNITS]

_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}


def words_to_number(text: str) -> str | None:
    """``"twenty-one"`` -> ``"21"``; None unless the whole text is a number in English words."""
    words = [w for w in re.split(r"[\s-]+", text.strip().lower()) if w and w != "and"]
    if not words:
        return None
    total, current = 0, 0
    for w in words:
        if w in _SMALL:
            current += _SMALL[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w == "hundred":
            current = max(current, 1) * 100
        elif w in _SCALES:
            total += max(current, 1) * _SCALES[w]
            current = 0
        else:
            return None
    return str(total + current)


def _balanced(after: str) -> str:
    """The text inside the braces that ``after`` opens (``{...}``), to the matching brace or the end."""
    depth, out = 1, []
    for c in after[1:]:
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                break
        out.append(c)
    return "".join(out)


def extract_answer(text: str) -> str:
    """The study's answer extraction for math benchmarks, normalised by :func:`strip_string`."""
    s = str(text).replace("\u043a\u0438", "")
    if "final answer is $" in s and "$. I hope" in s:
        pred = s.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
    elif "boxed" in s:
        ans = s.split("boxed")[-1]
        if not ans:
            return ""
        pred = _balanced(ans) if ans[0] == "{" else ans.split("$")[0].strip()
    elif "he answer is" in s:
        pred = s.split("he answer is")[-1].strip()
    elif "final answer is" in s:
        pred = s.split("final answer is")[-1].strip()
    else:
        nums = re.findall(r"-?\d*\.?\d+", s.replace(",", ""))
        pred = nums[-1] if nums else ""
    pred = re.sub(r"\n\s*", "", pred)
    if pred.startswith(":"):
        pred = pred[1:]
    if pred.endswith("."):
        pred = pred[:-1]
    if pred.endswith("/"):
        pred = pred[:-1]
    return strip_string(pred)


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\frac"
        if sub.startswith("{"):
            out += sub
        elif len(sub) < 2:
            return s
        elif sub[1] == "{":
            out += "{" + sub[0] + "}" + sub[1:]
        else:
            out += "{" + sub[0] + "}{" + sub[1] + "}" + sub[2:]
    return out


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = parts
    try:
        a2 = a if "sqrt" in a else int(a)
        b2 = b if "sqrt" in b else int(b)
    except ValueError:
        return s
    if s != f"{a2}/{b2}":
        return s
    return "\\frac{" + str(a2) + "}{" + str(b2) + "}"


def strip_string(string: str) -> str:
    """The study's answer normalisation (``strip_string``), step by step."""
    s = str(string).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    s = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", s)
    s = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", s).replace("bmatrix", "pmatrix")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\{", "{").replace("\\}", "}")
    t = re.sub(r"\\text{.*?}$", "", s).strip()
    if t and t != s:
        s = t
    for _ in range(2):
        for rx in _UNIT_RES:
            t = rx.sub(r"\1\2", s)
            if t:
                s = t
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    w = words_to_number(s)
    if w is not None:
        s = w
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    for key in ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"):
        s = s.replace(key, "")
    s = s.replace("\\emptyset", r"{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    s = s.replace("infinity", "\\infty")
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty").replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox{.*?}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", s)
    s = re.sub(r"(\d+)\.0*$", r"\1", s)
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    return _fix_a_slash_b(_fix_fracs(s))


def _digits(x):
    x = str(x).replace(",", "")
    try:
        return float(x)
    except ValueError:
        if x.endswith("%"):
            x = x[:-1].rstrip("\\")
            try:
                return float(x) / 100
            except ValueError:
                return None
    return None


def _close(a: float, b: float) -> bool:
    return isclose(b, a, rel_tol=1e-4)


def _sympy(s: str):
    from latex2sympy2_extended import latex2sympy

    for f in (latex2sympy, _parse_expr):
        try:
            return f(s)
        except Exception:
            continue
    return None


def _parse_expr(s: str):
    from sympy.parsing.sympy_parser import parse_expr

    return parse_expr(s)


def symbolic_equal(a: str, b: str) -> bool:
    if len(a) > 300 or len(b) > 300:
        return False
    x, y = _sympy(a), _sympy(b)
    if x is None or y is None:
        return False
    try:
        if str(x) == str(y) or x == y:
            return True
    except Exception:
        pass
    try:
        from sympy import simplify

        if x.equals(y) or simplify(x - y) == 0:
            return True
    except Exception:
        pass
    try:
        from sympy import N

        return _close(float(N(x)), float(N(y)))
    except Exception:
        return False


def math_equal(prediction, reference) -> bool:
    """The study's equivalence of an extracted answer and the gold answer (both normalised)."""
    if prediction is None or reference is None:
        return False
    pred, ref = str(prediction).strip(), str(reference).strip()
    if pred.lower() == ref.lower():
        return True
    p, r = _digits(pred), _digits(ref)
    if p is not None and r is not None:
        return any(_close(p, g) for g in (r / 100, r, r * 100))
    if not pred:
        return False
    ps, rs = pred, ref
    if (pred.startswith("[") and pred.endswith("]") and not ref.startswith("(")) or (
            pred.startswith("(") and pred.endswith(")") and not ref.startswith("[")):
        ps, rs = ps.strip("[]()"), rs.strip("[]()")
    for ch in "{}()":
        ps, rs = ps.replace(ch, ""), rs.replace(ch, "")
    if ps.lower() == rs.lower():
        return True
    if re.match(r"(\(|\[).+(\)|\])", pred) and re.match(r"(\(|\[).+(\)|\])", ref):
        pp, rp = pred[1:-1].split(","), ref[1:-1].split(",")
        if len(pp) == len(rp) and all(math_equal(a, b) for a, b in zip(pp, rp)):
            return True
    return symbolic_equal(pred, ref)


def score_math_study(completion: str, reference: str) -> dict:
    """{extracted, correct} under the study's protocol (the gold is normalised the same way)."""
    ex = extract_answer(completion)
    return {"extracted": ex, "correct": math_equal(ex, strip_string(str(reference)))}
