"""Centrifugo's permission order for subscribe, publish, history and presence, as a table: namespaces ×
identities (anonymous, users, subscribers, subscription-token holders) × operations → "ok" or an error code.

One server serves the main matrix (module-level `config_overrides`); `client.insecure` gets a second, smaller
matrix. Every case runs on a fresh connection, so no case sees another's subscriptions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest

from .conftest import SECRET
from .wsclient import Closed, RawClient

ClientFactory = Callable[..., Awaitable[RawClient]]

ENABLED = {"presence": True, "history_size": 10, "history_ttl": "1h"}
ALL_FOR_CLIENT = {f"allow_{op}_for_client": True for op in ("subscribe", "publish", "history", "presence")}
ALL_FOR_ANONYMOUS = {f"allow_{op}_for_anonymous": True for op in ("subscribe", "publish", "history", "presence")}
ALL_FOR_SUBSCRIBER = {f"allow_{op}_for_subscriber": True for op in ("publish", "history", "presence")}

NAMESPACES: dict[str, dict[str, Any]] = {
    "closed": {**ENABLED},
    "client": {**ENABLED, **ALL_FOR_CLIENT},
    "anon": {**ENABLED, **ALL_FOR_CLIENT, **ALL_FOR_ANONYMOUS},
    "subscriber": {**ENABLED, "allow_subscribe_for_client": True, **ALL_FOR_SUBSCRIBER},
    "anonsub": {**ENABLED, "allow_subscribe_for_client": True, **ALL_FOR_SUBSCRIBER, **ALL_FOR_ANONYMOUS},
    "limited": {**ENABLED, "allow_user_limited_channels": True},
    "bare": {**ALL_FOR_CLIENT},  # no presence, no history: 108 before any permission check
}
CONFIG: dict[str, Any] = {"channel": {"namespaces": [{"name": name, **opts} for name, opts in NAMESPACES.items()]}}
INSECURE_CONFIG: dict[str, Any] = {**CONFIG, "client": {"insecure": True}}


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return CONFIG


# The channel each table row works on.
CHANNELS = {
    "closed": "closed:room",
    "client": "client:room",
    "anon": "anon:room",
    "subscriber": "subscriber:room",
    "anonsub": "anonsub:room",
    "limited": "limited:room#alice,bob",
    "closed#": "closed:room#alice,bob",  # user-limited name, but the namespace does not allow such channels
    "bare": "bare:room",
    "$anon": "$anon:room",  # private: a token is needed to subscribe, whatever the namespace allows
    "$closed": "$closed:room",
    "unknown": "nope:room",
}

# identity → (user, how it subscribed to the row's channel before the operation: "", "plain" or "token").
# The user "" is anonymous (no connection token); "token" means a subscription token for that user.
IDENTITIES: dict[str, tuple[str, str]] = {
    "anonymous": ("", ""),
    "user": ("alice", ""),
    "carol": ("carol", ""),  # a user not listed in limited:room#alice,bob
    "subscriber": ("alice", "plain"),
    "token_holder": ("alice", "token"),
    "anon_subscriber": ("", "plain"),
    "anon_token_holder": ("", "token"),
}

OPS = ("subscribe", "subscribe_token", "publish", "history", "presence", "presence_stats")

# row  identity  → subscribe, subscribe with a subscription token, publish, history, presence, presence_stats.
# "-": not applicable (the identity is already subscribed to the channel).
MATRIX = """
closed      anonymous          103 ok  103 103 103 103
closed      user               103 ok  103 103 103 103
closed      token_holder       -   -   103 103 103 103
closed      anon_token_holder  -   -   103 103 103 103

client      anonymous          103 ok  103 103 103 103
client      user               ok  ok  ok  ok  ok  ok
client      subscriber         -   -   ok  ok  ok  ok
client      token_holder       -   -   ok  ok  ok  ok
client      anon_token_holder  -   -   103 103 103 103

