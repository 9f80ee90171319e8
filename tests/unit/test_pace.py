"""server/observe/pace.py on a real event loop: when it calls the loop saturated,
how long a held stream waits, and that it keeps no timer when idle."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.observe.pace import CALM_TICKS, TICK_S, LoopPressure


def burn(seconds: float) -> None:
    """The loop's thread busy, as a burst of set-ups and relays keeps it."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def saturate(seconds: float) -> None:
    """Slices of CPU work with barely a breath between them."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        burn(0.004)
        await asyncio.sleep(0)


def run(coro):
    return asyncio.run(coro)


def test_one_answer_alone_is_never_held_and_keeps_no_timer():
    async def main():
        pressure = LoopPressure(0.05)
        pressure.start()
        pressure.began()
        await saturate(0.1)
        busy_alone, timer_alone = pressure.busy, pressure.watching
        pressure.ended()
        return busy_alone, timer_alone

    busy_alone, timer_alone = run(main())
    assert busy_alone is False
    assert timer_alone is False


def test_a_saturated_loop_is_busy_and_an_idle_one_is_not():
    async def main():
        pressure = LoopPressure(0.05)
        pressure.start()
        pressure.began()
        pressure.began()
        await asyncio.sleep(0.05)
        idle = pressure.busy
        await saturate(0.1)
        saturated = pressure.busy
        await asyncio.sleep(TICK_S)
        between = pressure.busy  # one quiet tick in a burst does not end it
        await asyncio.sleep((CALM_TICKS + 2) * TICK_S)
        after = pressure.busy
        pressure.ended()
        await asyncio.sleep(2 * TICK_S)
        one_left = pressure.busy, pressure.watching
        pressure.ended()
        return idle, saturated, between, after, one_left

    idle, saturated, between, after, one_left = run(main())
    assert (idle, saturated, between, after) == (False, True, True, False)
    assert one_left == (False, False)  # below two answers it stops looking


def test_held_streams_share_one_wait_of_hold_s():
    async def main():
        pressure = LoopPressure(0.04)
        pressure.start()
        pressure.began()
        pressure.began()
        started = time.perf_counter()
        ended: list[float] = []

        async def held():
            await pressure.calm()
            ended.append(time.perf_counter() - started)

        tasks = [asyncio.create_task(held()) for _ in range(50)]
        victim = asyncio.create_task(held())
        await asyncio.sleep(0.01)
        victim.cancel()  # one caller goes away: the others still wait out the hold
        await asyncio.gather(*tasks)
        pressure.ended()
        pressure.ended()
        return ended, victim

    ended, victim = run(main())
    assert victim.cancelled()
    assert len(ended) == 50
    assert 0.04 <= min(ended) and max(ended) < 0.04 + 4 * TICK_S + 0.02


def test_stop_lets_held_streams_go_and_off_never_holds():
    async def main():
        pressure = LoopPressure(10.0)
        pressure.start()
        pressure.began()
        pressure.began()
        waiter = asyncio.create_task(pressure.calm())
        await asyncio.sleep(0.01)
        pressure.stop()
        await asyncio.wait_for(waiter, 1.0)
        off = LoopPressure(0.0)
        off.start()
        off.began()
        off.began()
        await saturate(0.05)
        return off.busy

    assert run(main()) is False


@pytest.mark.parametrize("hold_s", [0.0, 0.05])
def test_not_started_is_never_busy(hold_s):
    async def main():
        pressure = LoopPressure(hold_s)
        pressure.began()
        pressure.began()
        await saturate(0.05)
        return pressure.busy

    assert run(main()) is False
