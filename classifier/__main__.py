"""Command line for the complexity classifier.

    python -m classifier train [--data PATH] [--out DIR] [--no-extra] [--no-cross-source] [--set KEY=JSON ...]
    python -m classifier evaluate [--data PATH] [--threshold T] [--no-extra] [--cross-source] [--against REV]
    python -m classifier [--model DIR] score < prompts.jsonl > scores.jsonl
    python -m classifier calibrate --target-large-share 0.3 --sample prompts.jsonl
    python -m classifier calibrate --feedback STORE [--max-failure 0.2] [--dry-run]
    python -m classifier [--model PRIOR] adapt --feedback STORE --out DIR [--cheap-tier small] [--min-rows 200]
    python -m classifier [--model DIR] bench [--against REV | --beside DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .data import DEFAULT_DATA
from .model import ARTIFACT_DIR


def _texts_from_jsonl(stream, name: str):
    """Yield (line number, text) for each non-blank line; raise ValueError
    naming the line on the first malformed one."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}:{number}: malformed JSON ({exc.msg})") from None
        text = obj.get("text", obj.get("prompt")) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"{name}:{number}: expected an object with a string 'text' or 'prompt' field")
        yield number, text


def cmd_train(args) -> int:
    from .evaluate import format_report
    from .model_card import write_model_card
    from .sources import SourceError
    from .train import train

    set_hyperparameters(args.set)
    try:
        metadata = train(args.data, args.out, extra=not args.no_extra, with_cross_source=not args.no_cross_source)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(metadata["evaluation"]))
    write_model_card(args.out)
    return 0


def set_hyperparameters(assignments: list[str]) -> None:
    """`KEY=JSON` each: a training hyperparameter replaced for this run, so
    a trade named in train.py's comments can be measured again (it is
    recorded in the artifact's metadata like the rest)."""
    from .train import HYPERPARAMETERS

    for assignment in assignments:
        key, _, value = assignment.partition("=")
        if key not in HYPERPARAMETERS:
            raise SystemExit(f"--set: no hyperparameter {key!r}; there are {sorted(HYPERPARAMETERS)}")
        HYPERPARAMETERS[key] = json.loads(value)


def cmd_adapt(args) -> int:
    """Fit an adapter from a router's feedback store (classifier/adapter.py)
    and write prior + adapter to --out; refuse, writing nothing and exiting
    1 with the figures, when it does not rank the newest quarter better."""
    from . import load
    from .adapter import fit_and_gate, read_store
    from .model import write_adapted

    current = load(args.model)
    prior = getattr(current, "prior", current)  # an adapted artifact is refitted from its prior
    try:
        outcomes = read_store(args.feedback, args.cheap_tier, args.good_rating)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    adapter, report = fit_and_gate(prior, outcomes, args.min_rows)
    report = {"store": str(args.feedback), "cheap_tier": args.cheap_tier, **report, "seconds": round(time.monotonic() - started, 2)}
    if adapter is not None:
        write_adapted(prior, args.model, adapter, report, args.out)
        report["written"] = str(args.out)
    print(json.dumps(report, indent=2))
    if adapter is None:
        print(f"refused: {report['refused_because']}", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args) -> int:
    from . import load
    from .data import load_rows
    from .evaluate import format_report
    from .shapes import shape_rows
    from .sources import load_sources
    from .train import full_evaluation

    clf = load(args.model)
    if args.threshold is not None:
        clf.threshold = args.threshold
    rows = load_rows(args.data, [] if args.no_extra else load_sources()[0])
    rows += shape_rows(rows)
    against = (args.against, lambda texts: scores_at(args.against, texts)) if args.against else None
    report = full_evaluation(clf, rows, args.data, with_cross_source=args.cross_source, against=against)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_score(args) -> int:
    from . import load

    clf = load(args.model)
    out = sys.stdout
    batch: list[str] = []

    def flush() -> None:
        for text, p in zip(batch, clf.score(batch)):
            out.write(json.dumps({"p_complex": round(float(p), 6), "label": clf.label(float(p), args.threshold)}) + "\n")
        out.flush()
        batch.clear()

    try:
        for _, text in _texts_from_jsonl(sys.stdin, "stdin"):
            batch.append(text)
            if len(batch) >= 256:
                flush()
    except ValueError as exc:
        flush()  # everything before the bad line is written first
        print(f"error: {exc}", file=sys.stderr)
        return 1
    flush()
    return 0


