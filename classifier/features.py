"""Text features for the routing score, from one tokenisation per text.

These functions are referenced by the persisted pipeline (skops stores them by
module and name), so they must keep their names and stay pure.

A text is lowercased, its numbers and punctuation rewritten in two C-level
passes (`re.sub`, `str.translate`) and split once; the words, their bigrams
and every dense count come from that one list, the cue words through one dict
lookup per word. A regex per feature, as before, cost four times as much
(`python -m classifier bench`).

Normalisation removes surface cues that identify a *training source* rather
than the *kind of question* (see shared/data/questions/SOURCES.md):
- case and punctuation are dropped (NQ's search queries are lowercase with
  no `?`, TREC was detokenised with " ?");
- every number is one word, `0`, and every currency sign one word, `$`
  (GSM8K teaches "numbers and $ mean complex": a number counts once however
  many digits it has).
"""

from __future__ import annotations

import math
import re
import string

import numpy as np

# Long input is cut before anything else runs, so scoring a 1 MB prompt costs
# the same as scoring a 4 kB one. The length feature still sees the full length.
MAX_CHARS = 4000

_NUMBER = re.compile(r"\d[\d.,]*")
# Punctuation becomes a space, currency signs a `$` word; `?` and newlines are
# counted before this runs.
_SPACES = str.maketrans(
    {**{c: " " for c in string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014"}, **{c: " $ " for c in "$€£¥"}})
_OPERATORS = "=+*/^<>"

_NUMBER_WORDS = "two three four five six seven eight nine ten twelve twenty 0".split()
_SUPERLATIVES = ("largest biggest smallest most least longest highest lowest oldest youngest tallest first last top best "
                 "main major richest busiest").split()
_RELATIVE = "who whom whose that which where when".split()

# Cue words and bigrams, by the count they feed. Each group fires on a *kind*
# of request, so a weight learned from the phrasings in training transfers to
# phrasings it never saw.
_WORD_CUES = {
    "step": "then after before each per every twice half times remaining left total if and",  # chain a problem's steps
    "math": "sqrt log sin cos integral derivative probability equation solve prove",
    "fan_out": "combined altogether both either",  # aggregation, two things at once
    "relative": " ".join(_RELATIVE),  # relative clauses: a fact that bridges to another
    "code": ("implement refactor debug function program script algorithm regex sql python javascript typescript java "
             "rust golang bash code compile array"),
    "generative": "essay poem story blog email letter speech slogan headline itinerary haiku lyrics",
}
_BIGRAM_CUES = {
    "fan_out": ["in total", "total number", "sum of", "on average", "average of", "each of", "all of", "members of",
                "which of", "more than", "fewer than", "less than", "greater than", "difference between", "difference in",
                *(f"{n} {s}" for n in _NUMBER_WORDS for s in _SUPERLATIVES), *(f"top {n}" for n in _NUMBER_WORDS)],
    "relative_is": [f"{r} {v}" for r in _RELATIVE for v in ("is", "are")],  # "who is ...": a lookup, not a bridge
    "reasoning": ["step by", "in detail", "how does", "difference between"],
    "open_ended": ["pros and", "best way", "tips for", "what would", "your opinion", "impact of", "what if", "would happen"],
}
_FIRST_CUES = {  # the request's first word
    "generative": ("write compose draft create generate design develop build plan suggest propose brainstorm imagine "
                   "pretend rewrite edit summarize summarise translate outline roleplay"),
    "reasoning": "explain describe discuss analyze analyse compare contrast evaluate justify prove derive solve calculate estimate why",
}
_OPEN_START = frozenset(f"how {m} {s}" for m in "can could should would do does might".split()
                        for s in "i we you one people government governments companies".split())
_GENERATIVE_START = frozenset(("act as", "give me", "list some"))


def _index(groups: dict[str, object]) -> dict[str, tuple[str, ...]]:
    """cue -> the counts it feeds."""
    out: dict[str, tuple[str, ...]] = {}
    for name, cues in groups.items():
        for cue in cues.split() if isinstance(cues, str) else cues:
            out[cue] = out.get(cue, ()) + (name,)
    return out


# Words hold no space and bigrams one, so one index serves both.
_CUE_INDEX = {**_index(_WORD_CUES), **_index(_BIGRAM_CUES)}
_CUE_NAMES = tuple(dict.fromkeys((*_WORD_CUES, *_BIGRAM_CUES, *_FIRST_CUES)))
_FIRST_INDEX = {w: names[0] for w, names in _index(_FIRST_CUES).items()}

DENSE_FEATURE_NAMES = (
    "log_words",  # log1p(word count): longer requests ask for more work
    "log_chars",  # log1p(characters of the *untruncated* text)
    "log_sentences",  # log1p(sentence ends): instructions + a task, a longer problem
    "log_newlines",  # lists, pasted passages, code
    "has_code",  # code fences or typical code punctuation
    "log_numbers",  # log1p(how many numbers): a word problem's quantities, not their values
    "log_questions",  # log1p(question marks): a multi-part request
    "log_fan_out",  # log1p(aggregation over a set, a set of n, comparisons)
    "log_bridges",  # log1p(relative clauses after the first word): multi-hop
    "log_step_words",  # log1p(words that chain the steps of a problem)
    "log_math",  # log1p(operators and maths vocabulary)
    "cue_generative",  # asks to produce or transform text
    "cue_open_ended",  # hypotheticals, advice, opinions
    "cue_reasoning",  # asks for an explanation or a derivation
    "cue_code_task",  # programming work
    # The same measures again, but only for quantitative text (two or more
    # numbers): inside word problems they grade the amount of work, and
    # having their own weights keeps that grading from being traded off
    # against the measures' weights across kinds of question.
    "quant",
    "quant_log_words",
    "quant_log_numbers",
    "quant_log_sentences",
    "quant_log_step_words",
)


def _words(low: str) -> list[str]:
    return _NUMBER.sub(" 0 ", low).translate(_SPACES).split()


def _terms_of(words: list[str]) -> list[str]:
    return words + list(map(" ".join, zip(words, words[1:])))


def terms(raw: str) -> list[str]:
    """The TF-IDF analyzer: unigrams and bigrams of the normalised words."""
    return _terms_of(_words(raw[:MAX_CHARS].lower()))


def featurize(raw: str) -> tuple[list[str], tuple[float, ...]]:
    """(terms, dense features) of one text, from one tokenisation."""
    cut = raw[:MAX_CHARS]
    low = cut.lower()
    words = _words(low)
    terms = _terms_of(words)
    return terms, _dense(raw, cut, low, words, terms)


def _cue_counts(terms: list[str], words: list[str]) -> dict[str, int]:
    """How many of each cue group's words and bigrams the text holds."""
    counts = dict.fromkeys(_CUE_NAMES, 0)
    get = _CUE_INDEX.get
    for names in [n for t in terms if (n := get(t)) is not None]:
        for name in names:
            counts[name] += 1
    if words:
        first = _FIRST_INDEX.get(words[0])
        if first is not None:
            counts[first] += 1
        if words[0] in _RELATIVE:  # a question opening with "who" bridges nothing
            counts["relative"] -= 1
        if " ".join(words[:3]) in _OPEN_START:
            counts["open_ended"] += 1
        if len(words) > 1 and f"{words[0]} {words[1]}" in _GENERATIVE_START:
            counts["generative"] += 1
    return counts


def _dense(raw: str, cut: str, low: str, words: list[str], terms: list[str]) -> tuple[float, ...]:
    log1p = math.log1p
    cues = _cue_counts(terms, words)
    numbers = words.count("0")
    questions = low.count("?")
    sentences = low.count(". ") + low.count("! ") + questions + (1 if low.rstrip().endswith((".", "!")) else 0)
    has_code = "```" in cut or "def " in cut or "();" in cut or "{" in cut or "c++" in low
    n_words = len(words) - numbers
    words_l, numbers_l, sentences_l, step_l = log1p(n_words), log1p(numbers), log1p(sentences), log1p(cues["step"])
    quant = 1.0 if numbers >= 2 else 0.0
    return (
        words_l,
        log1p(len(raw)),
        sentences_l,
        log1p(low.count("\n")),
        1.0 if has_code else 0.0,
        numbers_l,
        log1p(questions),
        log1p(cues["fan_out"]),
        log1p(max(0, cues["relative"] - cues["relative_is"])),
        step_l,
        log1p(sum(map(low.count, _OPERATORS)) + cues["math"]),
        1.0 if cues["generative"] else 0.0,
        1.0 if cues["open_ended"] else 0.0,
        1.0 if cues["reasoning"] else 0.0,
        1.0 if (has_code or cues["code"]) else 0.0,
        quant,
        quant * words_l,
        quant * numbers_l,
        quant * sentences_l,
        quant * step_l,
    )


def dense_features(texts) -> np.ndarray:
    """Dense features for a batch of raw texts (the pipeline's dense step)."""
    rows = [featurize(raw)[1] for raw in texts]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(DENSE_FEATURE_NAMES))
