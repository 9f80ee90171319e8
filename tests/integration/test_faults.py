"""Reliability and security on a second real server (mutual TLS, bearer
tokens, tight admission limits on the large tier). Destructive tests run in
file order; the last one stops the server with SIGTERM mid-stream.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from clients import AsyncTriageClient, TriageClient, UnauthenticatedError
from triage_proto import router_pb2 as pb

from .conftest import Live, _test_config, start_server, stop_server

TOKEN = "test-token-" + "x" * 24
GRACE_S = 20


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("triage test CA")).issuer_name(name("triage test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))

    def leaf(cn, serial, san=None):
        k = key()
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(k.public_key())
             .serial_number(serial).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
        if san:
            b = b.add_extension(san, critical=False)
        return k, b.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf("127.0.0.1", 2, x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    client_key, client_cert = leaf("triage test client", 3)
    files = {}
    for label, obj in (("ca", ca), ("server_cert", server_cert), ("client_cert", client_cert)):
        files[label] = folder / f"{label}.pem"
        files[label].write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    for label, k in (("server_key", server_key), ("client_key", client_key)):
        files[label] = folder / f"{label}.pem"
        files[label].write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files


def _credentials(certs, with_client_cert=True) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=certs["ca"].read_bytes(),
        private_key=certs["client_key"].read_bytes() if with_client_cert else None,
        certificate_chain=certs["client_cert"].read_bytes() if with_client_cert else None,
    )


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guarded")
    certs = _certificates(tmp)
    config = _test_config(
        tmp,
        server={"grace_seconds": GRACE_S},
        security={"token_env": "TRIAGE_TEST_TOKENS", "health_open": True, "tls_cert": str(certs["server_cert"]),
                  "tls_key": str(certs["server_key"]), "tls_client_ca": str(certs["ca"])},
        limits={"max_in_flight": 200, "max_queued": 200},
        resilience={"failure_threshold": 2, "cooldown_s": 5, "health_interval_s": 0.5},
        tiers={"small": {"max_in_flight": 120, "max_queued": 120}, "large": {"max_in_flight": 1, "max_queued": 1}},
    )

    def client(address):
        return TriageClient(address, timeout=120, channel=grpc.secure_channel(address, _credentials(certs)),
                            metadata=(("authorization", f"Bearer {TOKEN}"),))

    server = start_server(config, tmp, client, env={"TRIAGE_TEST_TOKENS": TOKEN})
    server.certs = certs
    yield server
    if server.process.poll() is None:
        stop_server(server)


def test_requests_need_a_valid_token_and_tls(guarded):
    certs, address = guarded.certs, guarded.address
    r = guarded.client.generate("What is the capital of France?", max_tokens=24, cache="off")
    assert "Paris" in r.text  # valid token, mutual TLS: a real answer
    for metadata in ((), (("authorization", "Bearer wrong-token-" + "y" * 20),), (("authorization", TOKEN),)):
        with TriageClient(address, channel=grpc.secure_channel(address, _credentials(certs)), metadata=metadata) as c:
            with pytest.raises(UnauthenticatedError):
                c.generate("What is the capital of France?", max_tokens=8)
            with pytest.raises(UnauthenticatedError):
                list(c.generate_stream("What is the capital of France?", max_tokens=8))
            assert c.health() == "SERVING"  # health checking stays open (configured)
    assert 'grpc_code="UNAUTHENTICATED",grpc_method="Generate"' in guarded.metrics()
    # No client certificate (mutual TLS) or no TLS at all: the connection is refused.
    for channel in (grpc.secure_channel(address, _credentials(certs, with_client_cert=False)), grpc.insecure_channel(address)):
        with TriageClient(address, channel=channel, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5) as c:
            with pytest.raises(Exception) as err:
                c.classify("hello")
            assert getattr(err.value, "code", None) == grpc.StatusCode.UNAVAILABLE


def test_over_the_admission_limit_is_resource_exhausted_with_a_retry_hint(guarded):
    stub = guarded.client.stub
    md = (("authorization", f"Bearer {TOKEN}"),)
    req = pb.GenerateRequest(messages=[pb.Message(role="user", content="Write a long story about a lighthouse.")], route=pb.TIER_LARGE,
                             sampling=pb.SamplingParams(max_tokens=300), cache_mode=pb.CACHE_MODE_OFF)
    calls = [stub.GenerateStream(req, timeout=120, metadata=md) for _ in range(5)]
    try:
        time.sleep(3)  # refusals are immediate; admitted streams are still generating
        refused = [c for c in calls if c.done() and c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
        running = [c for c in calls if not c.done()]
        for call in refused:
            trailers = dict(call.trailing_metadata() or ())
            assert int(trailers["grpc-retry-pushback-ms"]) > 0
            assert "queued" in call.details()
    finally:
        for call in calls:
            call.cancel()
    # large: 1 generating + 1 queued; the other three are refused at once.
    assert len(refused) == 3 and len(running) == 2
    assert (guarded.metric_value("router_admission_rejected_total", scope="tier large") or 0) >= 3


def test_cancelling_100_concurrent_streams_leaves_the_engine_empty(guarded):
    async def scenario():
        async with AsyncTriageClient(guarded.address, channel=grpc.aio.secure_channel(guarded.address, _credentials(guarded.certs)),
                                     metadata=(("authorization", f"Bearer {TOKEN}"),)) as client:
            started = asyncio.Event()

            async def one(i):
                async for event in client.generate_stream(f"Write a long poem about the sea, number {i}.", route="small", max_tokens=400, cache="off"):
                    if event.WhichOneof("event") == "delta":
                        started.set()

            tasks = [asyncio.create_task(one(i)) for i in range(100)]
            await asyncio.wait_for(started.wait(), 120)
            await asyncio.sleep(2)
            held = guarded.metric_value("router_engine_unfinished_requests", tier="small")
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return held

    held = asyncio.run(scenario())
    assert held >= 50, f"only {held} requests reached the engine"
    deadline = time.monotonic() + 30
    while guarded.metric_value("router_engine_unfinished_requests", tier="small") != 0.0:
        assert time.monotonic() < deadline, "the engine still holds cancelled requests"
        time.sleep(0.5)
    assert guarded.metric_value("router_requests_in_flight", tier="small") == 0.0


def _engine_pids(live: Live, tier: str) -> list[int]:
    found = re.findall(rf"tier {tier}: engine loaded in [\d.]+ s \(processes \[([\d, ]+)\]\)", live.log())
    assert found, "no engine process ids in the log"
    return [int(p) for p in found[-1].split(",")]


def kill_engine(live: Live, tier: str) -> None:
    """SIGKILL the tier's engine processes, as an OOM killer would."""
    for pid in _engine_pids(live, tier):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_an_engines_processes_are_its_own(guarded):
    """The processes the log names for a tier (what an operator kills for
    it) are its engine's, not multiprocessing's resource tracker, which the
    first engine's start brings up for the whole router: killing it made
    the tracker relaunch and forget the shared memory it watched."""
    import psutil

    for tier in ("small", "large"):
        commands = [" ".join(psutil.Process(pid).cmdline()) for pid in _engine_pids(guarded, tier)]
        assert commands and not any("resource_tracker" in c for c in commands), (tier, commands)


