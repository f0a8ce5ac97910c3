"""What reaches every node: control messages through the engine, the registry of live nodes, and surveys.

- `send(op, params)` publishes a control message; every node (this one included, through the same path) runs
  the operation registered for `op` on its own connections. The server API's `disconnect`, `unsubscribe`,
  `subscribe` and `refresh` go this way, so they reach a user's connections on any node.
- Each node announces itself (its `info` numbers) at start and every `interval`; a node not heard from for three
  intervals is dropped, and a stopping node says goodbye. A node that hears an unknown node answers at once
  with its own announcement, so a new node learns the others within one round trip.
- `survey(kind, params)` asks every live node and collects their answers (bounded by a timeout): the server
  API's `channels` uses it.
With the memory engine there is one node and no announcements; control messages come straight back.

Owns: `Cluster`. May import: engines, config (the node is passed in, typed only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from . import __version__
from .engines import EngineError

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("gust.cluster")
NODE_INFO_INTERVAL = 3.0  # seconds between announcements
SURVEY_TIMEOUT = 3.0  # seconds to wait for every node's answer
ControlOp = Callable[["Node", dict[str, Any]], Awaitable[None]]
SurveyOp = Callable[["Node", dict[str, Any]], Awaitable[dict[str, Any]]]


class Cluster:
    def __init__(self, node: Node, interval: float = NODE_INFO_INTERVAL) -> None:
        self._node = node
        self.interval = interval
        self.ops: dict[str, ControlOp] = {}  # registered by the application (api_methods.CONTROL_OPS)
        self.surveys: dict[str, SurveyOp] = {}
        self._others: dict[str, tuple[dict[str, Any], float]] = {}  # uid → (info, expires at, monotonic)
        self._waiting: dict[str, tuple[set[str], dict[str, dict[str, Any]], asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.name = f"{socket.gethostname()}_{node.config.http_server.port}"
        if node.config.http_server.workers > 1:
            self.name += f"_{os.getpid()}"

    @property
    def single(self) -> bool:
        return self._node.config.engine.type == "memory"

    async def start(self) -> None:
        if not self.single:
            self._task = asyncio.create_task(self._announce_forever(), name="gust-cluster-announce")

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(EngineError):
            await asyncio.wait_for(self._publish("bye", {}), 1.0)

    # --- sending ---------------------------------------------------------------------------------------------

    async def send(self, op: str, params: dict[str, Any]) -> None:
        """Run `op` with `params` on every node (EngineError when the message cannot be sent)."""
        await self._publish(op, params)

    async def _publish(self, op: str, params: dict[str, Any], **extra: Any) -> None:
        message = {"op": op, "from": self._node.uid, "params": params, **extra}
        await self._node.engine.publish_control(orjson.dumps(message))

    async def _announce_forever(self) -> None:
        failing = False
        while True:
            try:
                await self._publish("node", self.info())
                failing = False
            except EngineError as exc:
                if not failing:
                    log.warning("cannot announce this node: %s", exc)
                failing = True
            await asyncio.sleep(self.interval)

    # --- receiving -------------------------------------------------------------------------------------------

    async def handle(self, data: bytes) -> None:
        """A control message from any node."""
        try:
            message = orjson.loads(data)
            op, sender, params = message["op"], message["from"], message["params"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring a malformed control message (%d bytes)", len(data))
            return
        if op == "node":
            if sender != self._node.uid:
                await self._heard(sender, params)
        elif op == "bye":
            self._others.pop(sender, None)
        elif op == "survey":
            await self._answer(sender, message.get("id", ""), message.get("kind", ""), params)
        elif op == "survey_reply":
            self._collect(sender, message.get("id", ""), message.get("to", ""), params)
        elif op in self.ops:
            await self.ops[op](self._node, params)
        else:
            log.warning("ignoring control message %r from node %s", op, sender)

    async def _heard(self, sender: str, info: dict[str, Any]) -> None:
        new = sender not in self._others
        self._others[sender] = (info, time.monotonic() + 3 * self.interval)
        if new:
            log.info("node %s (%s) joined", info.get("name", "?"), sender)
            with contextlib.suppress(EngineError):
                await self._publish("node", self.info())

    # --- the registry ----------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """This node's entry of the `info` API."""
        node, hub = self._node, self._node.hub
        return {"uid": node.uid, "name": self.name, "version": __version__, "num_clients": hub.num_clients,
                "num_users": hub.num_users, "num_channels": hub.num_channels, "num_subs": hub.num_subscriptions,
                "uptime": node.uptime()}

    def others(self) -> list[str]:
        now = time.monotonic()
        for uid in [uid for uid, (_, expires) in self._others.items() if expires <= now]:
            log.info("node %s stopped announcing itself: dropped", uid)
            del self._others[uid]
        return list(self._others)

    def nodes(self) -> list[dict[str, Any]]:
        """Every live node's `info` entry, this one first (fresh) and the others as last announced."""
        return [self.info(), *(self._others[uid][0] for uid in self.others())]

    # --- surveys ---------------------------------------------------------------------------------------------

    async def survey(self, kind: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every live node's answer to `kind` (this node's first); nodes that do not answer within
        SURVEY_TIMEOUT are left out (and logged)."""
        local = await self.surveys[kind](self._node, params)
        others = set(self.others())
        if not others:
            return [local]
        survey_id = uuid.uuid4().hex
        answers: dict[str, dict[str, Any]] = {}
        done = asyncio.Event()
        self._waiting[survey_id] = (others, answers, done)
        try:
            await self._publish("survey", params, id=survey_id, kind=kind)
            await asyncio.wait_for(done.wait(), SURVEY_TIMEOUT)
        except TimeoutError:
            log.warning("survey %s: no answer from %d node(s)", kind, len(others - set(answers)))
        finally:
            del self._waiting[survey_id]
        return [local, *answers.values()]

    async def _answer(self, sender: str, survey_id: str, kind: str, params: dict[str, Any]) -> None:
        if sender == self._node.uid:
            return
        handler = self.surveys.get(kind)
        if handler is None:
            return
        result = await handler(self._node, params)
        with contextlib.suppress(EngineError):
            await self._publish("survey_reply", result, id=survey_id, to=sender)

    def _collect(self, sender: str, survey_id: str, to: str, result: dict[str, Any]) -> None:
        if to != self._node.uid or survey_id not in self._waiting:
            return
        expected, answers, done = self._waiting[survey_id]
        answers[sender] = result
        if expected <= set(answers):
            done.set()
