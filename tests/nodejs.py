"""Running the JavaScript SDK scripts of tests/js under Node, without blocking the IOLoop the server runs on."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
JS_DIR = REPO_ROOT / "tests" / "js"


def require_node() -> str:
    """The `node` binary; skip (saying how to get it) when Node or the npm packages are missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: install Node.js 20+ and run `make install`")
    if not (JS_DIR / "node_modules" / "centrifuge").is_dir() or not (JS_DIR / "node_modules" / "ws").is_dir():
        pytest.skip("tests/js/node_modules is missing: run `make install` (npm ci in tests/js)")
    return node


async def run_script(
    script: str, *args: str, timeout: float, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run tests/js/`script` with `args`; (exit code, stdout, stderr). Killed (and the test failed, with its
    whole output on stderr) when it runs longer than `timeout` seconds."""
    proc = await asyncio.create_subprocess_exec(
        require_node(), str((JS_DIR / script).relative_to(REPO_ROOT)), *args,
        cwd=REPO_ROOT, env=dict(env) if env is not None else None, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    # Read both pipes to the end in the background, so the whole log is kept even if the script is killed.
    readers = asyncio.gather(proc.stdout.read(), proc.stderr.read())
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        stdout, stderr = await readers
        sys.stderr.write(stdout.decode(errors="replace") + stderr.decode(errors="replace"))
        pytest.fail(f"{script} {' '.join(args)} did not finish within {timeout} s (killed; its log is on stderr)")
    stdout, stderr = await readers
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
