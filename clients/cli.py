"""triage: command line for the Triage router.

    triage ask "What is the capital of France?" [--stream] [--route TIER] [--json]
    triage models
    triage stats [--json]
    triage health
    triage bench --requests 50 --concurrency 4 --out reports/bench
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict

from triage_proto import router_pb2 as pb

from .client import TriageClient
from .errors import NotFoundError, TriageError

DEFAULT_TARGET = os.environ.get("TRIAGE_ADDRESS", "127.0.0.1:50051")


_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def to_dict(message) -> dict:
    """A message as JSON people read: every field, zeros and false included
    (`ready: false` while loading, `temperature: 0`), and 64-bit integers as
    numbers, not the strings proto3's JSON mapping prescribes."""
    out = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _ints(message, out)
    return out


def _ints(message, out: dict) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.name not in out:
            continue
        value = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                if field.message_type.fields_by_name["value"].type in _INT64:
                    out[field.name] = {k: int(v) for k, v in out[field.name].items()}
            elif field.is_repeated:
                for item, item_out in zip(value, out[field.name]):
                    _ints(item, item_out)
            else:
                _ints(value, out[field.name])
        elif field.type in _INT64:
            out[field.name] = [int(v) for v in out[field.name]] if field.is_repeated else int(out[field.name])


def _sources(sources) -> None:
    for i, src in enumerate(sources, start=1):
        print(f"  [{i}] {src.document} (chunk {src.chunk}, score {src.score:.2f})", file=sys.stderr)


def _summary(decision, timings, usage, finish_reason, cache=None) -> str:
    hit = ""
    if cache is not None and cache.status == pb.CACHE_EXACT:
        hit = " · cache EXACT"
    elif cache is not None and cache.status == pb.CACHE_SEMANTIC:
        hit = f" · cache SEMANTIC ({cache.similarity:.3f})"
    return (
        f"[{decision.tier_name} · {decision.model} · p_complex={decision.p_complex:.3f} (threshold {decision.threshold:.3f}, "
        f"{decision.reason}{', degraded' if decision.degraded else ''}) · "
        f"{usage.prompt_tokens}+{usage.completion_tokens} tokens · {finish_reason} · "
        f"classify {timings.classify_ms:.2f} ms · ttft {timings.ttft_ms:.0f} ms · total {timings.total_ms:.0f} ms{hit}]"
    )


def cmd_ask(client: TriageClient, args) -> int:
    kwargs = {"route": args.route, "threshold": args.threshold, "max_tokens": args.max_tokens, "temperature": args.temperature,
              "timeout": args.timeout, "cache": args.cache, "retrieval": True if args.retrieve else None, "session_id": args.session}
    if not args.stream:
        r = client.generate(args.question, **kwargs)
        if args.json:
            print(json.dumps(to_dict(r), indent=2))
        else:
            print(r.text)
            _sources(r.retrieval.sources)
            print(_summary(r.decision, r.timings, r.usage, r.finish_reason, r.cache), file=sys.stderr)
        return 0
    decision = None
    events = []
    for event in client.generate_stream(args.question, **kwargs):
        kind = event.WhichOneof("event")
        if args.json:
            events.append(to_dict(event))
        elif kind == "decision":
            decision = event.decision
        elif kind == "delta":
            print(event.delta, end="", flush=True)
        elif kind == "final":
            print()
            f = event.final
            _sources(f.retrieval.sources)
            print(_summary(decision, f.timings, f.usage, f.finish_reason, f.cache), file=sys.stderr)
    if args.json:
        print(json.dumps(events, indent=2))
    return 0


def cmd_models(client: TriageClient, args) -> int:
    print(json.dumps(to_dict(client.list_models()), indent=2))
    return 0


def cmd_stats(client: TriageClient, args) -> int:
    r = client.stats()
    print(json.dumps(to_dict(r), indent=2) if args.json else r.summary)
    return 0


def cmd_adapter(client: TriageClient, args) -> int:
    """`adapter status`, or `adapter revert previous|prior`."""
    if args.action == "revert":
        a = client.revert_adapter(args.to)
    else:
        r = client.stats()
        if not r.HasField("adapter"):
            print("routing.adapt is off on this server")
            return 0
        a = r.adapter
    if args.json:
        print(json.dumps(to_dict(a), indent=2))
    else:
        routing = f"adapter {a.current} routes ({a.outcomes} outcomes)" if a.current else "the prior alone routes"
        print(f"{routing}; previous: {a.previous or 'none'}")
    return 0


def cmd_bench(client: TriageClient, args) -> int:
    import asyncio

    from .loadgen import bench

    levels = [int(c) for c in args.concurrency.split(",")]
    report = asyncio.run(bench(args.address, levels, args.requests, args.duration, args.prompts, args.stream, args.max_tokens, args.out,
                               cache=args.cache))
    for c, level in report["levels"].items():
        tiers = ", ".join(f"{t} {v['count']} (p95 {v['e2e_ms']['p95']:.0f} ms)" for t, v in level["tiers"].items())
        print(f"concurrency {c}: {level['ok']}/{level['requests']} ok, {level['rps']:.2f} req/s, {level['tokens_per_s']:.1f} tokens/s; {tiers}; codes {level['codes']}")
    print(f"report: {args.out}/report.json, plots: {', '.join(report['plots'])}")
    return 0 if all(level["ok"] == level["requests"] for level in report["levels"].values()) else 1


