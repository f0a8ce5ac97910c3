"""Scrape a server's `/metrics` and read samples by name and labels (with prometheus_client's own parser)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample `name{labels}` (0 when absent: a labelled counter appears with its first increment)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(base_url: str) -> Samples:
    client = AsyncHTTPClient(force_instance=True)
    try:
        resp = await client.fetch(f"{base_url}/metrics", request_timeout=10)
    finally:
        client.close()
    return parse(resp.body.decode())


def scrape_sync(base_url: str) -> Samples:
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=10) as resp:
        return parse(resp.read().decode())


async def wait_for(base_url: str, check: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """Scrape until `check` holds (at most `timeout` seconds); the last scrape either way."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(base_url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.05)
