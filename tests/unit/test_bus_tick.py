"""The worker's periodic bus tick keeps running whatever one of its runs raises."""

import asyncio

import uvloop

from wsd.server.bus.tick import Periodic


def test_a_tick_that_raises_is_logged_and_rescheduled(caplog):
    calls = []

    def tick() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("boom")

    async def main() -> None:
        periodic = Periodic(asyncio.get_running_loop(), 0.01, tick, "bus tick")
        periodic.start()
        await asyncio.sleep(0.3)
        periodic.stop()
        count = len(calls)
        await asyncio.sleep(0.05)
        assert len(calls) == count  # stopped means stopped

    uvloop.run(main())
    assert len(calls) >= 6
    assert caplog.text.count("bus tick failed") == 3
