"""IFEval: the 25 verifiable instructions of Zhou et al. (2023), by instruction id, with their
kwargs; strict and loose checks at prompt and instruction level.

Each check is ``check(response, **kwargs) -> bool``; :data:`CHECKS` maps the instruction id to
it. ``loose`` passes when any of the 8 response variants passes (the response with its first
line, last line or both removed, each with and without ``*``), as the benchmark defines.
Sentence splitting is nltk's Punkt English model and word tokenisation nltk's Treebank
tokenizer on Punkt sentences, both offline (``text_utils``). The behaviour of each check follows
Google's official scorer (``instruction_following_eval``); ``tests/test_ifeval_parity.py``
measures the agreement on real responses.
"""

from __future__ import annotations

import json
import re

from peftarena_cli.evaluation.scorers.text_utils import count_sentences, count_words, word_tokenize

RELATIONS = ("less than", "at least")


def _compare(count: int, n, relation: str) -> bool:
    n = int(n)
    if relation == "less than":
        return count < n
    if relation == "at least":
        return count >= n
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def _detect_language(text: str):
    try:
        from langdetect import DetectorFactory, detect
        from langdetect.lang_detect_exception import LangDetectException
    except ImportError:  # pragma: no cover
        return None
    DetectorFactory.seed = 0
    try:
        return detect(text)
    except LangDetectException:
        return None


# --- keywords ---------------------------------------------------------------------------------
def _pattern(text: str) -> str:
    """Keywords are regular expressions in the official checks (passed to ``re`` unescaped, so
    ``c.t`` matches "cut"); one that is not a valid pattern is matched literally here (the
    official scorer would raise)."""
    try:
        re.compile(text)
    except re.error:
        return re.escape(text)
    return text


def keywords_existence(r, keywords=(), **_):
    return all(re.search(_pattern(k), r, flags=re.I) for k in keywords)


def keywords_frequency(r, keyword="", frequency=1, relation="at least", **_):
    return _compare(len(re.findall(_pattern(keyword.strip()), r, flags=re.I)), frequency, relation)


def keywords_forbidden_words(r, forbidden_words=(), **_):
    return not any(re.search(r"\b" + _pattern(w) + r"\b", r, flags=re.I) for w in forbidden_words)


def keywords_letter_frequency(r, letter="a", let_frequency=1, let_relation="at least", **_):
    """Occurrences of one letter in the lower-cased response (the letter is stripped and
    lower-cased, as the official ``build_description`` does)."""
    return _compare(r.lower().count(letter.strip().lower()), let_frequency, let_relation)


# --- language ---------------------------------------------------------------------------------
def language_response_language(r, language="en", **_):
    lang = _detect_language(r)
    return True if lang is None else lang == language


# --- length constraints -----------------------------------------------------------------------
def number_sentences(r, num_sentences=1, relation="at least", **_):
    return _compare(count_sentences(r), num_sentences, relation)


def number_paragraphs(r, num_paragraphs=1, **_):
    parts = re.split(r"\s?\*\*\*\s?", r)
    n = len(parts)
    for i, p in enumerate(parts):
        if not p.strip():
            if i == 0 or i == len(parts) - 1:
                n -= 1
            else:
                return False
    return n == int(num_paragraphs)


def number_words(r, num_words=1, relation="at least", **_):
    return _compare(count_words(r), num_words, relation)


def nth_paragraph_first_word(r, num_paragraphs=1, nth_paragraph=1, first_word="", **_):
    """Paragraphs are separated by a blank line ("\n\n"); empty ones do not count, but the n-th
    is taken by position in the split, and must not be empty. The first word is read up to the
    first punctuation mark (after leading quotes), lower-cased."""
    paras = re.split(r"\n\n", r)
    n_real = sum(1 for p in paras if p.strip())
    nth = int(nth_paragraph)
    if nth < 1 or nth > n_real or not paras[nth - 1].strip():
        return False
    word = paras[nth - 1].strip().split()[0].lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in ".,?!'\"":
            break
        first += ch.lower()
    return n_real == int(num_paragraphs) and first == first_word.lower()


# --- detectable content -----------------------------------------------------------------------
def number_placeholders(r, num_placeholders=1, **_):
    return len(re.findall(r"\[.*?\]", r)) >= int(num_placeholders)


def postscript(r, postscript_marker="P.S.", **_):
    low = r.lower()
    postscript_marker = postscript_marker.strip()
    if postscript_marker == "P.P.S":
        pat = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pat = r"\s*p\.\s?s\..*$"
    else:
        pat = r"\s*" + _pattern(postscript_marker.lower()) + r".*$"
    return bool(re.findall(pat, low, flags=re.M))


