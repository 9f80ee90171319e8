"""What an engine restart leaves in the router's memory:

    python -m benchmarks.restarts [--restarts 8] [--config config/cpu.yaml]

One in-process engine (the profile's first tier), killed with SIGKILL and
brought up again the way the supervisor does it (tiers.Tiers._restart:
shutdown, thaw and collect, start, warm up, freeze). After each restart it
prints the RSS before and after the allocator is trimmed (the two halves of
stalls.freeze_heap) and which Python object types grew since the previous
restart: nothing, when no object of the dead engine survives.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import signal
import sys

import psutil

from server.config import load
from server.tiers.engine import VllmEngine
from server.observe.stalls import release_free_memory, thaw_heap
from server.tiers.tier import warm_up


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _types() -> collections.Counter:
    """Live objects by type, frozen ones included."""
    gc.unfreeze()
    gc.collect()
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    gc.freeze()
    return counts


async def _restart(engine: VllmEngine) -> tuple[float, float]:
    for pid in engine.pids:
        os.kill(pid, signal.SIGKILL)
    while engine.ready:
        await asyncio.sleep(0.2)
    await engine.shutdown()
    thaw_heap()
    await engine.start()
    await warm_up(engine, "Hello")
    gc.collect()
    gc.freeze()
    untrimmed = _rss_mb()
    release_free_memory()
    return untrimmed, _rss_mb()


async def _main(args) -> None:
    tier = next(iter(load(args.config).tiers.values()))
    engine = VllmEngine(tier)
    await engine.start()
    await warm_up(engine, "Hello")
    gc.collect()
    gc.freeze()
    release_free_memory()
    print(f"started: RSS {_rss_mb():.0f} MB", flush=True)
    before = _types()
    try:
        for i in range(1, args.restarts + 1):
            untrimmed, trimmed = await _restart(engine)
            after = _types()
            grew = (after - before).most_common(5)
            before = after
            print(f"restart {i}: RSS {untrimmed:.0f} MB, {trimmed:.0f} MB after the trim; object types that grew: {grew or 'none'}",
                  flush=True)
    finally:
        await engine.shutdown()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restarts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--restarts", type=int, default=8)
    parser.add_argument("--config", default="config/cpu.yaml")
    asyncio.run(_main(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
