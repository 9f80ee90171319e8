"""Public question sources beyond shared/data/questions, each pinned to a
repository and commit, with its license and the rule that labels it.

None of these rows is in this repository (some are share-alike). They are
read at training time from local git snapshots of the pinned repositories:
`$TRIAGE_SOURCES` (default `/work/.mirror`, where the workplace's `fetch`
puts them) holds one `<owner>+<name>/repo` git directory per repository, and
each file is read with `git show <commit>:<path>`, so a newer snapshot of the
repository cannot change what a given artifact was trained on. A source
whose snapshot is missing is skipped and the training log and the model card
say so.

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
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("triage.classifier")

DEFAULT_MIRROR = Path("/work/.mirror")


def mirror_root() -> Path:
    return Path(os.environ.get("TRIAGE_SOURCES", DEFAULT_MIRROR))


@dataclass(frozen=True)
class Source:
    name: str
    repo: str  # owner/name on GitHub
    commit: str
    path: str
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
        license="CC BY 4.0 (MBPP, Austin et al. 2021)",
        origin="google-research MBPP, the 427-task sanitized split",
        rule="a programming task -> complex",
        parse=_mbpp,
    ),
)


def split_of(text: str, test_share: float = 0.2) -> str:
    digest = hashlib.sha256(text.strip().lower().encode("utf-8")).digest()
    return "test" if digest[0] < 256 * test_share else "train"


def read_pinned(repo: str, commit: str, path: str, root: Path | None = None) -> bytes | None:
    """`path` as it is at `commit` in the local snapshot of `repo`, or None
    when there is no snapshot (or no such file at that commit)."""
    git_dir = (root or mirror_root()) / repo.replace("/", "+") / "repo"
    if (git_dir / ".git").is_dir():  # a snapshot with a work tree
        git_dir = git_dir / ".git"
    if not git_dir.is_dir():
        return None
    out = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{commit}:{path}"], capture_output=True)
    if out.returncode != 0:
        log.warning("%s@%s:%s: %s", repo, commit[:12], path, out.stderr.decode(errors="replace").strip())
        return None
    return out.stdout


def read_source(source: Source, root: Path | None = None) -> bytes | None:
    return read_pinned(source.repo, source.commit, source.path, root)


def load_sources(root: Path | None = None) -> tuple[list[dict], dict[str, dict]]:
    """Rows of every available source, and per source what was used (or
    that it was missing), for the metadata and the model card."""
    rows: list[dict] = []
    used: dict[str, dict] = {}
    for source in SOURCES:
        raw = read_source(source, root)
        info = {"repo": source.repo, "commit": source.commit, "path": source.path, "license": source.license, "origin": source.origin, "rule": source.rule}
        if raw is None:
            log.warning("source %s skipped: no snapshot of %s at %s under %s", source.name, source.repo, source.commit[:12], root or mirror_root())
            used[source.name] = {**info, "rows": 0, "sha256": None}
            continue
        texts = list(dict.fromkeys(t.strip() for t in source.parse(raw) if t and t.strip()))
        if source.max_rows is not None:
            # A sample independent of the train/test split (another hash).
            texts = sorted(texts, key=lambda t: hashlib.sha256(b"sample:" + t.encode("utf-8")).digest())[: source.max_rows]
        rows += [{"text": t, "label": source.label, "source": source.name, "split": split_of(t)} for t in texts]
        used[source.name] = {**info, "rows": len(texts), "sha256": hashlib.sha256(raw).hexdigest()}
    return rows, used
