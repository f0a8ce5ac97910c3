"""Channel names: namespace resolution and name rules (Centrifugo semantics). Pure functions.

Owns: `resolve_channel`, `user_limited_allows`, `may`. May import: config, protocol.
"""

from __future__ import annotations

import functools
import re

from .config import ChannelOptions, Config
from .protocol import ErrorCode, ReplyError

PRIVATE_PREFIX = "$"
NAMESPACE_BOUNDARY = ":"
USER_BOUNDARY = "#"
USER_SEPARATOR = ","


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def split_namespace(channel: str) -> tuple[str, str]:
    """("ns", "rest") for "ns:rest" (after an optional private prefix); ("", channel) without a namespace."""
    name = channel[len(PRIVATE_PREFIX):] if channel.startswith(PRIVATE_PREFIX) else channel
    if NAMESPACE_BOUNDARY in name:
        ns, rest = name.split(NAMESPACE_BOUNDARY, 1)
        return ns, rest
    return "", name


def resolve_channel(config: Config, channel: str) -> ChannelOptions:
    """The options of `channel`'s namespace; error 102 for an unknown namespace, 107 for a bad name."""
    if not channel:
        raise ReplyError(ErrorCode.UNKNOWN_CHANNEL, "empty channel name")
    if len(channel.encode()) > config.channel.max_length:
        raise ReplyError(ErrorCode.BAD_REQUEST, f"channel name longer than {config.channel.max_length} bytes")
    ns, rest = split_namespace(channel)
    opts = config.namespace_options(ns)
    if opts is None:
        raise ReplyError(ErrorCode.UNKNOWN_CHANNEL, f"unknown namespace {ns!r}")
    if not channel.isascii():
        raise ReplyError(ErrorCode.BAD_REQUEST, "channel name must be ASCII")
    if opts.channel_regex and not _compiled(opts.channel_regex).fullmatch(rest):
        raise ReplyError(ErrorCode.BAD_REQUEST, "channel name does not match the namespace's channel_regex")
    return opts


def user_limited_allows(opts: ChannelOptions, channel: str, user: str) -> bool:
    """`news#42` is readable by user 42 only, `dialog#42,43` by 42 and 43, when the namespace allows it."""
    if not opts.allow_user_limited_channels or USER_BOUNDARY not in channel or not user:
        return False
    allowed = channel.rsplit(USER_BOUNDARY, 1)[1].split(USER_SEPARATOR)
    return user in allowed


def may(for_subscriber: bool, for_client: bool, for_anonymous: bool, *, subscribed: bool, user: str) -> bool:
    """Centrifugo's allow_*_for_subscriber / _client / _anonymous rule for publish, history and presence."""
    if not (for_client or (for_subscriber and subscribed)):
        return False
    return bool(user) or for_anonymous
