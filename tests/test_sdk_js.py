"""Interoperability with the official JavaScript SDK: runs tests/js/interop.mjs (centrifuge-js over `ws`) in Node."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
JS_DIR = REPO_ROOT / "tests" / "js"
SCRIPT = JS_DIR / "interop.mjs"
SCRIPT_TIMEOUT = 40.0


def _require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: install Node.js 20+ and run `make install`")
    if not (JS_DIR / "node_modules" / "centrifuge").is_dir() or not (JS_DIR / "node_modules" / "ws").is_dir():
        pytest.skip("tests/js/node_modules is missing: run `make install` (npm ci in tests/js)")
    return node


async def _run_script(node: str, ws_url: str, channel: str) -> tuple[int, str, str]:
    """Run the script without blocking the IOLoop (the server under test runs on it); kill it on timeout."""
    proc = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT.relative_to(REPO_ROOT)),
        ws_url,
        channel,
        cwd=REPO_ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    # Read both pipes to the end in the background, so the whole log is kept even if the script is killed.
    readers = asyncio.gather(proc.stdout.read(), proc.stderr.read())
    try:
        await asyncio.wait_for(proc.wait(), SCRIPT_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        _, stderr = await readers
        sys.stderr.write(stderr.decode(errors="replace"))
        pytest.fail(f"interop.mjs did not finish within {SCRIPT_TIMEOUT} s (killed; its log is in the captured stderr)")
    stdout, stderr = await readers
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


@pytest.mark.sdk
@pytest.mark.gen_test(timeout=60)
async def test_centrifuge_js_sdk_interop(ws_url: str) -> None:
    node = _require_node()
    channel = f"chat:js-{secrets.token_hex(4)}"
    code, stdout, stderr = await _run_script(node, ws_url, channel)
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
