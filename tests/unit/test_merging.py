"""merging.merged, the reader both front doors stream through: text that
queues up while the reader is behind is joined, in order, up to MAX_CHARS;
nothing is joined for a reader that keeps up; the decision and the final
event are never joined; an error arrives in its place; closing the reader
closes the router's stream."""

from __future__ import annotations

import asyncio

import pytest

from server.fronts import merging
from server.fronts.merging import merged
from server.types import DecisionEvent, DeltaEvent, FinalEvent


async def _events(n: int, fail_at: int | None = None, closed: list | None = None):
    try:
        yield DecisionEvent("decision")
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("the engine died")
            yield DeltaEvent(f"t{i} ")
            await asyncio.sleep(0)  # one token per turn of the loop, as an engine's stream gives them
        yield FinalEvent("stop", None, None, None)
    finally:
        if closed is not None:
            closed.append(True)


async def _read(stream, pause_s: float = 0.0) -> list:
    out = []
    async for event in stream:
        out.append(event)
        if pause_s:
            await asyncio.sleep(pause_s)  # a write still in flight
    return out


def test_a_reader_that_keeps_up_gets_every_token_alone():
    got = asyncio.run(_read(merged(_events(50))))
    assert [type(e).__name__ for e in got] == ["DecisionEvent"] + ["DeltaEvent"] * 50 + ["FinalEvent"]
    assert [e.text for e in got[1:-1]] == [f"t{i} " for i in range(50)]


def test_a_reader_that_falls_behind_gets_the_same_text_joined_in_order():
    got = asyncio.run(_read(merged(_events(200)), pause_s=0.005))
    deltas = [e.text for e in got if isinstance(e, DeltaEvent)]
    assert "".join(deltas) == "".join(f"t{i} " for i in range(200))
    assert len(deltas) < 20 and isinstance(got[0], DecisionEvent) and isinstance(got[-1], FinalEvent)


def test_a_joined_message_holds_at_most_max_chars(monkeypatch):
    monkeypatch.setattr(merging, "MAX_CHARS", 12)
    got = asyncio.run(_read(merged(_events(100)), pause_s=0.005))
    deltas = [e.text for e in got if isinstance(e, DeltaEvent)]
    assert "".join(deltas) == "".join(f"t{i} " for i in range(100)) and max(map(len, deltas)) <= 12


def test_an_error_arrives_after_the_text_before_it():
    async def run():
        seen = []
        with pytest.raises(RuntimeError, match="the engine died"):
            async for event in merged(_events(10, fail_at=6)):
                seen.append(event)
        return seen

    seen = asyncio.run(run())
    assert "".join(e.text for e in seen if isinstance(e, DeltaEvent)) == "t0 t1 t2 t3 t4 t5 "


def test_closing_the_reader_closes_the_routers_stream():
    async def run():
        closed: list = []
        stream = merged(_events(10_000, closed=closed))
        async for event in stream:
            if isinstance(event, DeltaEvent):
                break
        await stream.aclose()
        return closed

    assert asyncio.run(run()) == [True]
