"""MODEL_CARD.md, generated from metadata.json by `python -m classifier train`
so its numbers are always the artifact's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .data import steps_target
from .model import METADATA_FILE

FAILURE_MODES = """\
- **Labels follow the source, not the question.** Every TREC row is simple and
  every MBPP, HotpotQA or StrategyQA row complex; Dolly's labels come from its
  task categories, which are noisy (e.g. "Who was Henry Ford?" is labelled
  complex as `general_qa`). Dolly's own held-out accuracy is the honest
  measure of that noise.
- **A kind taught by one source only does not transfer.** The cross-source
  table shows it: trained without TREC, factoids are called complex; without
  the chit-chat source, chit-chat is. A new kind of traffic needs data of its
  kind, or a threshold calibrated on a sample of it.
- **Short multi-part lookups** ("What is the combined population of the three
  largest cities in Canada?") are taught by WikiTableQuestions, HotpotQA and
  StrategyQA and the `log_multi_part` / `log_bridges` counts; single-row
  lookups inside WikiTableQuestions are label noise, which is why it is
  capped at 800 rows. Expect misses on fan-out questions phrased unlike all
  three, and some one-hop search queries scored complex (NQ accuracy fell
  from 0.98 to the figure above).
- **Numbers.** Digits are collapsed to one token; the count of numbers is a
  graded feature (log), so a factoid with a year is not sent large for its
  digits, while a problem with eight quantities scores above one with two.
- **Non-English text** has no learned vocabulary: it is scored on length and
  shape alone and lands near the prior.
- **Multi-turn chats**: the router scores the last user message only.
- **Gain is learned from nine open models (7B-70B).** Some of their gain is
  format: two ChatQA models answer almost no multiple-choice question in
  the expected form, so short commonsense and science questions gain a lot
  in this data. The score learned it, and it costs one-hop search queries
  that look alike (NQ's accuracy above). A deployment whose weak tier
  follows formats well should calibrate the cut on its own traffic.
- **Where length still wins.** Within one benchmark the score ranks little
  better than chance (leave-one-benchmark-out above): what a question gains
  within a kind depends on the pair's own knowledge, which the text does
  not show. On benchmarks whose gain grows with the answer's length (GSM8K
  for these weak pairs, GPQA) prompt length ranks as well or better.
"""


def _bench(folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "classifier", "--model", str(folder), "bench", "-n", "3000"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def write_model_card(folder: str | Path) -> Path:
    folder = Path(folder)
    meta = json.loads((folder / METADATA_FILE).read_text())
    ev = meta["evaluation"]
    meta["latency"] = _bench(folder)
    (folder / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    rows = "\n".join(
        f"| {s} | {m['split']} | {m['n']} | {m['accuracy']:.3f} | {m['length_baseline']:.3f} | {m['brier']:.3f} |"
        for s, m in ev["per_source"].items()
    )
    rel = "\n".join(f"| {b['bin']} | {b['n']} | {b['mean_p']:.3f} | {b['frac_complex']:.3f} |" for b in ev["reliability_all_heldout"])
    counts = "\n".join(f"| {k} | {v} |" for k, v in meta["train_counts"].items())
    extra = "\n".join(
        f"| {name} | {info['rows']} | {info['origin']} | `{info['repo']}` @ `{info['commit'][:12]}` `{info['path']}` | {info['license']} | {info['rule']} |"
        for name, info in meta.get("extra_sources", {}).items()
    )
    fb = meta.get("feedback")
    feedback = (f"\nAlso trained on {fb['rows']} outcomes from a router's feedback store (`{fb['store']}`, "
                "`python -m classifier train --feedback`): the cheap tier's answers reported wrong as complex, right as simple. "
                "They are this deployment's own traffic; their license is the deployment's.\n") if fb else ""
    cross = ev.get("cross_source")
    cross_rows = "\n".join(
        f"| {s} | {m['n']} | {m['accuracy']:.3f} | {m['length_baseline']:.3f} |" for s, m in cross["per_source"].items()
    ) if cross else "| (not run) | | | |"
    steps = ev.get("steps_ranking") or {}
    outcome_rows = "\n".join(
        f"| {name} | {o['n']} | {o['weak_accuracy']:.3f} | {o['strong_accuracy']:.3f} | **{o['apgr']:.3f}** | {o['apgr_length']:.3f} |"
        for name, o in (ev.get("outcome_ranking") or {}).items()
    ) or "| (outcome logs not available when trained) | | | | | |"
    lat = meta["latency"]
    gain_section = _gain_section(meta, ev)
    text = f"""# Triage complexity classifier

Scores a question with `p_complex` in [0, 1]: how likely a stronger model is
to answer it right where a weaker one fails. It is learned from two kinds of
evidence: labelled kinds of question (chit-chat and factoids are simple,
multi-step work complex, graded by its amount of work) and records of which
of nine open models answered which question (the gain of moving up, not
the difficulty: questions every model fails gain nothing). Generated by
`python -m classifier train` (do not edit by hand).

## Data

`{meta['data_file']}` (sha256 `{meta['data_sha256'][:16]}…`), from
`shared/data/questions` (sources and licenses in its SOURCES.md: TREC, no
license stated; Dolly, CC BY-SA 3.0; GSM8K, MIT; Microsoft Personality Chat,
MIT; MT-Bench and Vicuna-bench, Apache-2.0; NQ-open/EfficientQA dev, CC BY-SA
3.0), with GSM8K's reference solutions (`gsm8k_solutions.jsonl`, MIT) for
the number of calculation steps of each problem. Ambiguous rows are left out.

Public sources added for kinds of question the shared data lacks, each read
at training time from a snapshot of the pinned repository and commit
(`classifier/sources.py`; `$TRIAGE_SOURCES` holds the snapshots). No row is
in this repository. 80% of each source trains, 20% is held out (by a hash of
the text).

| source | rows | data set | pinned at | license | labelling rule |
|---|---|---|---|---|---|
{extra}
{feedback}
{gain_section['data']}
Not used, for training or tuning: FanOutQA, Arena-Hard, HumanEval, the
WizardLM test set, NQ-open's dev set, EfficientQA's test set, MMLU's test
split, RouteLLM's evaluation data, RouterBench, RouterDC's own released data
and LLMRouter's test split (the acceptance sources). GSM8K's test split is
used to report only.

Training rows:

| source/label | rows |
|---|---|
{counts}

Rows are weighted 1/sqrt(rows in their source) so no single source's style
(GSM8K's word problems, TREC's factoids) defines "complex" or "simple", times
{', '.join(f'{k} ×{v:g}' for k, v in meta['hyperparameters'].get('source_multipliers', {}).items())} (why: `classifier/train.py`).

**Graded targets.** A GSM8K training problem is not labelled 1 but
sigmoid({meta['hyperparameters']['gsm8k_steps_target_logit'][0]} + {meta['hyperparameters']['gsm8k_steps_target_logit'][1]} × steps), steps being the
calculator annotations in its reference solution ({steps_target(1):.2f} for one step,
{steps_target(2):.2f} for two, {steps_target(4):.2f} for four); logistic regression is fitted to these soft targets (a
row appears as complex with weight q and as simple with weight 1 − q). So
among word problems the score follows the amount of work instead of sitting
at 1 for all. A ridge regression of log(steps) on the same features gives the
"work direction", offered to the logistic regression as one extra feature
(cross-fitted on GSM8K's training rows) and folded back into its weights, so
the persisted model is still one linear layer.

## Features and model

- binary word TF-IDF, 1-2 grams, on normalised text: lowercase, no
  punctuation, every number one word, currency one word (these cues identify
  a *source*, not a kind of question: NQ is lowercase without `?`, GSM8K is
  full of `$`); words and every dense count come from one tokenisation;
- dense, standardised, every count log1p'd and never capped: {', '.join(f'`{f}`' for f in meta['features'][1:])};
- logistic regression (C={meta['hyperparameters']['C']}, word block weighted {meta['hyperparameters']['word_weight']}
  so the dense features, which generalise across sources, are penalised less;
  seed {meta['seed']}), persisted with skops
  (`model.skops`; the only non-library references are the two functions in
  `classifier/features.py`, checked at load time).

Input is cut to 4,000 characters before featurising, so a 1 MB prompt costs
what a 4 kB prompt costs.

## Accuracy on held-out rows (threshold {ev['threshold']:.3f})

`python -m classifier evaluate`

| source | split | n | accuracy | length baseline (>20 words) | Brier |
|---|---|---|---|---|---|
{rows}

- dev_cross macro accuracy (NQ-open, MT-Bench, Vicuna-bench; never trained on): **{ev['dev_cross_macro_accuracy']:.3f}**
- macro accuracy over all held-out sources: **{ev['all_sources_macro_accuracy']:.3f}**

## Cross-source check (trained without the source, scored on all its rows)

`python -m classifier evaluate --cross-source`. The harshest test here: when
a source is the only one of its kind (TREC's factoids, the chit-chat), the
model trained without it has never seen that kind.

| left out | n | accuracy | length baseline |
|---|---|---|---|
{cross_rows}

{f"Macro {cross['macro_accuracy']:.3f} (length baseline {cross['macro_length_baseline']:.3f})." if cross else ""}

{gain_section['ranking']}
## Ranking within a kind (what routing by a share of traffic needs)

- **GSM8K test** (n={steps.get('n', 0)}; never trained on): Spearman between `p_complex`
  and the reference solution's number of calculation steps
  **{steps.get('spearman_steps', float('nan')):.3f}** (prompt length {steps.get('spearman_steps_length', float('nan')):.3f}); APGR when
  "needs the strong model" means more steps than the median
  **{steps.get('apgr_steps_above_median', float('nan')):.3f}** (prompt length {steps.get('apgr_steps_above_median_length', float('nan')):.3f}). Lowest score of a
  GSM8K test problem: {steps.get('p_complex_min', float('nan')):.3f}.
- **Outcomes** (`classifier/outcomes.py`): per question, whether the direct
  answer (weaker) and the step-by-step answer (stronger, more tokens) of the
  same GPT-3 model were right, from the logs of Kojima et al. 2022. APGR as
  RouteLLM computes it (0.5 is random):

| outcome set | n | weak accuracy | strong accuracy | APGR of p_complex | APGR of prompt length |
|---|---|---|---|---|---|
{outcome_rows}

The GSM8K outcome set is a weak check: the step-by-step answers were cut at
128 tokens, so the stronger answer fails more often on the longest problems,
and both scores land below 0.5 there.

## Calibration

Brier score on all held-out rows: {ev['brier_all_heldout']:.3f}. Reliability
(all held-out rows pooled; per-source Brier above):

| p_complex bin | n | mean p_complex | fraction complex |
|---|---|---|---|
{rel}

The default threshold is {meta['threshold']:.3f} ({meta['threshold_source']}).
`python -m classifier calibrate --target-large-share X --sample FILE` sets it
from a sample of real traffic instead.

## Latency (this machine, `python -m classifier bench`)

- single question: p50 {lat['single_p50_ms']:.3f} ms, p99 {lat['single_p99_ms']:.3f} ms
- batch of 1,000: median {lat['batch_1000_median_ms']:.1f} ms, best of {lat['batch_repeats']} {lat['batch_1000_best_ms']:.1f} ms
  ({lat['batch_throughput_per_s']:.0f} questions/s at the median). This VM is noisy: a figure alone
  says little. `python -m classifier bench --against REV` runs this classifier and a git
  revision's alternately, in one run, and prints the ratios.

Sentence embeddings (e.g. all-MiniLM-L6-v2 from a PyPI package) were not
added: an embedding costs about 10 ms on this CPU (docs/caching-and-retrieval.md),
far over the 1 ms budget, and the semantic cache computes one only for
cacheable requests.

## Known failure modes

{FAILURE_MODES}
## Versions

{', '.join(f'{k} {v}' for k, v in meta['versions'].items())}
"""
    path = folder / "MODEL_CARD.md"
    path.write_text(text)
    return path


def _gain_section(meta: dict, ev: dict) -> dict[str, str]:
    """The outcome data's provenance and the gain rankings, for the card."""
    out = meta.get("outcomes")
    if not out:
        return {"data": "No outcome table was found when this artifact was trained: it ranks by kinds alone.\n", "ranking": ""}
    benches = ", ".join(f"{b} {n}" for b, n in out["benchmarks"].items())
    data = f"""**Outcomes** (`classifier/gain.py`): `{out['file']}` (sha256 `{out['sha256'][:16]}…`) from
`shared/data/outcomes`: ulab-uiuc/LLMRouter's RouterDC-format *training* data
(commit 4e7a7969, MIT License, Copyright (c) 2024 U Lab @UIUC), 0/1 outcomes
of {len(out['models'])} open models per question ({benches}). Each benchmark
keeps its own license (GSM8K MIT, MBPP CC BY 4.0 and GPQA CC BY 4.0 as the
shared README states; MATH MIT; ARC CC BY-SA 4.0; TriviaQA, CommonsenseQA,
OpenBookQA and AgentVerse's tasks as their authors released them, not checked
here). A model trained on them redistributes no row, and no row is in this
repository (GPQA asks that its questions never be published in plain text). 80% by a hash of the text
trains ({out['train_rows']} rows), 20% is held out. A row's target is the rank
of its gain: over every pair of models whose accuracies differ by 10 points
or more, how often the stronger is right where the weaker is wrong, each pair
weighted by 1/its gap, moved half-way toward its benchmark's mean.
"""
    g, lobo = ev.get("gain_ranking"), ev.get("leave_one_benchmark_out")
    lines = ["## Ranking by gain (what routing is for)", "",
             "APGR as RouteLLM computes it (0.5 is random), averaged over every weak/strong pair of the nine models",
             "whose accuracies on the scored questions differ by 10 points or more, beside prompt length.", ""]
    if g:
        lines += [f"- **Held-out outcome rows**, all benchmarks mixed (n={g['n']}, {g['pairs']} pairs): "
                  f"**{g['apgr']:.3f}** (prompt length {g['apgr_length']:.3f}). `python -m classifier evaluate`", ""]
    if lobo:
        lines += ["**Leave one benchmark out** (trained without it, scored on all its questions; "
                  "`python -m classifier evaluate --lobo`):", "",
                  "| benchmark | n | pairs | APGR of p_complex | APGR of prompt length |", "|---|---|---|---|---|"]
        lines += [f"| {b} | {m['n']} | {m['pairs']} | **{m['apgr']:.3f}** | {m['apgr_length']:.3f} |" for b, m in lobo["per_benchmark"].items()]
        lines += [f"| mean | | | **{lobo['mean_apgr']:.3f}** | {lobo['mean_apgr_length']:.3f} |", ""]
    return {"data": data, "ranking": "\n".join(lines) + "\n"}
