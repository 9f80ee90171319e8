"""Outcome data for the ranking check: per question, whether a weaker answer
was right and whether a stronger one was.

The public source with such outcomes that is reachable here is the log of
Kojima et al. 2022 ("Large Language Models are Zero-Shot Reasoners",
repository kojima-takeshi188/zero_shot_cot, pinned below): the same GPT-3
model answered every question twice, directly (the weaker answer) and with
"Let's think step by step" (the stronger, more expensive one). A good
difficulty score sends the questions where only the stronger answer is right
to the stronger model first: that is what APGR measures.

These rows are used to *measure* only, never to train or tune (GSM8K's test
split is among them). The repository states no license of its own; the
questions are GSM8K (MIT), SVAMP (MIT), AQuA-RAT (Apache-2.0), and AddSub,
SingleEq and MultiArith (research data sets without a stated license).
"""

from __future__ import annotations

import re

from .sources import read_pinned

_LOGS = "kojima-takeshi188/zero_shot_cot"
_COMMIT = "5ef330fcdeec0cd26aee27943504f91f8ec1c33c"

# name -> (log stem, how answers compare)
OUTCOME_SETS = {
    # one kind of question, graded difficulty: grade-school maths
    "gsm8k_test_direct_vs_cot": (("gsm8k",), "number"),
    # arithmetic word problems of mixed depth: one-step (AddSub, SingleEq),
    # two-step (MultiArith), with distractors (SVAMP), multiple-choice
    # algebra (AQuA-RAT). The direct answer is as good as the step-by-step
    # one on the one-step sets and far worse on the multi-step ones.
    "arithmetic_mixed_direct_vs_cot": (("addsub", "singleeq", "multiarith", "svamp", "aqua"), "auto"),
}

_BLOCK = re.compile(r"^Q: (?P<q>.*?)\nA:.*?^pred_mode : (?P<pred>.*?)\nGT : (?P<gt>.*?)$", re.S | re.M)


def _same(pred: str, gt: str, kind: str) -> bool:
    pred, gt = pred.strip(), gt.strip()
    if kind == "number" or (kind == "auto" and not gt.isalpha()):
        try:
            return float(pred) == float(gt)
        except ValueError:
            return False
    return pred == gt


def _parse(log_text: str, kind: str) -> dict[str, bool]:
    return {m["q"].strip(): _same(m["pred"], m["gt"], kind) for m in _BLOCK.finditer(log_text)}


def _read(stem: str, method: str) -> str | None:
    raw = read_pinned(_LOGS, _COMMIT, f"log/{stem}_{method}.log")
    return None if raw is None else raw.decode("utf-8", errors="replace")


def load_outcomes() -> dict[str, list[dict]]:
    """{set name: [{text, weak, strong}]} for every set whose logs are
    available; {} without the snapshot."""
    out: dict[str, list[dict]] = {}
    for name, (stems, kind) in OUTCOME_SETS.items():
        rows = []
        for stem in stems:
            direct, cot = _read(stem, "zero_shot"), _read(stem, "zero_shot_cot")
            if direct is None or cot is None:
                rows = []
                break
            weak, strong = _parse(direct, kind), _parse(cot, kind)
            rows += [{"text": q, "weak": float(weak[q]), "strong": float(strong[q])} for q in weak if q in strong]
        if rows:
            out[name] = rows
    return out
