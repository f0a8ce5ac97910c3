"""The public API for embedding Gust in a Tornado application (README "Embedding in a Tornado app").

    from server.embed import Gust, Hooks, ConnectResult, Refuse

    gust = Gust({"channel": {"namespaces": [{"name": "chat"}]}}, hooks=Hooks(on_connecting=..., on_rpc=...))
    await gust.mount(app, "/rt")          # adds /rt/connection/websocket, /rt/api/<method>; starts the node
    await gust.publish("chat:lobby", {"text": "hi"})
    await gust.close()

Owns nothing: re-exports `Gust` (app), `ServerAPI`/`HistoryResult` (pyapi), the hook types (hooks) and the
types the API returns (model, protocol). May import: app, pyapi, hooks, model, protocol, config.
"""

from __future__ import annotations

from .app import Gust
from .config import Config
from .config_load import from_dict
from .hooks import (
    CloseConnection,
    ConnectRequest,
    ConnectResult,
    DisconnectEvent,
    Hooks,
    PublishRequest,
    PublishResult,
    Refuse,
    RpcRequest,
    RpcResult,
    SendRequest,
    SubscribeRequest,
    SubscribeResult,
    UpgradeRequest,
)
from .model import ClientInfo, PresenceStats, Publication, StreamPosition
from .protocol import ErrorCode, ReplyError
from .pyapi import HistoryResult, ServerAPI

__all__ = [
    "ClientInfo", "CloseConnection", "Config", "ConnectRequest", "ConnectResult", "DisconnectEvent", "ErrorCode",
    "Gust", "HistoryResult", "Hooks", "PresenceStats", "Publication", "PublishRequest", "PublishResult", "Refuse",
    "ReplyError", "RpcRequest", "RpcResult", "SendRequest", "ServerAPI", "StreamPosition", "SubscribeRequest",
    "SubscribeResult", "UpgradeRequest", "from_dict",
]