def cmd_calibrate(args) -> int:
    from . import load
    from .calibrate import threshold_for_share, write_threshold

    clf = load(args.model)
    folder = Path(args.model) if args.model else ARTIFACT_DIR
    if args.feedback:
        return calibrate_with_feedback(args, clf, folder)
    if args.target_large_share is None or args.sample is None:
        print("error: give --target-large-share and --sample, or --feedback STORE", file=sys.stderr)
        return 2
    try:
        with open(args.sample, encoding="utf-8") as f:
            texts = [t for _, t in _texts_from_jsonl(f, args.sample)]
        scores = clf.score(texts)
        threshold = threshold_for_share(scores, args.target_large_share)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    realised = float((scores >= threshold).mean())
    if not args.dry_run:
        write_threshold(threshold, args.target_large_share, args.sample, len(texts), realised, folder)
    print(json.dumps({"threshold": threshold, "target_large_share": args.target_large_share, "realised_large_share": realised, "n": len(texts), "written": not args.dry_run}))
    return 0


def calibrate_with_feedback(args, clf, folder: Path) -> int:
    """Move the threshold to where the cheap tier's reported failures say
    it should be (classifier/feedback.py), checked on the newest outcomes."""
    from .calibrate import write_metadata_threshold
    from .feedback import calibrate, read_outcomes

    try:
        report = calibrate(read_outcomes(args.feedback, args.good_rating), args.cheap_tier, clf.threshold, args.max_failure)
    except ValueError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    report["written"] = report["accepted"] and not args.dry_run
    if report["written"]:
        write_metadata_threshold(folder, report["new_cut"], (
            f"calibrated from {report['cheap_outcomes_fitted']} outcomes of tier {args.cheap_tier}'s answers in "
            f"{Path(args.feedback).name}: {report['why']}; held out: its failure rate {report['held_out']['new']['cheap_failure_rate']:.3f} "
            f"below the cut (was {report['held_out']['current']['cheap_failure_rate']:.3f} at {report['current_cut']:.3f})"))
    print(json.dumps(report, indent=2))
    if not report["accepted"]:
        print(f"refused: {report['refused_because']}", file=sys.stderr)
        return 1
    return 0


BENCH_TEXTS = [
    "What is the capital of France?",
    "who sang love is all around",
    "How can I improve my time management skills?",
    "Write a short poem about the sea at night.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
    "Explain the difference between TCP and UDP and when to use each.",
    "hi",
    "Implement a function in Python that merges two sorted lists.",
]


