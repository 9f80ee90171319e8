"""Held-out kinds in the shapes users send, built from rows never trained on.

The sources' own held-out splits look like their training rows: a check on
them missed that a programming task given as a function signature with a
docstring to complete scored simple (measured on data the team never sees:
accuracy 0.02). Each shape here is built from rows the prior never fits:

- `code_stub` (complex): MBPP's held-out tasks rewritten as the signature of
  the reference solution with the task as its docstring, some with a usage
  example, as a completion prompt is written;
- `code_request` (complex): the same tasks as one-line requests, prefixed
  as a user in a chat would;
- `multi_part` (complex): two or three held-out TREC factoids asked in one
  message, numbered or joined;
- `chat` (simple): short chit-chat written by the team
  (classifier/heldout/chat.txt);
- `factoid_long_context` (simple): a held-out NQ query behind a line of
  polite framing, so length alone does not make a factoid complex.

Writing, multi-step maths and factoids are held out as their sources'
rows already are (dolly/gsm8k/trec test, mt_bench, vicuna_bench, nq_open).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from .sources import SOURCES, read_source, split_of

CHAT_FILE = Path(__file__).resolve().parent / "heldout" / "chat.txt"
_DEF = re.compile(r"^def (\w+\(.*?\))\s*(?:->\s*[^:]+)?:", re.M)


def _pick(text: str, salt: str, n: int) -> int:
    """A stable choice among n, by a hash of the text."""
    return hashlib.sha256(f"{salt}:{text}".encode()).digest()[0] % n


def code_rows() -> list[dict]:
    """MBPP's test-split tasks as stubs and as chat requests."""
    mbpp = next(s for s in SOURCES if s.name == "mbpp")
    rows = []
    for task in json.loads(read_source(mbpp)):
        prompt = task["prompt"].strip()
        signature = _DEF.search(task["code"])
        if split_of(prompt) != "test" or signature is None:
            continue
        example = task["test_list"][0].strip() if task["test_list"] else ""
        doc = prompt if not _pick(prompt, "example", 2) or not example else f"{prompt}\n\n    >>> {example.removeprefix('assert ')}"
        stub = f'def {signature.group(1)}:\n    """{doc}\n    """\n'
        if _pick(prompt, "import", 3) == 0:
            stub = "from typing import List\n\n\n" + stub
        rows.append({"text": stub, "label": "complex", "source": "code_stub"})
        lead = ("", "Can you help me? ", "Python: ", "Quick one: ")[_pick(prompt, "lead", 4)]
        rows.append({"text": lead + prompt, "label": "complex", "source": "code_request"})
    return rows


def multi_part_rows(rows: list[dict]) -> list[dict]:
    """Two or three held-out TREC factoids in one message."""
    factoids = [r["text"].strip().rstrip(" ?") + "?" for r in rows if r["source"] == "trec" and r["split"] == "test" and r["label"] == "simple"]
    out = []
    i = 0
    while i + 3 <= len(factoids):
        k = 2 + _pick(factoids[i], "parts", 2)
        parts = factoids[i:i + k]
        i += k
        style = _pick(parts[0], "style", 3)
        if style == 0:
            text = "\n".join(f"{n}. {q}" for n, q in enumerate(parts, 1))
        elif style == 1:
            text = "I have a few questions. " + " Also, ".join(parts)
        else:
            text = " And ".join(q[0].lower() + q[1:] if n else q for n, q in enumerate(parts))
        out.append({"text": text, "label": "complex", "source": "multi_part"})
    return out


def chat_rows() -> list[dict]:
    lines = CHAT_FILE.read_text(encoding="utf-8").splitlines()
    return [{"text": line.strip(), "label": "simple", "source": "chat"} for line in lines if line.strip() and not line.startswith("#")]


def framed_factoid_rows(rows: list[dict]) -> list[dict]:
    frames = ("Hi, I was wondering about something and hoped you could tell me quickly: {q}?",
              "My friend and I were arguing about this over dinner last night. {q}?",
              "Sorry to bother you with a trivia question, but {q}?")
    nq = [r["text"].strip() for r in rows if r["source"] == "nq_open"]
    return [{"text": frames[_pick(q, "frame", 3)].format(q=q), "label": "simple", "source": "factoid_long_context"} for q in nq[::4]]


# Training rows in two of these shapes, from TREC's *training* factoids and
# with other templates than the held-out ones above, so the check still
# sees phrasings the fit never did. Without them, the prior scored 0.44-0.60
# of the held-out multi-part messages complex (nothing in the kinds' sources
# asks several things at once) and 0.13-0.28 of the framed factoids simple
# (length and sentences read as work).
_TRAIN_JOINS = ("{a} {b}", "- {a}\n- {b}", "{a} Then, {b_low}", "Two things: {a} {b}")
_TRAIN_FRAMES = ("Hello! I have a quick question for you today, hope that's ok. {q}",
                 "This came up at work this morning and nobody knew the answer. {q}",
                 "Just curious, no need for a long answer: {q}")


def augmented_training_rows(rows: list[dict]) -> list[dict]:
    """Multi-part messages (complex) and framed factoids (simple) built from
    TREC's training factoids, source `shapes_train`, split train."""
    factoids = [r["text"].strip().rstrip(" ?") + "?" for r in rows if r["source"] == "trec" and r["split"] == "train" and r["label"] == "simple"]
    out = []
    for i in range(0, len(factoids) - 1, 2):
        a, b = factoids[i], factoids[i + 1]
        if _pick(a, "use", 3):  # a third of the pairs, so the shape does not outweigh the kinds
            continue
        join = _TRAIN_JOINS[_pick(a, "join", len(_TRAIN_JOINS))]
        out.append({"text": join.format(a=a, b=b, b_low=b[0].lower() + b[1:]), "label": "complex"})
        out.append({"text": _TRAIN_FRAMES[_pick(b, "frame", len(_TRAIN_FRAMES))].format(q=b), "label": "simple"})
    return [{**r, "source": "shapes_train", "split": "train", "target": 1.0 if r["label"] == "complex" else 0.0} for r in out]


def shape_rows(rows: list[dict]) -> list[dict]:
    """Every shape's rows, split `shape` (held out, never trained on).
    `rows`: the labelled rows (data.load_rows), for TREC and NQ."""
    built = [*code_rows(), *multi_part_rows(rows), *chat_rows(), *framed_factoid_rows(rows)]
    return [{**r, "split": "shape", "target": 1.0 if r["label"] == "complex" else 0.0} for r in built]
