"""The event-loop lag watchdog: measures how late the loop runs a periodic tick, and names the code that blocked it.

A tick is scheduled on the loop every `watchdog.interval`; when it runs, its lateness goes to the metrics
(`gust_event_loop_lag_seconds`). A daemon thread wakes when the next tick is `lag_threshold` overdue; if the loop
has not ticked by then, it is blocked right now, so the thread samples the loop thread's stack
(`sys._current_frames()`), waits for the loop to come back (at most `REPORT_AFTER`), and logs ONE warning for the
incident with the lag and that stack. A saturated server is late on most ticks: after one warning, incidents in the
next `REPORT_EVERY` seconds are only counted (metric `gust_event_loop_blocked_total`) and summed up in the next
warning; their stacks are not sampled, which would take the GIL from the loop each time.

Owns: `LoopWatchdog`. May import: config, metrics.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

from .config import WatchdogConfig
from .metrics import Metrics

log = logging.getLogger("gust.watchdog")
REPORT_AFTER = 1.0  # seconds: a loop still blocked after this is reported without waiting any longer
STACK_LIMIT = 40  # innermost frames shown
REPORT_EVERY = 10.0  # seconds: at most one warning per this interval; incidents in between are counted


class LoopWatchdog:
    def __init__(self, config: WatchdogConfig, metrics: Metrics) -> None:
        self.interval = config.interval
        self.threshold = config.lag_threshold
        self.metrics = metrics
        self.incidents = 0
        self._due = 0.0  # monotonic time the next tick is scheduled for (written by the loop thread only)
        self._ticks = 0
        self._ticked = threading.Event()
        self._stop = threading.Event()
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._loop_thread_id = 0
        self._reported_at = -REPORT_EVERY  # monotonic time of the last warning
        self._unreported = 0  # incidents since then that were only counted

    def start(self) -> None:
        """Start ticking on the running loop (call from the loop's thread) and start the watching thread."""
        loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        self._due = time.monotonic() + self.interval
        self._handle = loop.call_later(self.interval, self._tick)
        self._thread = threading.Thread(target=self._watch, name="gust-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._stop.set()
        self._ticked.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    def _tick(self) -> None:
        now = time.monotonic()
        self.metrics.loop_lag(max(0.0, now - self._due))
        self._due = now + self.interval
        self._ticks += 1
        self._ticked.set()
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    # --- the watching thread ----------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.is_set():
            ticks, due = self._ticks, self._due
            if self._stop.wait(max(0.0, due + self.threshold - time.monotonic())):
                return
            if self._ticks != ticks or self._due != due:
                continue  # the loop ticked in time
            self._incident(ticks, due)

    def _incident(self, ticks: int, due: float) -> None:
        """The loop has missed a tick by more than the threshold: it is blocked now."""
        self.incidents += 1
        self.metrics.loop_blocked()
        if time.monotonic() - self._reported_at < REPORT_EVERY:
            self._unreported += 1
            self._wait_until_recovered(ticks)
            return
        stack = self._sample()
        recovered = self._wait_for_tick(ticks, REPORT_AFTER)
        blocked_ms = (time.monotonic() - due) * 1000
        status = f"for at least {blocked_ms:.0f} ms" if recovered else f"for over {blocked_ms:.0f} ms and still is"
        more = f" ({self._unreported} more since the last warning, not shown)" if self._unreported else ""
        self._reported_at, self._unreported = time.monotonic(), 0
        log.warning("event loop blocked %s (threshold %.0f ms)%s; the loop was running %s\n"
                    "Stack of the blocking code (innermost call last):\n%s",
                    status, self.threshold * 1000, more, _innermost(stack), "".join(stack.format()).rstrip())
        if not recovered:
            self._wait_until_recovered(ticks)

    def _wait_until_recovered(self, ticks: int) -> None:
        """Return once the loop has ticked since tick number `ticks` (or the watchdog stops): one incident."""
        while not self._stop.is_set() and not self._wait_for_tick(ticks, 1.0):
            pass

    def _wait_for_tick(self, ticks: int, timeout: float) -> bool:
        """True once the loop has ticked since tick number `ticks` (waiting at most `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while self._ticks == ticks and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._ticked.clear()
            if self._ticks == ticks:  # re-checked after clear: a tick in between is not lost
                self._ticked.wait(left)
        return self._ticks != ticks

    def _sample(self) -> traceback.StackSummary:
        frame = sys._current_frames().get(self._loop_thread_id)
        if frame is None:
            return traceback.StackSummary()
        # Source lines are read later, when the warning is formatted, not while the loop waits for the GIL.
        stack = traceback.StackSummary.extract(traceback.walk_stack(frame), limit=STACK_LIMIT, lookup_lines=False)
        stack.reverse()
        return stack


def _innermost(stack: traceback.StackSummary) -> str:
    """`function (file:line)` of the innermost call of a stack."""
    if not stack:
        return "(no Python frame)"
    top = stack[-1]
    return f"{top.name} ({top.filename}:{top.lineno})"