def test_killing_one_tier_falls_back_updates_health_and_recovers(guarded):
    client = guarded.client
    errors: list[str] = []
    stop = threading.Event()

    def load():  # requests keep arriving while the engine dies
        while not stop.is_set():
            try:
                client.generate("Explain how tides work.", route="large", max_tokens=16, cache="off")
            except Exception as exc:  # noqa: BLE001 (collected and checked below)
                errors.append(getattr(exc, "code", type(exc)).__repr__())

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(1)
        kill_engine(guarded, "large")
        deadline = time.monotonic() + 30
        while client.health("router.v1.Router/large") != "NOT_SERVING":
            assert time.monotonic() < deadline, "large tier never went NOT_SERVING"
            time.sleep(0.2)
        assert client.health("router.v1.Router/small") == "SERVING"
        assert client.health() == "SERVING"  # the router still answers, through fallback
        r = client.generate("Explain how tides work.", route="large", max_tokens=16, cache="off")
        assert r.decision.tier == pb.TIER_SMALL and r.decision.degraded and r.decision.reason == "fallback"
        assert (guarded.metric_value("router_degraded_total", reason="tier_unavailable") or 0) >= 1
        assert guarded.metric_value("router_engine_ready", tier="large", model="SmolLM2-135M-Instruct") == 0.0
    finally:
        stop.set()
        loader.join(120)
    # Nothing failed silently: a request that was already on the dying engine
    # may end UNAVAILABLE, nothing else.
    assert all("UNAVAILABLE" in e for e in errors), errors
    deadline = time.monotonic() + 240
    while client.health("router.v1.Router/large") != "SERVING":
        assert time.monotonic() < deadline, "large tier did not recover"
        time.sleep(1)
    r = client.generate("Explain how tides work.", route="large", max_tokens=16, cache="off")
    assert r.decision.tier == pb.TIER_LARGE and not r.decision.degraded
    assert (guarded.metric_value("router_engine_restarts_total", tier="large") or 0) >= 1


def test_sigterm_during_a_stream_finishes_it_and_exits_0(guarded):
    stream = guarded.client.generate_stream("Write three sentences about autumn.", route="small", max_tokens=60, cache="off")
    events = [next(stream)]
    while events[-1].WhichOneof("event") != "delta":
        events.append(next(stream))
    signalled = time.monotonic()
    guarded.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    try:  # draining: health says NOT_SERVING, or grpc already refuses new calls
        assert guarded.client.health() == "NOT_SERVING"
    except Exception as exc:  # noqa: BLE001
        assert getattr(exc, "code", None) == grpc.StatusCode.UNAVAILABLE, exc
    events += list(stream)
    assert events[-1].WhichOneof("event") == "final" and events[-1].final.finish_reason in ("stop", "length")
    assert time.monotonic() - signalled < GRACE_S
    assert guarded.process.wait(GRACE_S + 30) == 0
