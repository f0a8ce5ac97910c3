"""The event-loop lag watchdog: a loop blocked on purpose gives ONE warning naming the blocking function, with its
stack, and the lag shows in the metrics."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from server import watchdog
from server.app import Gust

from .promscrape import scrape, value


def block_the_loop_on_purpose(seconds: float) -> None:
    time.sleep(seconds)  # what a blocking call (sync I/O, heavy CPU work) does to every client


async def watchdog_warnings(caplog: pytest.LogCaptureFixture, count: int, timeout: float = 5.0) -> list[str]:
    """The watchdog's warnings once there are `count` of them (waiting at most `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r.getMessage() for r in caplog.records if r.name == "gust.watchdog"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)


@pytest.mark.gen_test(timeout=20)
async def test_blocked_loop_is_reported_once_with_the_blocking_function(
    gust: Gust, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gust.watchdog")
    await asyncio.sleep(0.2)  # the watchdog is ticking
    caplog.clear()
    block_the_loop_on_purpose(0.4)
    warnings = await watchdog_warnings(caplog, 1)
    await asyncio.sleep(0.3)  # a second warning for the same incident would have come by now
    warnings = [r.getMessage() for r in caplog.records if r.name == "gust.watchdog"]
    assert len(warnings) == 1, warnings
    message = warnings[0]
    assert message.startswith("event loop blocked for at least ")
    assert "(threshold 20 ms)" in message
    assert "the loop was running block_the_loop_on_purpose (" in message
    assert "test_watchdog.py" in message and "time.sleep(seconds)" in message  # the stack, source lines included
    blocked_ms = float(message.split("at least ")[1].split(" ms")[0])
    assert blocked_ms >= 400 - 50 - 5  # counted from when the missed tick was due: at most `interval` after the start
    samples = await scrape(base_url)
    assert value(samples, "gust_event_loop_blocked_total") == 1
    assert value(samples, "gust_event_loop_lag_seconds_bucket", le="0.25") < value(
        samples, "gust_event_loop_lag_seconds_count")  # the late tick landed in a bucket above 250 ms


@pytest.mark.gen_test(timeout=20)
async def test_loop_still_blocked_is_reported_while_it_lasts(gust: Gust, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gust.watchdog")
    await asyncio.sleep(0.2)
    caplog.clear()
    block_the_loop_on_purpose(1.5)  # longer than REPORT_AFTER: reported before the loop comes back
    warnings = await watchdog_warnings(caplog, 1)
    await asyncio.sleep(0.3)
    warnings = [r.getMessage() for r in caplog.records if r.name == "gust.watchdog"]
    assert len(warnings) == 1, warnings
    assert "and still is" in warnings[0] and "block_the_loop_on_purpose" in warnings[0]
    assert gust.watchdog is not None and gust.watchdog.incidents == 1


@pytest.mark.gen_test
@pytest.mark.parametrize("config_overrides", [{"watchdog": {"enabled": False}}])
async def test_watchdog_can_be_turned_off(gust: Gust, config_overrides) -> None:
    assert gust.watchdog is None


@pytest.mark.gen_test(timeout=20)
async def test_incidents_soon_after_a_warning_are_counted_and_summed_up_in_the_next_one(
    gust: Gust, base_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saturated loop is late on most ticks: one warning, then only counting until REPORT_EVERY has passed."""
    caplog.set_level(logging.WARNING, logger="gust.watchdog")
    await asyncio.sleep(0.2)
    caplog.clear()
    block_the_loop_on_purpose(0.3)
    assert len(await watchdog_warnings(caplog, 1)) == 1
    for _ in range(2):
        await asyncio.sleep(0.2)
        block_the_loop_on_purpose(0.3)
    await asyncio.sleep(0.3)
    assert len([r for r in caplog.records if r.name == "gust.watchdog"]) == 1
    assert gust.watchdog is not None and gust.watchdog.incidents == 3
    assert value(await scrape(base_url), "gust_event_loop_blocked_total") == 3
    monkeypatch.setattr(watchdog, "REPORT_EVERY", 0.0)
    block_the_loop_on_purpose(0.3)
    warnings = await watchdog_warnings(caplog, 2)
    assert len(warnings) == 2 and "(2 more since the last warning, not shown)" in warnings[1], warnings
    assert "block_the_loop_on_purpose" in warnings[1]
