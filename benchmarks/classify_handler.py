"""Where a Classify RPC's server time goes, in process (no network):

    python -m benchmarks.classify_handler [-n 5000]

Prints the mean time of the servicer's Classify handler (error mapping,
metrics, decoding, the policy, the response) and of `policy.decide` alone
(the classifier), over the built-in mix, then the top of a cProfile of the
handler. The RPC's rate against Health/Check is section 1 of `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time


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
    from server.servicer import RouterServicer
    from server.types import ChatMessage
    from triage_proto import router_pb2 as pb

    config = load("config/cpu.yaml").with_ports(0, -1)
    app = build_app(config, classifier.load(config.classifier.path))
    servicer, context = RouterServicer(app.router), _Context()
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.classify_handler", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
