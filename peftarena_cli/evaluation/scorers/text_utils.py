"""Offline text utilities for the IFEval checks: sentence splitting, word counting, word
tokenisation. Nothing here downloads data (no nltk punkt)."""

from __future__ import annotations

import re

# Abbreviations that end with a period but do not end a sentence.
_ABBREV = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd", "co",
           "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "no",
           "fig", "al", "approx", "dept", "est", "gen", "gov", "mt", "u.s", "u.k", "ph.d", "a.m", "p.m"}
_END = re.compile(r'([.!?]+)(["\')\]]*)(\s+)')


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences: a run of ``.!?`` (plus closing quotes/brackets) followed by
    white space ends a sentence, except after a known abbreviation, a single capital letter
    (an initial) or inside a number. Line breaks between non-empty lines also end sentences
    (list items and headings count as sentences, as with punkt on markdown)."""
    sents: list[str] = []
    for block in re.split(r"\n\s*\n|\n(?=\s*(?:[*\-#]|\d+[.)])\s)", text):
        start = 0
        for m in _END.finditer(block):
            before = block[start:m.start()]
            last_word = re.findall(r"[\w.]+$", before)
            w = last_word[0].lower() if last_word else ""
            if m.group(1) == "." and (w in _ABBREV or re.fullmatch(r"[a-z]", w) or re.fullmatch(r"(?:[a-z]\.)+[a-z]", w)):
                continue
            nxt = block[m.end():m.end() + 1]
            if nxt and nxt.islower():
                continue
            s = block[start:m.end(2) if m.group(2) else m.end(1)].strip()
            if s:
                sents.append(s)
            start = m.end()
        rest = block[start:].strip()
        if rest:
            sents.append(rest)
    return [s for s in sents if re.search(r"\w", s)]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def count_words(text: str) -> int:
    """Words as IFEval counts them: runs of word characters (``\\w+``)."""
    return len(re.findall(r"\w+", text))


def word_tokenize(text: str) -> list[str]:
    """Treebank-style word tokens (nltk's word tokenizer without punkt), or a regex fallback."""
    try:
        from nltk.tokenize import NLTKWordTokenizer

        tok = NLTKWordTokenizer()
        return [t for s in split_sentences(text) or [text] for t in tok.tokenize(s)]
    except ImportError:  # pragma: no cover
        return re.findall(r"\w+|[^\w\s]", text)
