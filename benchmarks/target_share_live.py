"""The target share on the real CPU engines, as an operator tries it: the
CPU profile with `target_share: {large: 0.30}` and the default window,
1,200 generated questions of simple kinds, then 1,200 of complex kinds
(benchmarks.questions), 8 callers, one new token each, the cache off:

    python -m benchmarks.target_share_live [--per-phase 1200] [--callers 8] [--out docs/target_share_live.json]

Prints, per block of 200 decisions in the order they were sent, the share
the rule sent to the large tier (reason classifier or target_share) and the
share of answers the large tier gave (spills from a busy small tier
included), the cut the block's last decision was held to, and each phase's
second half.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clients import TriageClient

from .harness import start_router
from .questions import complex_question, simple_question

BLOCK, TARGET = 200, 0.30


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.target_share_live", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/cpu.yaml")
    parser.add_argument("--per-phase", type=int, default=1200)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--out", default="docs/target_share_live.json")
    args = parser.parse_args(argv)
    rng = random.Random(20261202)
    questions = [simple_question(rng) for _ in range(args.per_phase)] + [complex_question(rng) for _ in range(args.per_phase)]
    router, address, _, _ = start_router(args.config, subprocess.DEVNULL, http=False, overrides=("routing.target_share={large: 0.3}",))
    try:
        with TriageClient(address, timeout=600) as client, ThreadPoolExecutor(args.callers) as pool:
            started = time.monotonic()
            answers = list(pool.map(lambda q: client.generate(q, max_tokens=1, cache="off").decision, questions))
            seconds = time.monotonic() - started
    finally:
        router.send_signal(signal.SIGTERM)
        router.wait(60)
    ruled = [d.tier_name == "large" if d.reason in ("classifier", "target_share") else None for d in answers]
    blocks = []
    for b in range(0, len(answers), BLOCK):
        part = answers[b:b + BLOCK]
        rule = [x for x in ruled[b:b + BLOCK] if x is not None]
        blocks.append({"rule_large_share": sum(rule) / len(rule), "answered_large_share": sum(d.tier_name == "large" for d in part) / len(part),
                       "spilled": sum(d.reason == "load" for d in part), "last_cut": part[-1].threshold})
    halves = []
    for phase in range(2):
        second = ruled[phase * args.per_phase + args.per_phase // 2:(phase + 1) * args.per_phase]
        halves.append(sum(x for x in second if x is not None) / sum(1 for x in second if x is not None))
    print(f"{len(answers)} requests in {seconds:.0f} s; target {TARGET:.0%}, default window")
    print("| block | phase | rule's large share | answered by large | spilled | cut at its end |\n|---|---|---|---|---|---|")
    for i, b in enumerate(blocks):
        print(f"| {i} | {'simple' if i * BLOCK < args.per_phase else 'complex'} | {b['rule_large_share']:.2f} | {b['answered_large_share']:.2f} | "
              f"{b['spilled']} | {b['last_cut']:.3f} |")
    print(f"second halves: simple phase {halves[0]:.3f}, complex phase {halves[1]:.3f}")
    Path(args.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "per_phase": args.per_phase,
                                          "callers": args.callers, "blocks": blocks, "second_halves": halves}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