anon        anonymous          ok  ok  ok  ok  ok  ok
anon        user               ok  ok  ok  ok  ok  ok
anon        subscriber         -   -   ok  ok  ok  ok
anon        token_holder       -   -   ok  ok  ok  ok
anon        anon_subscriber    -   -   ok  ok  ok  ok
anon        anon_token_holder  -   -   ok  ok  ok  ok

subscriber  anonymous          103 ok  103 103 103 103
subscriber  user               ok  ok  103 103 103 103
subscriber  subscriber         -   -   ok  ok  ok  ok
subscriber  token_holder       -   -   ok  ok  ok  ok
subscriber  anon_token_holder  -   -   103 103 103 103

anonsub     anonymous          ok  ok  103 103 103 103
anonsub     user               ok  ok  103 103 103 103
anonsub     subscriber         -   -   ok  ok  ok  ok
anonsub     token_holder       -   -   ok  ok  ok  ok
anonsub     anon_subscriber    -   -   ok  ok  ok  ok
anonsub     anon_token_holder  -   -   ok  ok  ok  ok

limited     anonymous          103 ok  103 103 103 103
limited     user               ok  ok  103 103 103 103
limited     carol              103 ok  103 103 103 103
limited     subscriber         -   -   103 103 103 103
limited     token_holder       -   -   103 103 103 103
limited     anon_token_holder  -   -   103 103 103 103

closed#     anonymous          103 ok  103 103 103 103
closed#     user               103 ok  103 103 103 103

bare        anonymous          103 ok  103 108 108 108
bare        user               ok  ok  ok  108 108 108
bare        subscriber         -   -   ok  108 108 108
bare        token_holder       -   -   ok  108 108 108
bare        anon_token_holder  -   -   103 108 108 108

$anon       anonymous          103 ok  ok  ok  ok  ok
$anon       user               103 ok  ok  ok  ok  ok
$anon       token_holder       -   -   ok  ok  ok  ok
$anon       anon_token_holder  -   -   ok  ok  ok  ok

$closed     anonymous          103 ok  103 103 103 103
$closed     user               103 ok  103 103 103 103
$closed     token_holder       -   -   103 103 103 103

unknown     anonymous          102 102 102 102 102 102
unknown     user               102 102 102 102 102 102
"""

# With client.insecure everything is allowed (also `$` channels without a token); 108 and 102 stay.
INSECURE_MATRIX = """
closed      anonymous          ok  ok  ok  ok  ok  ok
closed      user               ok  ok  ok  ok  ok  ok
limited     anonymous          ok  ok  ok  ok  ok  ok
$closed     anonymous          ok  ok  ok  ok  ok  ok
bare        anonymous          ok  ok  ok  108 108 108
unknown     anonymous          102 102 102 102 102 102
"""

Case = tuple[str, str, str, str]  # row, identity, op, expected


def parse(matrix: str) -> list[Case]:
    cases: list[Case] = []
    for line in matrix.strip().splitlines():
        if not line.strip():
            continue
        row, identity, *outcomes = line.split()
        assert row in CHANNELS and identity in IDENTITIES and len(outcomes) == len(OPS), line
        cases += [(row, identity, op, want) for op, want in zip(OPS, outcomes, strict=True) if want != "-"]
    return cases


CASES = parse(MATRIX)
INSECURE_CASES = parse(INSECURE_MATRIX)


def case_id(case: Case) -> str:
    return f"{case[0]}-{case[1]}-{case[2]}"


# --- the rules, stated once more independently of the table, to catch typos in it -----------------------------


def rule(row: str, identity: str, op: str, insecure: bool = False) -> str:
    """Centrifugo's order, from the namespace options (not from the server)."""
    channel = CHANNELS[row]
    user, held = IDENTITIES[identity]
    opts = NAMESPACES.get(channel.lstrip("$").split(":", 1)[0])
    if opts is None:
        return "102"
    if op == "subscribe_token":
        return "ok"
    if op == "subscribe":
        if insecure:
            return "ok"
        if channel.startswith("$"):
            return "103"
        listed = channel.rsplit("#", 1)[1].split(",") if "#" in channel else []
        if opts.get("allow_user_limited_channels") and user in listed:
            return "ok"
        allowed = opts.get("allow_subscribe_for_client") and (user or opts.get("allow_subscribe_for_anonymous"))
        return "ok" if allowed else "103"
    kind = "presence" if op.startswith("presence") else op
    enabled = {"publish": True, "history": bool(opts.get("history_size")), "presence": bool(opts.get("presence"))}
    if not enabled[kind]:
        return "108"
    if insecure:
        return "ok"
    granted = opts.get(f"allow_{kind}_for_client") or (opts.get(f"allow_{kind}_for_subscriber") and bool(held))
    return "ok" if granted and (user or opts.get(f"allow_{kind}_for_anonymous")) else "103"


