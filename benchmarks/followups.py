"""Conversation-aware scoring against last-message-only scoring, on the
labelled follow-up set (benchmarks/data/followups.jsonl):

    python -m benchmarks.followups [--turns 4] [--classifier PATH]

Each case is a conversation and the tier its last user message needs:
`large` for a follow-up of a hard question or a new hard question, `small`
for a new easy question (also in the middle of a hard chat) or a follow-up
of an easy one. Prints, for both scores, the share of cases placed on the
tier they need at the classifier's threshold, by kind and overall, and the
ROC AUC of the score against the label.

The set was written for this project by its developers (December 2026,
Apache-2.0 like the rest of the repository); no row comes from a benchmark.
The follow-up cues in server/routing/conversation.py were set by hand alongside
it, so this is a development set: it shows the behaviour, it is not a
held-out estimate.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from sklearn.metrics import roc_auc_score

import classifier
from server.routing.conversation import conversation_score
from server.types import ChatMessage

SET = Path(__file__).parent / "data/followups.jsonl"


def load_cases(path: Path = SET) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluate(cases: list[dict], score, threshold: float, turns: int) -> dict:
    results = {}
    for name, n in (("last message only", 1), (f"conversation ({turns} user turns)", turns)):
        scores = [conversation_score(tuple(ChatMessage(m["role"], m["content"]) for m in c["messages"]), score, n) for c in cases]
        right = defaultdict(list)
        for c, s in zip(cases, scores):
            ok = (s >= threshold) == (c["needs"] == "large")
            right[c["kind"]].append(ok)
            right["all"].append(ok)
        results[name] = {"placed_right": {k: sum(v) / len(v) for k, v in sorted(right.items())},
                         "auc": float(roc_auc_score([c["needs"] == "large" for c in cases], scores))}
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--classifier", default=None, help="an artifact (default: the committed one)")
    args = p.parse_args(argv)
    clf = classifier.load(args.classifier)
    cases = load_cases()
    results = evaluate(cases, clf.score, clf.threshold, args.turns)
    kinds = list(next(iter(results.values()))["placed_right"])
    print(f"{len(cases)} conversations, threshold {clf.threshold:.3f}; share placed on the tier they need:")
    print("| scoring | " + " | ".join(kinds) + " | ROC AUC |")
    print("|---|" + "---|" * (len(kinds) + 1))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r['placed_right'][k]:.2f}" for k in kinds) + f" | {r['auc']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