# --- detectable format ------------------------------------------------------------------------
def number_bullet_lists(r, num_bullets=1, **_):
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.M)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.M)
    return len(stars) + len(dashes) == int(num_bullets)


CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def constrained_response(r, **_):
    r = r.strip()
    return any(o in r for o in CONSTRAINED_OPTIONS)


def number_highlighted_sections(r, num_highlights=1, **_):
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip())
    return n >= int(num_highlights)


def multiple_sections(r, section_spliter="Section", num_sections=1, **_):
    parts = re.split(r"\s?" + _pattern(section_spliter.strip()) + r"\s?\d+\s?", r)
    return len(parts) - 1 >= int(num_sections)


def json_format(r, **_):
    v = r.strip()
    for pre in ("```json", "```Json", "```JSON", "```"):  # removed in turn, as the official check
        v = v.removeprefix(pre)
    v = v.removesuffix("```").strip()
    try:
        json.loads(v)
    except ValueError:
        return False
    return True


def title(r, **_):
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


# --- combination ------------------------------------------------------------------------------
def two_responses(r, **_):
    parts = r.split("******")
    got = []
    for i, p in enumerate(parts):
        if not p.strip():
            if i != 0 and i != len(parts) - 1:
                return False
        else:
            got.append(p.strip())
    return len(got) == 2 and got[0] != got[1]


def repeat_prompt(r, prompt_to_repeat="", **_):
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


# --- start / end ------------------------------------------------------------------------------
def end_checker(r, end_phrase="", **_):
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(r, **_):
    v = r.strip()
    return len(v) > 1 and v[0] == '"' and v[-1] == '"'


# --- change case ------------------------------------------------------------------------------
def capital_word_frequency(r, capital_frequency=1, capital_relation="at least", **_):
    return _compare(sum(1 for w in word_tokenize(r) if w.isupper()), capital_frequency, capital_relation)


def english_capital(r, **_):
    lang = _detect_language(r)
    return r.isupper() and (lang is None or lang == "en")


def english_lowercase(r, **_):
    lang = _detect_language(r)
    return r.islower() and (lang is None or lang == "en")


# --- punctuation ------------------------------------------------------------------------------
def no_comma(r, **_):
    return "," not in r


CHECKS = {
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": keywords_forbidden_words,
    "keywords:letter_frequency": keywords_letter_frequency,
    "language:response_language": language_response_language,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_words": number_words,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:json_format": json_format,
    "detectable_format:title": title,
    "combination:two_responses": two_responses,
    "combination:repeat_prompt": repeat_prompt,
    "startend:end_checker": end_checker,
    "startend:quotation": quotation,
    "change_case:capital_word_frequency": capital_word_frequency,
    "change_case:english_capital": english_capital,
    "change_case:english_lowercase": english_lowercase,
    "punctuation:no_comma": no_comma,
}


def response_variants(response: str) -> list[str]:
    """The 8 loose variants: first/last line removed or not, with and without ``*``."""
    lines = response.split("\n")
    base = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return base + [v.replace("*", "") for v in base]


def _clean_kwargs(kw) -> dict:
    return {k: v for k, v in (kw or {}).items() if v is not None}


def check_instruction(instruction_id: str, response: str, kwargs: dict | None = None, loose: bool = False) -> bool:
    from peftarena_cli.errors import DataError

    fn = CHECKS.get(instruction_id)
    if fn is None:
        raise DataError(f"unknown IFEval instruction id {instruction_id!r}",
                        hint="the 25 ids of the IFEval paper are listed in docs/eval.md")
    kw = _clean_kwargs(kwargs)
    if not loose:
        return bool(response.strip()) and bool(fn(response, **kw))
    return any(v.strip() and fn(v, **kw) for v in response_variants(response))


def score_ifeval(response: str, instruction_ids: list[str], kwargs_list: list[dict]) -> dict:
    """Per-instruction strict/loose results and the prompt-level verdicts for one response."""
    kwargs_list = list(kwargs_list) if kwargs_list is not None else [{}] * len(instruction_ids)
    strict = [check_instruction(i, response, k, loose=False) for i, k in zip(instruction_ids, kwargs_list)]
    loose = [check_instruction(i, response, k, loose=True) for i, k in zip(instruction_ids, kwargs_list)]
    return {"extracted": "", "correct": all(strict), "prompt_strict": all(strict), "prompt_loose": all(loose),
            "inst_strict": strict, "inst_loose": loose}
