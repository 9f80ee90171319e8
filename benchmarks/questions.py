"""Generated questions for routing tests and benchmarks: simple ones (one
fact, short) and complex ones (multi-step word problems, comparisons, code
with a proof), varied in words, numbers and length so that their scores
spread out instead of tying in blocks. Written for Triage; no data set's rows.
"""

from __future__ import annotations

import random

COUNTRIES = ["France", "Peru", "Japan", "Kenya", "Norway", "Chile", "Egypt", "Canada", "Vietnam", "Poland", "Ghana", "Nepal",
             "Brazil", "Spain", "India", "Mexico", "Iceland", "Morocco", "Italy", "Greece", "Turkey", "Sweden", "Cuba", "Laos"]
THINGS = ["a cat", "the moon", "a violin", "rain", "a bicycle", "coffee", "a glacier", "the Nile", "a tulip", "copper",
          "a whale", "bread", "a comet", "snow", "a lemon", "silk", "a volcano", "jazz", "a penguin", "salt"]
ASKS = ["What is the capital of {c}?", "What colour is {t}?", "Who is the president of {c}?", "What language is spoken in {c}?",
        "Name one animal that lives in {c}.", "Is {t} heavier than {t2}?", "what is {n} plus {m}", "How do you spell {t}?",
        "Where is {c}?", "hi! is {t} bigger than {t2}?", "What currency does {c} use?", "Define {t}."]
STEPS = [
    "A shop sells {n} apples on Monday and {m} more on Tuesday than on Monday.",
    "On Wednesday it sells half as many as on Tuesday, and each apple costs ${k}.",
    "It pays ${m} in rent and spends a third of what is left on wages.",
    "A train leaves at {k}:00 at {n} km/h and a second one follows {m} hours later at {n2} km/h.",
    "The tank holds {n} litres, loses {k} litres an hour and is refilled with {m} litres every {k2} hours.",
    "Each of the {n} workers packs {m} boxes a day, but on Fridays only {k} of them come in.",
]
TASKS = [
    "How much money does the shop have left at the end of the week?",
    "How far from the station does the second train catch up, and at what time?",
    "Explain, step by step, when the tank first runs dry.",
    "Compare the economies of {c} and {c2}: explain the differences in trade, industry and education, with examples.",
    "Write a Python function that returns the longest increasing subsequence of a list, and prove it correct.",
]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(c=rng.choice(COUNTRIES), c2=rng.choice(COUNTRIES), t=rng.choice(THINGS), t2=rng.choice(THINGS),
                           n=rng.randint(3, 90), n2=rng.randint(3, 90), m=rng.randint(3, 90), k=rng.randint(2, 12), k2=rng.randint(2, 12))


def simple_question(rng: random.Random) -> str:
    return _fill(rng.choice(ASKS), rng)


def complex_question(rng: random.Random) -> str:
    """One to four steps of a word problem, then what to find or do: varied
    in length and words, so the scores do not tie in blocks."""
    steps = rng.sample(STEPS, rng.randint(1, 4))
    return " ".join(_fill(s, rng) for s in [*steps, rng.choice(TASKS)])


def mix(n: int, complex_share: float, rng: random.Random) -> list[str]:
    return [complex_question(rng) if rng.random() < complex_share else simple_question(rng) for _ in range(n)]
