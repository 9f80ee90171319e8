"""python -m server --config config/cpu.yaml [--port N] [--metrics-port M]
python -m server index DOCS --out INDEX        (a retrieval index: server/lookup/retrieval.py)

The only place that reads argv, the environment and signals (a worker's
index, when `server.workers` runs several, is read by server/workers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from .config import Config, ConfigError, load


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server", description="Triage: an adaptive LLM router over gRPC")
    parser.add_argument("--config", default=os.environ.get("TRIAGE_CONFIG", "config/cpu.yaml"), help="profile YAML (default: config/cpu.yaml)")
    parser.add_argument("--host", default=None, help="address to listen on (default: the profile's server.host; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=None, help="gRPC port (0 picks a free one and prints it)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port (0 = free port, -1 = off)")
    parser.add_argument("--http-port", type=int, default=None, help="OpenAI-compatible HTTP port (0 = free port, -1 = off)")
    parser.add_argument("--log-level", default=os.environ.get("TRIAGE_LOG_LEVEL", "INFO"))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one setting of the profile (repeatable), e.g. --set retrieval.index=./my-index")
    return parser.parse_args(argv)


def remote_api_keys(config) -> dict[str, str]:
    """Each remote tier's replica key, from the environment variable its
    `api_key_env` names (this module is the only one that reads the environment)."""
    keys = {}
    for name, tier in config.tiers.items():
        if tier.api_key_env:
            key = os.environ.get(tier.api_key_env)
            if not key:
                raise ValueError(f"tiers.{name}.api_key_env: environment variable {tier.api_key_env} is not set")
            keys[name] = key
    return keys


async def _main(config: Config) -> int:
    import classifier

    from .app import build_app, serve
    from .fronts.auth import load_tokens
    from .lookup.retrieval import IndexError_
    from store import NotAStore, StoreUnavailable

    try:
        tokens = load_tokens(config.security.token_file, config.security.token_env, [c.name for c in config.callers])
        api_keys = remote_api_keys(config)
    except (OSError, ValueError) as exc:
        print(f"triage: bad security settings: {exc}", file=sys.stderr)
        return 2
    clf = classifier.load(config.classifier.path)
    try:
        app = build_app(config, clf, tokens=tokens, api_keys=api_keys)
    except (IndexError_, OSError) as exc:
        print(f"triage: {exc}", file=sys.stderr)
        return 2
    except (StoreUnavailable, NotAStore) as exc:
        print(f"triage: store.url: {exc}", file=sys.stderr)
        return 2
    if not tokens:
        logging.getLogger("triage").warning("authentication is off: set security.token_file or security.token_env")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(app, stop)
    return 0


def run(main_coroutine) -> int:
    """The router's event loop: uvloop's. Every streamed token crosses the
    loop several times (the upstream's socket, a timer, the caller's
    socket), and uvloop's transports and timers are native code: at 256
    streams against a GPU-paced upstream (benchmarks.gpu_pace) the pure
    Python loop alone was about a third of the router's CPU."""
    import uvloop

    return uvloop.run(main_coroutine)


def main(argv: list[str] | None = None) -> int:
    from . import workers

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["index"]:  # `python -m server index DOCS --out INDEX`: build a retrieval index
        from .lookup.retrieval import main as build_index

        return build_index(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    index = workers.worker_index()
    try:
        config = load(args.config, args.set).with_ports(args.port, args.metrics_port, args.host, args.http_port)
        if index is None:
            workers.check(config)
    except ConfigError as exc:
        print(f"triage: bad config: {exc}", file=sys.stderr)
        return 2
    if index is not None:  # one of several workers (server/workers.py)
        config = workers.for_worker(config, index)
    elif config.server.workers > 1:  # this process only supervises them; they run this same command
        print(f"triage: {config.server.workers} workers on {config.server.host}:{config.server.port}", flush=True)
        return workers.Supervisor(config.server.workers, argv).run()
    code = run(_main(config))
    # Everything the router owns is closed by now (server, engines and their
    # processes, caches, metrics endpoint). What is left is the interpreter
    # tearing down torch, vLLM and OpenBLAS in native code, measured at 3.8 s
    # with no Python frame running: an orchestrator would count it as a slow
    # stop. Flush what is buffered and leave without it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
