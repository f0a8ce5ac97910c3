"""Several server processes on one port: with `http_server.workers` > 1, `serve` runs this supervisor instead.

Owns: `supervise`, `watch_supervisor`, `SupervisorError`, `WORKER_ENV`. The supervisor prepares what the workers
share once (the chat's generated secrets in data_dir), then runs `python -m server <the same arguments>` N times
with `GUST_WORKER=<index>` in the environment. A worker serves as one process whatever `workers` says and binds
with SO_REUSEPORT, so the kernel spreads connections across the workers (they share channels, history and
presence through the Redis engine). A worker that dies is restarted after a short backoff; when one keeps dying
right after its start (the port is taken, Redis is unreachable) the supervisor gives up. SIGTERM/SIGINT stop
every worker gracefully. Nothing here blocks for longer than `shutdown.timeout` + 5 s.
May import: config, chat_setup, stdlib.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

from .chat_setup import prepare_chat
from .config import Config

log = logging.getLogger("gust.supervisor")
WORKER_ENV = "GUST_WORKER"  # in a worker's environment: its index, 1..N
SUPERVISOR_ENV = "GUST_SUPERVISOR"  # the supervisor's pid: a worker whose supervisor is gone stops itself
POLL = 0.1  # seconds between looks at the workers and the stop flag
FAST_FAILURE = 5.0  # a worker that dies sooner than this after its start failed to start
MAX_FAST_FAILURES = 3  # that many in a row for one worker: give up
BACKOFF = 0.5  # seconds before a restart, doubled for each fast failure in a row
KILL_GRACE = 5.0  # seconds beyond shutdown.timeout before a worker that does not stop is SIGKILLed


class SupervisorError(Exception):
    """The workers cannot run: a one-line message for stderr, with the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # time.monotonic() of the last start
    fast_failures: int = 0  # deaths in a row within FAST_FAILURE of a start
    restart_at: float = 0.0  # while proc is None: when to start it again


def describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


class Supervisor:
    def __init__(self, config: Config, argv: Sequence[str], environ: Mapping[str, str]) -> None:
        self.config = config
        self.argv = list(argv)
        self.environ = dict(environ)
        self.workers = [Worker(i) for i in range(1, config.http_server.workers + 1)]
        self.stopping = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("received %s: stopping %d workers", signal.Signals(signum).name, len(self.workers))
        self.stopping = True

    def start(self, worker: Worker) -> None:
        env = {**self.environ, WORKER_ENV: str(worker.index), SUPERVISOR_ENV: str(os.getpid())}
        worker.proc = subprocess.Popen([sys.executable, "-m", "server", *self.argv], env=env)
        worker.started = time.monotonic()
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    def check(self, worker: Worker, now: float) -> None:
        """Start a worker whose backoff is over; notice one that died and schedule its restart."""
        if worker.proc is None:
            if now >= worker.restart_at:
                self.start(worker)
            return
        code = worker.proc.poll()
        if code is None:
            return
        pid, worker.proc = worker.proc.pid, None
        what = f"worker {worker.index} (pid {pid}) {describe_exit(code)}"
        if code == 2:  # the config (or a key file it names) is bad: every restart would fail the same way
            raise SupervisorError(f"{what}: a config error (see above)", 2)
        worker.fast_failures = worker.fast_failures + 1 if now - worker.started < FAST_FAILURE else 0
        if worker.fast_failures >= MAX_FAST_FAILURES:
            raise SupervisorError(f"{what}: it failed {MAX_FAST_FAILURES} times in a row within {FAST_FAILURE:g} s "
                                  "of its start, giving up (see its errors above)")
        delay = BACKOFF * 2 ** worker.fast_failures
        log.error("%s; restarting it in %.1f s", what, delay)
        worker.restart_at = now + delay

    def run(self) -> bool:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            try:
                for worker in self.workers:
                    self.start(worker)
                while not self.stopping:
                    time.sleep(POLL)
                    now = time.monotonic()
                    for worker in self.workers:
                        if not self.stopping:
                            self.check(worker, now)
            finally:  # also when giving up: no worker outlives the supervisor
                clean = self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return clean

    def stop(self) -> bool:
        """SIGTERM every running worker and wait for them (SIGKILL after shutdown.timeout + 5 s). True when
        every one exited with 0."""
        running = [w for w in self.workers if w.proc is not None]
        for worker in running:
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGTERM)  # a no-op for one already reaped
        deadline = time.monotonic() + self.config.shutdown.timeout + KILL_GRACE
        clean = True
        for worker in running:
            proc = worker.proc
            assert proc is not None
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop in time: killing it", worker.index, proc.pid)
                proc.kill()
                code = proc.wait()
            worker.proc = None
            if code != 0:
                log.error("worker %d (pid %d) %s", worker.index, proc.pid, describe_exit(code))
                clean = False
        log.info("all workers stopped")
        return clean


def supervise(config: Config, argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Run `http_server.workers` workers until SIGINT/SIGTERM. False when a worker did not stop cleanly.
    Raises `SupervisorError` (and `ConfigError`/`ChatSetupError` from the chat's setup) when they cannot run."""
    workers = config.http_server.workers
    if config.http_server.port == 0:
        raise SupervisorError(f"http_server.port 0 (any free port) cannot be shared by {workers} workers: "
                              "set a fixed port", 2)
    if config.chat.enabled:  # creates the generated secrets in data_dir once; the workers then read them
        prepare_chat(config)
    log.info("supervisor (pid %d) running %d workers on port %d", os.getpid(), workers, config.http_server.port)
    return Supervisor(config, argv, environ).run()


def watch_supervisor(environ: Mapping[str, str]) -> None:
    """In a worker: stop as on SIGTERM once the supervisor is gone, so a killed supervisor leaves no server
    behind still holding the port."""
    try:
        parent = int(environ.get(SUPERVISOR_ENV, ""))
    except ValueError:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("the supervisor (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gust-supervisor-watch", daemon=True).start()