def cmd_bench(args) -> int:
    from . import load

    if args.against or args.beside:
        return bench_against(args)
    clf = load(args.model)
    texts = BENCH_TEXTS * (args.n // len(BENCH_TEXTS) + 1)
    for t in texts[:200]:  # warm caches and regexes
        clf.score([t])
    single = np.empty(args.n)
    for i in range(args.n):
        started = time.perf_counter()
        clf.score([texts[i]])
        single[i] = time.perf_counter() - started
    batch = (BENCH_TEXTS * 125)[:1000]
    batch_times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        clf.score(batch)
        batch_times.append(time.perf_counter() - started)
    result = {
        "single_p50_ms": float(np.percentile(single, 50) * 1e3),
        "single_p99_ms": float(np.percentile(single, 99) * 1e3),
        "single_n": args.n,
        # This machine is noisy: the median says what to expect, the best of
        # the repeats (as timeit reports) what the code costs when undisturbed.
        "batch_1000_median_ms": float(np.median(batch_times) * 1e3),
        "batch_1000_best_ms": float(np.min(batch_times) * 1e3),
        "batch_repeats": args.repeats,
        "batch_throughput_per_s": float(1000 / np.median(batch_times)),
    }
    print(json.dumps(result, indent=2))
    return 0


REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def revision(rev: str):
    """A folder holding `classifier/` (code and artifact) as it is at git
    revision `rev`, for side-by-side runs; removed afterwards."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "classifier"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        yield tree


def scores_at(rev: str, texts: list[str]) -> np.ndarray:
    """p_complex of each text by the classifier of revision `rev`, through
    its own `score` command (its features may differ from this code's)."""
    import subprocess

    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    with revision(rev) as tree:
        out = subprocess.run([sys.executable, "-m", "classifier", "score"], cwd=tree, input=lines, capture_output=True, text=True, check=True)
    return np.array([json.loads(line)["p_complex"] for line in out.stdout.splitlines()], dtype=np.float64)


def bench_against(args) -> int:
    """This artifact and code beside the classifier of another revision
    (its own code and artifact, from `git archive`; `--against REV`) or
    beside another artifact folder with this code (`--beside DIR`, e.g. the
    prior beside prior + adapter), in alternating processes of one run, so a
    noisy machine moves both alike; prints each side's medians and the
    ratios new/old."""
    import subprocess

    own = [sys.executable, "-m", "classifier", *(["--model", args.model] if args.model else []), "bench", "-n", str(args.n), "--repeats", str(args.repeats)]
    other = [sys.executable, "-m", "classifier", *(["--model", args.beside] if args.beside else []), "bench", "-n", str(args.n),
             "--repeats", str(args.repeats)]
    keys = ("single_p50_ms", "batch_1000_median_ms")
    runs: dict[str, list[dict]] = {"new": [], "old": []}
    with (revision(args.against) if args.against else contextlib.nullcontext(str(REPO))) as old_tree:
        for _ in range(args.rounds):
            for side, cmd, cwd in (("old", other, old_tree), ("new", own, str(REPO))):
                out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=True)
                runs[side].append(json.loads(out.stdout))
    report = {side: {k: float(np.median([r[k] for r in rs])) for k in keys} for side, rs in runs.items()}
    report["ratio_new_over_old"] = {k: report["new"][k] / report["old"][k] for k in keys}
    report.update(against=args.against or args.beside, rounds=args.rounds)
    print(json.dumps(report, indent=2))
    return 0


def _feedback_options(p) -> None:
    p.add_argument("--cheap-tier", default="small", help="the cheapest tier, whose outcomes are read (default small)")
    p.add_argument("--good-rating", type=int, default=4, help="a rating at or above this is a good answer (default 4)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classifier", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="artifact folder (default: the committed one)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train and write the artifact, metadata and model card")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(ARTIFACT_DIR))
    p.add_argument("--no-extra", action="store_true", help="only shared/data/questions, not the pinned public sources (sources.py)")
    p.add_argument("--no-cross-source", action="store_true", help="skip the leave-one-source-out check (one fit per source)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="replace a hyperparameter of train.py for this run, e.g. C=1.0 (repeatable)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "evaluate", help="accuracy per held-out source, ranking by gain, GSM8K steps and outcomes, each next to prompt length"
    )
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--no-extra", action="store_true", help="only shared/data/questions, not the pinned public sources")
    p.add_argument("--cross-source", action="store_true", help="also train without each source in turn and score it (several minutes)")
    p.add_argument("--against", metavar="REV", help="also the gain ranking of this git revision's classifier, on the same held-out rows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("score", help="JSON lines with text/prompt on stdin -> p_complex and label")
    p.add_argument("--threshold", type=float, default=None)
    p.set_defaults(func=cmd_score)
    p = sub.add_parser("calibrate", help="threshold that sends a target share of a sample to the large tier, or that feedback supports")
    p.add_argument("--target-large-share", type=float)
    p.add_argument("--sample", help="JSON lines with text/prompt")
    p.add_argument("--feedback", metavar="STORE", help="instead: fit the threshold to the outcomes in a router's store (store.url, or an SQLite file's path)")
    p.add_argument("--max-failure", type=float, default=0.2,
                   help="with --feedback: the cheap tier's failure rate the cut may let through (default 0.2)")
    p.add_argument("--dry-run", action="store_true", help="print the threshold without writing it")
    _feedback_options(p)
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("adapt", help="fit this deployment's adapter from a router's feedback store; write prior + adapter if it ranks better")
    p.add_argument("--feedback", metavar="STORE", required=True, help="a router's store (store.url: sqlite:///path or postgresql://...; a bare path is an SQLite file)")
    p.add_argument("--out", required=True, help="the artifact folder to write (prior + adapter)")
    p.add_argument("--min-rows", type=int, default=200, help="fewest outcomes of the cheap tier with their text (default 200)")
    _feedback_options(p)
    p.set_defaults(func=cmd_adapt)
    p = sub.add_parser("bench", help="single-question latency and batch throughput, in process")
    p.add_argument("-n", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--against", metavar="REV", help="also the classifier of this git revision, alternating, with ratios")
    p.add_argument("--beside", metavar="DIR", help="also this artifact folder with this code, alternating, with ratios (old: DIR)")
    p.add_argument("--rounds", type=int, default=3, help="with --against or --beside: alternations of old and new")
    p.set_defaults(func=cmd_bench)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
