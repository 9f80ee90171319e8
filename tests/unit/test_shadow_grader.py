"""The default shadow grader (server/routing/shadow.py): final answers first, then similarity."""

from __future__ import annotations

import numpy as np
import pytest

from server.routing.shadow import FinalAnswerGrader, final_answer


@pytest.mark.parametrize("text, found", [
    ("12 pens cost $8; the change is $28.50.", ("number", "28.50")),
    ("The total is 1,250 clips.", ("number", "1250")),
    ("I think the answer is (C) because...", ("choice", "C")),
    ("Here:\n```python\ndef f(x):\n    return x\n```\nDone, in 2 lines.", ("code", "def f(x): return x")),
    ("Paris is the capital of France.", None),
])
def test_final_answers_are_found(text, found):
    assert final_answer(text) == found


class Embedder:
    """Two fixed directions: texts mentioning Paris point one way, others the other."""

    def embed(self, texts):
        return np.array([[1.0, 0.0] if "Paris" in t else [0.0, 1.0] for t in texts])


def test_the_grader_compares_final_answers_else_embeddings():
    g = FinalAnswerGrader(Embedder(), similarity=0.85)
    assert g.agree("q", "So she gets $28.50 back.", "The change is 28.50.")
    assert not g.agree("q", "So she gets $28.50 back.", "The change is 31.50.")
    assert g.agree("q", "Paris.", "It is Paris, on the Seine.")
    assert not g.agree("q", "Paris.", "Lyon.")
    jaccard = FinalAnswerGrader(None, similarity=0.5)
    assert jaccard.agree("q", "the sky is blue", "the sky is blue today") and not jaccard.agree("q", "yes", "no")
