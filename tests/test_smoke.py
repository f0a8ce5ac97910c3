import pytest

from .wsclient import RawClient


@pytest.mark.gen_test
async def test_connect_subscribe_publish_roundtrip(client_factory) -> None:
    a: RawClient = await client_factory()
    b: RawClient = await client_factory()
    reply = await a.connect()
    assert reply["connect"]["client"]
    await b.connect()
    sub = await a.command("subscribe", {"channel": "chat:x"})
    assert sub["subscribe"]["recoverable"] is True
    await b.command("publish", {"channel": "chat:x", "data": {"text": "hi"}})
    push = await a.push("pub")
    assert push["channel"] == "chat:x"
    assert push["pub"]["data"] == {"text": "hi"}
    assert push["pub"]["offset"] == 1
