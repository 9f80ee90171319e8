"""Public question sources beyond shared/data/questions, each pinned to a
repository, commit and sha256, with its license and the rule that labels it.

None of these rows is in this repository (some are share-alike). Training
reads each file, byte for byte as it is at its pinned commit, from the
shared sources folder (`shared/data/sources/` beside the checkout, or the
folder `$TRIAGE_SOURCES` names) and refuses a file whose sha256 differs
from the one pinned here, so what an artifact was trained on cannot drift.

Kinds the shared data lacks, and what each source brings:
- short questions that need several facts found and combined (multi-hop):
  HotpotQA's bridge and comparison questions; StrategyQA's implicit
  multi-step questions ("Could a llama birth twice during War in Vietnam?");
- short questions that aggregate or compare several facts ("how many more
  passengers flew to X than to Y", "which is deeper, X or Y"):
  WikiTableQuestions, lowercase like NQ's search queries, so case and
  punctuation cannot tell the kinds apart;
- programming tasks phrased in one sentence ("Write a function to ..."):
  MBPP, so "short" stops meaning "simple" for code.

Each source is split 80/20 into train/test by a hash of the text, so the
split is stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("triage.classifier")

SOURCES_ENV = "TRIAGE_SOURCES"


def sources_folder() -> Path:
    """$TRIAGE_SOURCES, else shared/data/sources beside the checkout (data.shared_file)."""
    from .data import shared_file

    return shared_file("shared/data/sources/README.md", SOURCES_ENV, folder=True)


class SourceError(ValueError):
    """A pinned source file is missing or is not the pinned bytes."""


@dataclass(frozen=True)
class Source:
    name: str
    repo: str  # owner/name on GitHub
    commit: str
    path: str  # in the repository at `commit`
    file: str  # its name in the shared sources folder
    sha256: str
    license: str
    origin: str  # where the data set itself comes from
    rule: str  # how its rows are labelled
    parse: Callable[[bytes], list[str]]
    label: str = "complex"
    max_rows: int | None = None  # a fixed sample (by a hash of the text), when the source is noisy


def _strategyqa(raw: bytes) -> list[str]:
    return [e["input"] for e in json.loads(raw)["examples"]]


def _hotpotqa(raw: bytes) -> list[str]:
    return [json.loads(line)["question_text"] for line in raw.decode().splitlines() if line.strip()]


def _wikitablequestions(raw: bytes) -> list[str]:
    lines = raw.decode("utf-8").splitlines()[1:]  # id, utterance, context, targetValue
    return [line.split("\t")[1] for line in lines if line.count("\t") >= 3]


def _mbpp(raw: bytes) -> list[str]:
    return [row["prompt"] for row in json.loads(raw)]


SOURCES = (
    Source(
        name="strategyqa",
        repo="kojima-takeshi188/zero_shot_cot",
        commit="5ef330fcdeec0cd26aee27943504f91f8ec1c33c",
        path="dataset/StrategyQA/task.json",
        file="strategyqa_task.json",
        sha256="60af9081fed20102fd8bb1e02dc7d9f12238efcba33e4c1a56b4d61cb6409803",
        license="MIT (StrategyQA, Geva et al. 2021; this copy is BIG-bench's task file)",
        origin="allenai StrategyQA via BIG-bench `strategyqa` task",
        rule="every question needs an implicit chain of facts (the data set's own premise) -> complex",
        parse=_strategyqa,
    ),
    Source(
        name="hotpotqa",
        repo="xindili-cmu/anlp-project-multihop",
        commit="df0d5757f42f098ab6026f40323e91c369307506",
        path="processed_data/hotpotqa/dev_subsampled.jsonl",
        file="hotpotqa_dev_subsampled.jsonl",
        sha256="837a919903fedf521211c4271f168ad5458488198e9c4d967bf5f3a579525ce8",
        license="CC BY-SA 4.0 (HotpotQA, Yang et al. 2018): share-alike, rows kept out of the repository",
        origin="HotpotQA distractor dev, the 500-question subsample of IRCoT (Trivedi et al. 2023)",
        rule="every question needs two Wikipedia paragraphs (bridge or comparison) -> complex",
        parse=_hotpotqa,
    ),
    Source(
        name="wikitablequestions",
        repo="ppasupat/WikiTableQuestions",
        commit="7d455a5a707b96341ef72aff9428749d443d8aa9",
        path="data/training.tsv",
        file="wikitablequestions_training.tsv",
        sha256="38ed908ab897d1df37852d2c96a2c6c9e0a0c4fa9306cbef912965ef7670b9d0",
        license="CC BY-SA 4.0 (WikiTableQuestions, Pasupat & Liang 2015): share-alike, rows kept out of the repository",
        origin="WikiTableQuestions training set",
        rule=(
            "workers were prompted to write each question around an operation over several rows of a table "
            "(comparison, superlative, count, sum, difference) -> complex"
        ),
        parse=_wikitablequestions,
        # Some of its questions are single-row lookups ("what was the first
        # venue for the asian games?"): label noise. With all 14k rows, NQ's
        # one-hop search queries fell from 0.94 to 0.77 accuracy; 800 rows
        # teach aggregation and comparison without that (MODEL_CARD.md).
        max_rows=800,
    ),
    Source(
        name="mbpp",
        repo="mrigankpawagi/PropertyEval",
        commit="b2be813dcff867cc350c61b8d3ea57ec088ce1ac",
        path="sanitized-mbpp.json",
        file="mbpp_sanitized.json",
        sha256="8ac32b2799150228e2d745aed09c870b7e4444246d4727d1004576207ef40769",
        license="CC BY 4.0 (MBPP, Austin et al. 2021)",
        origin="google-research MBPP, the 427-task sanitized split",
        rule="a programming task -> complex",
        parse=_mbpp,
    ),
)


def split_of(text: str, test_share: float = 0.2) -> str:
    digest = hashlib.sha256(text.strip().lower().encode("utf-8")).digest()
    return "test" if digest[0] < 256 * test_share else "train"


def read_source(source: Source, folder: Path | None = None) -> bytes:
    """The source's file from the shared sources folder, checked against its
    pinned sha256."""
    path = (folder or sources_folder()) / source.file
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"source {source.name}: cannot read {path} ({exc.strerror}); set ${SOURCES_ENV} to the folder "
                          f"holding {source.file}, or train with --no-extra") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != source.sha256:
        raise SourceError(f"source {source.name}: {path} has sha256 {digest}, not the pinned {source.sha256} "
                          f"({source.repo}@{source.commit[:12]}:{source.path})")
    return raw


def load_sources(folder: Path | None = None) -> tuple[list[dict], dict[str, dict]]:
    """Rows of every source, and per source what was used, for the metadata
    and the model card. Raises SourceError when a file is missing or altered."""
    rows: list[dict] = []
    used: dict[str, dict] = {}
    for source in SOURCES:
        raw = read_source(source, folder)
        texts = list(dict.fromkeys(t.strip() for t in source.parse(raw) if t and t.strip()))
        if source.max_rows is not None:
            # A sample independent of the train/test split (another hash).
            texts = sorted(texts, key=lambda t: hashlib.sha256(b"sample:" + t.encode("utf-8")).digest())[: source.max_rows]
        rows += [{"text": t, "label": source.label, "source": source.name, "split": split_of(t)} for t in texts]
        used[source.name] = {"repo": source.repo, "commit": source.commit, "path": source.path, "license": source.license,
                             "origin": source.origin, "rule": source.rule, "rows": len(texts), "sha256": source.sha256}
    return rows, used
