"""Event recorders for the centrifuge-python SDK: every client and subscription event is kept, in lists (with
the time it arrived, where tests compare it with a deadline) and in queues to await; `sdk_client` opens a
connected client with them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    ErrorContext,
    JoinContext,
    LeaveContext,
    Publication,
    PublicationContext,
    SubscribedContext,
    SubscribingContext,
    SubscriptionErrorContext,
    SubscriptionEventHandler,
    UnsubscribedContext,
)

T = TypeVar("T")
WAIT = 5.0


async def next_event(queue: asyncio.Queue[T], timeout: float = WAIT) -> T:
    return await asyncio.wait_for(queue.get(), timeout)


@asynccontextmanager
async def sdk_client(url: str, **kwargs: Any) -> AsyncIterator[tuple[Client, ClientEvents, ConnectedContext]]:
    """A connected SDK client (no proxy from the environment; `kwargs` go to `Client`), always disconnected on exit."""
    events = ClientEvents()
    client = Client(url, events=events, proxy=None, **kwargs)
    try:
        await client.connect()
        ctx = await next_event(events.connected)
        assert client.state == ClientState.CONNECTED
        yield client, events, ctx
    finally:
        await client.disconnect()
        # Let the SDK's fire-and-forget transport close finish before the loop goes away.
        await asyncio.sleep(0.05)


class ClientEvents(ClientEventHandler):
    def __init__(self) -> None:
        self.connected: asyncio.Queue[ConnectedContext] = asyncio.Queue()
        self.connecting: list[ConnectingContext] = []
        self.connecting_at: list[float] = []
        self.disconnected: list[DisconnectedContext] = []
        self.disconnected_q: asyncio.Queue[DisconnectedContext] = asyncio.Queue()
        self.errors: list[ErrorContext] = []

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.connecting.append(ctx)
        self.connecting_at.append(time.time())

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected.put_nowait(ctx)

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.append(ctx)
        self.disconnected_q.put_nowait(ctx)

    async def on_error(self, ctx: ErrorContext) -> None:
        self.errors.append(ctx)


class SubEvents(SubscriptionEventHandler):
    def __init__(self) -> None:
        self.subscribing: list[SubscribingContext] = []
        self.subscribing_at: list[float] = []
        self.subscribing_q: asyncio.Queue[SubscribingContext] = asyncio.Queue()
        self.subscribed: asyncio.Queue[SubscribedContext] = asyncio.Queue()
        self.unsubscribed: asyncio.Queue[UnsubscribedContext] = asyncio.Queue()
        self.pubs: asyncio.Queue[Publication] = asyncio.Queue()
        self.joins: asyncio.Queue[JoinContext] = asyncio.Queue()
        self.leaves: asyncio.Queue[LeaveContext] = asyncio.Queue()
        self.errors: list[SubscriptionErrorContext] = []

    async def on_subscribing(self, ctx: SubscribingContext) -> None:
        self.subscribing.append(ctx)
        self.subscribing_at.append(time.time())
        self.subscribing_q.put_nowait(ctx)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.put_nowait(ctx)

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self.unsubscribed.put_nowait(ctx)

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.pubs.put_nowait(ctx.pub)

    async def on_join(self, ctx: JoinContext) -> None:
        self.joins.put_nowait(ctx)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.leaves.put_nowait(ctx)

    async def on_error(self, ctx: SubscriptionErrorContext) -> None:
        self.errors.append(ctx)

    async def join_of(self, client_id: str) -> JoinContext:
        """The next join event for `client_id` (joins of other clients, e.g. our own, are skipped)."""
        while True:
            ctx = await next_event(self.joins)
            if ctx.info.client == client_id:
                return ctx

    async def leave_of(self, client_id: str) -> LeaveContext:
        while True:
            ctx = await next_event(self.leaves)
            if ctx.info.client == client_id:
                return ctx
