"""Prometheus metrics of one Gust node, in a `CollectorRegistry` of its own (never the global one).

Owns: `Metrics`, with one named method per event so callers never touch prometheus_client. Labels are bounded:
a channel's namespace (never its name), a method of the client protocol or the server API, a numeric code,
a refusal reason. The only module that imports prometheus_client. May import: nothing else from the package.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.connections = Gauge("gust_connections", "Open WebSocket connections (before and after connect)",
                                 registry=r)
        self.clients = Gauge("gust_clients", "Connected clients (connect accepted) on this node", registry=r)
        self.users = Gauge("gust_users", "Distinct users among the connected clients", registry=r)
        self.channels = Gauge("gust_channels", "Channels with at least one local subscriber", registry=r)
        self.subscriptions = Gauge("gust_subscriptions", "Client subscriptions on this node", registry=r)
        self._messages_in = Counter("gust_messages_in", "Publications accepted (client or API), by namespace",
                                    ["namespace"], registry=r)
        self._messages_out = Counter("gust_messages_out", "Publications handed to local subscribers, by namespace",
                                     ["namespace"], registry=r)
        self._broadcast = Histogram("gust_broadcast_duration_seconds",
                                    "Time to hand one publication to every local subscriber", ["namespace"],
                                    buckets=DURATION_BUCKETS, registry=r)
        self._commands = Histogram("gust_command_duration_seconds", "Command handling time, by transport and method",
                                   ["transport", "method"], buckets=DURATION_BUCKETS, registry=r)
        self._errors = Counter("gust_errors", "Error replies, by transport and error code", ["transport", "code"],
                               registry=r)
        self._disconnects = Counter("gust_disconnects", "Closed WebSocket connections, by close code", ["code"],
                                    registry=r)
        self._refused = Counter("gust_connections_refused", "WebSocket upgrades refused, by reason", ["reason"],
                                registry=r)
        self._engine_errors = Counter("gust_engine_errors", "Engine failures, by the method that met them",
                                      ["method"], registry=r)
        self._lag = Histogram("gust_event_loop_lag_seconds", "How late the event loop ran the watchdog's tick",
                              buckets=LAG_BUCKETS, registry=r)
        self._lag_last = Gauge("gust_event_loop_lag_last_seconds", "Lateness of the watchdog's latest tick",
                               registry=r)
        self._blocked = Counter("gust_event_loop_blocked", "Incidents of the loop blocked beyond the lag threshold",
                                registry=r)

    def track(self, *, connections: Callable[[], float], clients: Callable[[], float],
              users: Callable[[], float], channels: Callable[[], float], subscriptions: Callable[[], float]) -> None:
        """Gauges read at scrape time from the objects that own the numbers."""
        self.connections.set_function(connections)
        self.clients.set_function(clients)
        self.users.set_function(users)
        self.channels.set_function(channels)
        self.subscriptions.set_function(subscriptions)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """Every metric, in the exposition format the `Accept` header asks for (Prometheus text 0.0.4 by
        default, OpenMetrics on request); the body and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    # events

    def message_in(self, namespace: str) -> None:
        self._messages_in.labels(namespace).inc()

    def broadcast(self, namespace: str, receivers: int, seconds: float) -> None:
        self._messages_out.labels(namespace).inc(receivers)
        self._broadcast.labels(namespace).observe(seconds)

    def command(self, transport: str, method: str, seconds: float) -> None:
        self._commands.labels(transport, method).observe(seconds)

    def error(self, transport: str, code: int) -> None:
        self._errors.labels(transport, str(code)).inc()

    def disconnect(self, code: str) -> None:
        self._disconnects.labels(code).inc()

    def refused(self, reason: str) -> None:
        self._refused.labels(reason).inc()

    def engine_error(self, method: str) -> None:
        self._engine_errors.labels(method).inc()

    def loop_lag(self, seconds: float) -> None:
        self._lag.observe(seconds)
        self._lag_last.set(seconds)

    def loop_blocked(self) -> None:
        self._blocked.inc()
