"""Where a Classify RPC's server time goes:

    python -m benchmarks.classify_handler [-n 5000]
    python -m benchmarks.classify_handler --ratios [--concurrency 32] [--out docs]

The first prints, in process (no network), the mean time of the servicer's
Classify handler (error mapping, metrics, decoding, the policy, the
response) and of `policy.decide` alone (the classifier), over the built-in
mix, then the top of a cProfile of the handler.

`--ratios` serves Classify four ways on a real grpc.aio server and loads each
from a child process in blocks alternating with Health/Check, as section 1
of `make bench` does: the rate against Health/Check of a handler that
returns an empty response at once, of the servicer's bookkeeping alone
(request id, status mapping, metrics), of the whole handler with a
classifier that costs nothing, and of the real handler. The steps between
the rows are what each part costs the RPC's rate.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path


class _Context:
    """What the handler asks of a grpc.aio context on the OK path."""

    def time_remaining(self):
        return None

    def set_trailing_metadata(self, metadata):
        pass

    async def abort(self, code, message):
        raise RuntimeError(f"{code}: {message}")


async def main_async(n: int) -> None:
    import classifier
    from clients.loadgen import BUILTIN_MIX
    from server.app import build_app
    from server.config import load
    from server.fronts.servicer import RouterServicer
    from server.types import ChatMessage
    from triage_proto import router_pb2 as pb

    config = load("config/cpu.yaml").with_ports(0, -1)
    app = build_app(config, classifier.load(config.classifier.path))
    servicer, context = RouterServicer(app.router, app.calls), _Context()
    requests = [pb.ClassifyRequest(messages=[pb.Message(role="user", content=t)]) for t in BUILTIN_MIX]
    for r in requests * 20:  # warm
        await servicer.Classify(r, context)
    started = time.perf_counter()
    for i in range(n):
        await servicer.Classify(requests[i % len(requests)], context)
    handler_us = (time.perf_counter() - started) / n * 1e6
    messages = [(ChatMessage("user", t),) for t in BUILTIN_MIX]
    started = time.perf_counter()
    for i in range(n):
        app.router.policy.decide(messages[i % len(messages)])
    decide_us = (time.perf_counter() - started) / n * 1e6
    print(f"Classify handler: {handler_us:.0f} us per call; policy.decide (the classifier): {decide_us:.0f} us")
    profile = cProfile.Profile()
    profile.enable()
    for i in range(n):
        await servicer.Classify(requests[i % len(requests)], context)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)


VARIANTS = ("empty response", "bookkeeping only", "free classifier", "real")


def _serve_variant(servicer_cls, variant: str):
    """A servicer whose Classify is cut down to `variant`."""
    from triage_proto import router_pb2 as pb

    class Variant(servicer_cls):
        async def Classify(self, request, context):
            if variant == "empty response":
                return pb.ClassifyResponse()
            if variant == "bookkeeping only":
                async with self._rpc("Classify", context, request):
                    return pb.ClassifyResponse()
            return await super().Classify(request, context)

    return Variant


class FreeClassifier:
    """A classifier that costs nothing: what the handler costs without one."""

    threshold = 0.45

    @staticmethod
    def score(texts):
        import numpy as np

        return np.full(len(texts), 0.3)


async def ratios_async(concurrency: int, seconds: float, rounds: int) -> list[dict]:
    import statistics

    import classifier
    from benchmarks.load import classify_and_health_blocks
    from server.app import build_app
    from server.config import load
    from server.fronts.servicer import RouterServicer

    config = load("config/cpu.yaml").with_ports(0, -1, http_port=-1)
    rows = []
    for variant in VARIANTS:
        clf = FreeClassifier() if variant == "free classifier" else classifier.load(config.classifier.path)
        app = build_app(config, clf, servicer=_serve_variant(RouterServicer, variant))
        await app.server.start()
        address = f"{config.server.host}:{app.port}"
        try:
            runs = await asyncio.to_thread(classify_and_health_blocks, address, concurrency, seconds, rounds)
        finally:
            await app.server.stop(1)
        rates = {rpc: [r["rps"] for r in blocks] for rpc, blocks in runs.items()}
        ratio = statistics.median(c / h for c, h in zip(rates["classify"], rates["health"]))
        rows.append({"variant": variant, "classify_rps": statistics.median(rates["classify"]),
                     "health_rps": statistics.median(rates["health"]), "ratio": ratio})
        print(f"{variant:17s} Classify {rows[-1]['classify_rps']:5.0f} req/s, Health/Check {rows[-1]['health_rps']:5.0f} req/s: "
              f"ratio {ratio:.3f}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.classify_handler", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--ratios", action="store_true", help="the RPC's rate against Health/Check, handler cut down step by step")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default="docs", help="where --ratios writes classify-ratios.json (docs/benchmarks.md quotes it)")
    args = parser.parse_args(argv)
    if args.ratios:
        import logging

        logging.basicConfig(level=logging.WARNING)
        rows = asyncio.run(ratios_async(args.concurrency, args.seconds, args.rounds))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "classify-ratios.json").write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "concurrency": args.concurrency, "seconds": args.seconds,
            "rounds": args.rounds, "rows": rows}, indent=2) + "\n")
    else:
        asyncio.run(main_async(args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
