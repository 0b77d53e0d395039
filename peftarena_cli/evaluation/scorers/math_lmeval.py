"""lm-evaluation-harness's math scoring (v0.4.13), written from its task files' behaviour.

* ``gsm8k``: ``strict-match`` is the first ``#### N`` (regex ``#### (\\-?[0-9\\.\\,]+)``),
  ``flexible-extract`` the last number-like run (``(-?[$0-9.,]{2,})|(-?[0-9]+)``); each is
  compared with the gold by ``exact_match`` with ``ignore_case`` and the regexes ``,``, ``\\$``,
  ``(?s).*#### `` and ``\\.$`` removed from both sides. ``correct`` is strict-match.
* ``minerva_math`` (MATH-500, AIME, AMC under this protocol): the text after "Final Answer: The
  final answer is" up to ". I hope it is correct.", normalised as in Lewkowycz et al. (2022),
  appendix D, and compared with the normalised gold: equal strings, or equal as sympy
  expressions (``is_equiv``; we parse with latex2sympy where lm-eval uses sympy's ANTLR
  ``parse_latex``) (``exact_match``, ``correct``);
  ``math_verify`` of the whole completion against the gold is ``correct_flexible``.
"""

from __future__ import annotations

import re

from peftarena_cli.evaluation.scorers.math_study import symbolic_equal

INVALID = "[invalid]"
_GSM_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_GSM_FLEX = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_GSM_IGNORE = [",", r"\$", r"(?s).*#### ", r"\.$"]


def _regex_first(rx: re.Pattern, text: str, select: int = 0) -> str:
    found = rx.findall(text)
    if not found:
        return INVALID
    m = found[select]
    if isinstance(m, tuple):
        m = next((g for g in m if g), INVALID)
    return m.strip()


def gsm8k_exact(pred: str, gold: str) -> bool:
    for rx in _GSM_IGNORE:
        pred, gold = re.sub(rx, "", pred), re.sub(rx, "", gold)
    return pred.lower() == gold.lower()


def score_gsm8k_lmeval(completion: str, reference: str) -> dict:
    strict = _regex_first(_GSM_STRICT, completion)
    flex = _regex_first(_GSM_FLEX, completion, -1)
    ok = gsm8k_exact(strict, str(reference))
    return {"extracted": strict, "correct": ok, "correct_strict": ok, "correct_flexible": gsm8k_exact(flex, str(reference))}


# --- minerva_math -------------------------------------------------------------------------------
MINERVA_INVALID = "[invalidanswer]"
_SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
                  (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
_REMOVED = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue",
            "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals", "edges",
            "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2",
            "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"',
            "\\dots"]


def minerva_answer(text: str) -> str:
    m = re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.", text + "I hope it is correct.")
    return m.group(1).strip() if m else MINERVA_INVALID


def minerva_normalize(ans: str) -> str:
    """The Minerva answer normalisation (units and TeX spellings removed, ``$...$`` kept)."""
    s = ans.split("=")[-1]
    for e in _REMOVED:
        if e.isalpha():
            s = re.sub(rf"(?<!\\)\b{e}\b", "", s)
    for before, after in _SUBSTITUTIONS:
        s = s.replace(before, after)
    for e in _REMOVED:
        if e.isalpha():
            seg = re.split(r"(\\[a-zA-Z]+)", s)
            seg[::2] = [x.replace(e, "") for x in seg[::2]]
            s = "".join(seg)
        else:
            s = s.replace(e, "")
    s = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", s)
    for cmd in ("text", "textbf", "overline"):
        s = re.sub(r"(\\" + cmd + r"\{)(.*?)(\})", "\\2", s)
    s = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", s)
    s = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", s)
    s = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", s)
    s = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", s)
    s = s.replace("$", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", s):
        s = s.replace(",", "")
    return s


def score_minerva_lmeval(completion: str, reference: str) -> dict:
    ans = minerva_normalize(minerva_answer(completion))
    gold = minerva_normalize(str(reference))
    exact = ans != MINERVA_INVALID and (ans == gold or symbolic_equal(ans, gold))
    try:
        from math_verify import parse, verify

        mv = bool(verify(parse(f"${reference}$"), parse(completion)))
    except Exception:
        mv = False
    return {"extracted": ans, "correct": exact, "correct_strict": exact, "correct_flexible": mv}