def test_matrix_follows_the_rules() -> None:
    wrong = [(case, rule(*case[:3])) for case in CASES if rule(*case[:3]) != case[3]]
    wrong += [(case, rule(*case[:3], insecure=True)) for case in INSECURE_CASES
              if rule(*case[:3], insecure=True) != case[3]]
    assert not wrong, "table entries that contradict the rules (case, rule): " + repr(wrong)
    # subscribed identities appear only where they could subscribe
    for row, identity, _, _ in CASES:
        user, held = IDENTITIES[identity]
        if held == "plain":
            assert rule(row, "anonymous" if not user else "user", "subscribe") == "ok", (row, identity)


# --- running a case ----------------------------------------------------------------------------------------------


def connection_token(user: str) -> str:
    return jwt.encode({"sub": user}, SECRET, algorithm="HS256")


def subscription_token(user: str, channel: str) -> str:
    return jwt.encode({"sub": user, "channel": channel}, SECRET, algorithm="HS256")


def outcome(reply: dict[str, Any]) -> str:
    return str(reply["error"]["code"]) if "error" in reply else "ok"


def params(op: str, channel: str, user: str) -> tuple[str, dict[str, Any]]:
    if op == "subscribe_token":
        return "subscribe", {"channel": channel, "token": subscription_token(user, channel)}
    extras: dict[str, dict[str, Any]] = {"publish": {"data": {"x": 1}}, "history": {"limit": 1}}
    extra = extras.get(op, {})
    return op, {"channel": channel, **extra}


async def run_case(client_factory: ClientFactory, row: str, identity: str, op: str) -> str:
    channel = CHANNELS[row]
    user, held = IDENTITIES[identity]
    client = await client_factory()
    await client.connect(**({"token": connection_token(user)} if user else {}))
    if held:
        method, setup = params("subscribe_token" if held == "token" else "subscribe", channel, user)
        reply = await client.command(method, setup)
        assert "subscribe" in reply, f"{identity} could not subscribe to {channel}: {reply}"
    method, body = params(op, channel, user)
    try:
        got = outcome(await client.command(method, body))
        if method == "subscribe" and got == "ok":  # leave the connection clean
            assert "unsubscribe" in await client.command("unsubscribe", {"channel": channel})
    except Closed as exc:
        got = f"closed {exc.code}"
    return got


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(("row", "identity", "op", "expected"), CASES, ids=[case_id(c) for c in CASES])
async def test_permission(client_factory, row: str, identity: str, op: str, expected: str) -> None:
    got = await run_case(client_factory, row, identity, op)
    assert got == expected, f"{op} on {CHANNELS[row]!r} as {identity}: expected {expected}, got {got}"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("config_overrides", [INSECURE_CONFIG], ids=["insecure"])
@pytest.mark.parametrize(("row", "identity", "op", "expected"), INSECURE_CASES,
                         ids=[case_id(c) for c in INSECURE_CASES])
async def test_permission_insecure(client_factory, config_overrides, row: str, identity: str, op: str,
                                   expected: str) -> None:
    got = await run_case(client_factory, row, identity, op)
    assert got == expected, f"insecure: {op} on {CHANNELS[row]!r} as {identity}: expected {expected}, got {got}"
