"""The score of a conversation, not only of its last message.

A short follow-up ("and why?", "now do it for 2023") says little by itself;
what it needs is what the conversation needed. So the score a request is
routed on is carried along the user turns, oldest first:

    score(turn i) = (1 - w_i) * own score(turn i) + w_i * score(turn i - 1)

where w_i in [0, 1] is how much turn i reads as a follow-up of what came
before (`follow_up_weight`). A follow-up of a hard question inherits its
weight, and so does a follow-up of an easy one (it stays cheap, though
"and why?" alone scores high); a new, self-contained question in a long
chat keeps its own score.

The weight is a logistic function of a few cues, set by hand, not fitted
(benchmarks/data/followups.jsonl is the set they are measured on, with
`python -m benchmarks.followups`):

- an opening that continues ("and", "but", "now", "what if", "why", ...);
- words that point back (it, that, those, again, instead, the answer, ...);
- content words that appear nowhere earlier in the conversation: a new
  question brings its own subject, a follow-up borrows the old one;
- a marker of a new topic ("unrelated", "by the way", "different
  question") ends the inheritance.

Pure (no grpc, no vllm); the classifier is passed in as the batch scorer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from ..types import ChatMessage

Scorer = Callable[[list[str]], Sequence[float]]

OPENERS = ("and", "but", "so", "then", "also", "now", "ok", "okay", "why", "what if", "what about", "how about", "and if",
           "is that", "are you sure", "can you", "could you", "please", "same", "instead", "again", "shorter", "longer",
           "simpler", "explain", "elaborate", "continue", "go on", "more", "rewrite", "show", "another")
POINTERS = frozenset("it its that this those these they them their above previous again instead same answer step steps "
                     "part one ones".split())
NEW_TOPIC = ("unrelated", "by the way", "btw", "different question", "another question", "new question", "separately",
             "on another note", "change of topic", "switching topics")
# Words that carry no subject of their own (plus the cue words above).
STOP = frozenset("a an the of to in on at for with by from as is are was were be been being do does did done doing have has "
                 "had i you he she we me my your our his her what which who whom whose when where why how not no yes or if "
                 "than thanks thank please can could would should will shall may might must just very much many some any all "
                 "each every other give tell let make get got like want need about into over under more most less least "
                 "detail details example examples".split()) | POINTERS | {w for o in OPENERS for w in o.split()}
# The logistic's weights (hand-set): bias, opener, pointers (each, at most 2), new content words (each).
BIAS, W_OPENER, W_POINTER, W_NEW_WORD = 1.0, 1.5, 1.0, 1.5
WORD = re.compile(r"[a-z0-9$%']+")


def _words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def follow_up_weight(message: str, earlier: Sequence[str]) -> float:
    """How much `message` reads as a follow-up of the `earlier` texts of
    the conversation (user and assistant turns): 0 a new question, near 1
    a follow-up."""
    if not earlier:
        return 0.0
    return _weight(message, {w for t in earlier for w in _words(t)})


def _weight(message: str, seen: set[str]) -> float:
    """follow_up_weight against the words the conversation has had (`seen`)."""
    text = " ".join(_words(message))
    if any(marker in text for marker in NEW_TOPIC):
        return 0.0
    words = text.split()
    opener = any(text == o or text.startswith(o + " ") for o in OPENERS)
    pointers = min(2, sum(w in POINTERS for w in words))
    new_words = sum(1 for w in set(words) if w not in STOP and w not in seen)
    z = BIAS + W_OPENER * opener + W_POINTER * pointers - W_NEW_WORD * new_words
    return 1.0 / (1.0 + math.exp(-z))


def conversation_score(messages: Sequence[ChatMessage], score: Scorer, turns: int) -> float:
    """The score of the conversation's last user turn, carried along its
    last `turns` user turns (1: the last message alone). One batch call to
    the scorer."""
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        return float(score([messages[-1].content if messages else ""])[0])
    users = users[-max(1, turns):]
    own = [float(s) for s in score([messages[i].content for i in users])]
    carried = own[0]
    seen: set[str] = set()  # the words of the user and assistant turns before users[k]: each message read once
    read = 0
    for k in range(1, len(users)):
        for m in messages[read:users[k]]:
            if m.role in ("user", "assistant"):
                seen.update(_words(m.content))
        read = users[k]
        w = _weight(messages[users[k]].content, seen)
        carried = (1.0 - w) * own[k] + w * carried
    return carried
