"""Interoperability with the official JavaScript SDK: runs tests/js/interop.mjs (centrifuge-js over `ws`) in Node."""

from __future__ import annotations

import json
import secrets
import sys
from typing import Any

import pytest

from .nodejs import run_script

SCRIPT_TIMEOUT = 40.0


@pytest.mark.sdk
@pytest.mark.gen_test(timeout=60)
async def test_centrifuge_js_sdk_interop(ws_url: str) -> None:
    channel = f"chat:js-{secrets.token_hex(4)}"
    code, stdout, stderr = await run_script("interop.mjs", ws_url, channel, timeout=SCRIPT_TIMEOUT)
    sys.stderr.write(stderr)  # the script's step log: shown by pytest when the test fails (or with -s)
    assert code == 0, f"interop.mjs exited with {code} (see its log in the captured stderr)"

    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON summary line on stdout, got {stdout!r}"
    summary: dict[str, Any] = json.loads(lines[0])
    assert summary["ok"] is True
    assert summary["channel"] == channel

    batched = summary["batchedFirstFrame"]
    assert batched["commands"][0] == "connect"
    assert batched["subscribeCount"] >= 2

    clients = summary["clients"]
    assert summary["live"]["infoClient"] == clients["b"]
    assert summary["join"]["client"] == clients["b"]
    assert sorted(summary["presence"]["clients"]) == sorted([clients["a"], clients["b"]])
    assert summary["presence"]["numClients"] == 2
    assert summary["history"]["offsets"] == [summary["live"]["offset"]]

    recovery = summary["recovery"]
    last = recovery["lastOffset"]
    assert recovery["wasRecovering"] is True
    assert recovery["recovered"] is True
    assert recovery["missedOffsets"] == list(range(last + 1, last + 6))
    assert recovery["liveOffsetAfter"] == last + 6
    assert recovery["allOffsets"] == list(range(1, last + 7))
    assert len(set(recovery["clientIds"])) == 2, "A must have reconnected as a new client"