def cmd_health(client: TriageClient, args) -> int:
    try:
        status = client.health(args.service)
    except NotFoundError:
        print(f"triage: the server has no health status for service {args.service!r} "
              f"(try \"\", router.v1.Router, router.v1.Router/live or router.v1.Router/<tier>)", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_feedback(client: TriageClient, args) -> int:
    r = client.feedback(args.request_id, rating=args.rating, correct=args.correct, label=args.label)
    print(f"recorded for {r.request_id} (answered by tier {r.tier_name}, p_complex {r.p_complex:.3f})")
    return 0


def connect(args) -> TriageClient:
    import grpc

    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    channel = None
    if args.tls_ca:
        read = lambda p: open(p, "rb").read() if p else None  # noqa: E731
        creds = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
        channel = grpc.secure_channel(args.address, creds)
    return TriageClient(args.address, channel=channel, metadata=metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="triage", description="Client for the Triage LLM router")
    parser.add_argument("--address", default=DEFAULT_TARGET, help="host:port of the router (env TRIAGE_ADDRESS)")
    parser.add_argument("--token", default=os.environ.get("TRIAGE_TOKEN"), help="bearer token (env TRIAGE_TOKEN)")
    parser.add_argument("--tls-ca", default=os.environ.get("TRIAGE_TLS_CA"), help="CA certificate (PEM): use TLS")
    parser.add_argument("--tls-cert", default=os.environ.get("TRIAGE_TLS_CERT"), help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--tls-key", default=os.environ.get("TRIAGE_TLS_KEY"), help="client key (PEM), for mutual TLS")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ask", help="ask a question; prints the answer, then the decision and timings")
    p.add_argument("question")
    p.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    p.add_argument("--route", default=None, metavar="TIER", help="force a tier by name (small, large, or any the server's profile names)")
    p.add_argument("--threshold", type=float, default=None, help="per-request p_complex threshold")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds (default 300)")
    p.add_argument("--json", action="store_true", help="print the full response as JSON")
    p.add_argument("--cache", choices=["default", "exact_only", "off"], default="default")
    p.add_argument("--retrieve", action="store_true", help="answer from the server's document index, listing sources")
    p.add_argument("--session", default="", metavar="ID", help="a conversation's id: it stays on the most capable tier it reached")
    p.set_defaults(func=cmd_ask)
    p = sub.add_parser("models", help="tiers, models, limits and readiness")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("stats", help="what the router has done since it started")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)
    p = sub.add_parser("bench", help="bounded load generator: JSON report and PNG plots")
    p.add_argument("--concurrency", default="4", help="one level or a comma list, e.g. 1,4,16")
    p.add_argument("--requests", type=int, default=None, help="requests per level (default 32 unless --duration)")
    p.add_argument("--duration", type=float, default=None, help="seconds per level")
    p.add_argument("--prompts", default=None, help="JSONL with text/prompt (and optional route); default: built-in mix")
    p.add_argument("--stream", action="store_true", help="use GenerateStream (measures TTFT and inter-token latency)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", default="reports/bench")
    p.add_argument("--cache", choices=["default", "exact_only", "off"], default="off",
                   help="cache mode of the requests (default off: measure the engines, not the cache)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("feedback", help="how an answer turned out (its request id from `ask --json`)")
    p.add_argument("request_id")
    outcome = p.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--rating", type=int, choices=range(1, 6), metavar="1-5")
    outcome.add_argument("--correct", action="store_const", const=True, dest="correct")
    outcome.add_argument("--incorrect", action="store_const", const=False, dest="correct")
    p.add_argument("--label", default="", help="optional, at most 200 characters")
    p.set_defaults(func=cmd_feedback, correct=None)
    p = sub.add_parser("adapter", help="which adapter routes (routing.adapt); revert to the previous one or to the prior")
    p.add_argument("action", choices=["status", "revert"])
    p.add_argument("to", nargs="?", choices=["previous", "prior"], help="with revert: what routes from now on")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adapter)
    p = sub.add_parser("health", help="grpc health status (exit 0 when SERVING)")
    p.add_argument("--service", default="")
    p.set_defaults(func=cmd_health)
    args = parser.parse_args(argv)
    if args.command == "bench" and args.requests is None and args.duration is None:
        args.requests = 32
    if args.command == "adapter" and (args.action == "revert") != (args.to is not None):
        parser.error("adapter: `revert` takes previous or prior; `status` takes nothing")
    try:
        with connect(args) as client:
            return args.func(client, args)
    except TriageError as exc:
        print(f"triage: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `triage models | head`: the reader has gone, which is not an error.
        # Point stdout at nothing so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
