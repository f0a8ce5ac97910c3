"""The chat page in real Chromium (Debian's /usr/bin/chromium via playwright) against Gust in a subprocess.

Each test uses its own room and users. Screenshots of the key states go to test-artifacts/ (not committed).
Every page is watched for script errors, CSP violations and dialogs (an `alert` would mean injected HTML ran).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import screenshot
from .procs import Api, GustProcess

pytestmark = pytest.mark.browser

WAIT_MS = 15000
_rooms = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GustProcess]:
    proc = GustProcess(Path(tmp_path_factory.mktemp("chat-browser")), extra={
        "chat": {"enabled": True, "message_rate_burst": 60, "message_rate_per_minute": 60,
                 "max_message_length": 300},
        "client": {"allow_anonymous_connect_without_token": False},
    }).start()
    yield proc
    proc.terminate()
    proc.wait_exit(10)


@pytest.fixture(scope="module")
def api(server: GustProcess) -> Api:
    return Api(server.port)


class ChatPage:
    """One person in one browser context, with everything that went wrong on their page."""

    def __init__(self, browser: Any, base: str, viewport: dict[str, int] | None = None) -> None:
        self.context = browser.new_context(viewport=viewport or {"width": 1100, "height": 700})
        self.page = self.context.new_page()
        self.base = base
        self.problems: list[str] = []
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.on("console", self._console)
        self.page.on("dialog", self._dialog)

    def _console(self, msg: Any) -> None:
        if msg.type == "error" or "Content Security Policy" in msg.text:
            if "WebSocket" in msg.text and "ERR_INTERNET_DISCONNECTED" in msg.text:
                return  # expected while a test holds the context offline
            if any(f"status of {code}" in msg.text for code in (400, 413, 429)):
                return  # refusals the tests ask for (bad nickname, too long, too fast): the page shows them
            self.problems.append(f"console {msg.type}: {msg.text}")

    def _dialog(self, dialog: Any) -> None:
        self.problems.append(f"dialog opened: {dialog.message}")
        dialog.dismiss()

    def login(self, nickname: str, room: str) -> ChatPage:
        self.page.goto(self.base + "/")
        self.page.fill("#nickname", nickname)
        self.page.press("#nickname", "Enter")
        self.page.wait_for_url(f"{self.base}/chat*")
        self.page.goto(f"{self.base}/chat#{room}")
        self.wait_connected()
        self.page.wait_for_function("() => window.gustChat.room.sub && window.gustChat.room.sub.state === 'subscribed'",
                                    timeout=WAIT_MS)
        return self

    def wait_connected(self) -> None:
        self.page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)

    def send(self, text: str) -> None:
        self.page.fill("#text", text)
        self.page.press("#text", "Enter")

    def wait_message(self, text: str) -> None:
        self.page.wait_for_function(
            "text => [...document.querySelectorAll('#messages .bubble')].some(b => b.textContent === text)",
            arg=text, timeout=WAIT_MS)

    def texts(self) -> list[str]:
        return list(self.page.eval_on_selector_all("#messages li.message .bubble",
                                                   "els => els.map(e => e.textContent)"))

    def online(self) -> list[str]:
        return list(self.page.eval_on_selector_all("#online li", "els => els.map(e => e.firstChild.textContent)"))

    def wait_online(self, users: list[str]) -> None:
        self.page.wait_for_function(
            "users => JSON.stringify([...document.querySelectorAll('#online li')].map(e => e.firstChild.textContent))"
            " === JSON.stringify(users)", arg=sorted(users), timeout=WAIT_MS)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def people(browser: Any, server: GustProcess) -> Iterator[Any]:
    opened: list[ChatPage] = []

    def open_page(viewport: dict[str, int] | None = None) -> ChatPage:
        page = ChatPage(browser, f"http://127.0.0.1:{server.port}", viewport)
        opened.append(page)
        return page

    yield open_page
    problems = [p for page in opened for p in page.problems]
    for page in opened:
        page.close()
    assert not problems, problems


def new_room() -> str:
    return f"room{next(_rooms)}"


def test_login_page_refuses_a_bad_nickname_with_a_message(people: Any) -> None:
    person = people()
    page = person.page
    page.goto(person.base + "/")
    screenshot(page, "01-login")
    page.fill("#nickname", "no spaces allowed")
    page.press("#nickname", "Enter")
    error = page.wait_for_selector("#nickname-error", timeout=WAIT_MS)
    assert "Use letters" in error.inner_text()
    assert page.get_attribute("#nickname", "aria-invalid") == "true"
    screenshot(page, "02-login-refused")


def test_two_people_see_each_other_and_chat_both_ways(people: Any) -> None:
    room = new_room()
    alice = people().login("alice", room)
    bob = people().login("bob", room)
    alice.wait_online(["alice", "bob"])
    bob.wait_online(["alice", "bob"])
    alice.page.wait_for_selector("#messages .notice >> text=bob joined", timeout=WAIT_MS)

    alice.send("Hi Bob!")
    bob.wait_message("Hi Bob!")
    bob.send("Hello Alice, how are you?")
    alice.wait_message("Hello Alice, how are you?")
    assert alice.texts() == bob.texts() == ["Hi Bob!", "Hello Alice, how are you?"]
    # Own messages are marked (and shown as "You"); the other person's carry their name.
    assert alice.page.eval_on_selector_all("#messages li.mine .bubble", "els => els.map(e => e.textContent)") == [
        "Hi Bob!"]
    assert bob.page.inner_text("#messages li.message:not(.mine) .author") == "alice"
    alice.page.wait_for_selector(f"#room-list button[aria-current=true] >> text={room}", timeout=WAIT_MS)
    screenshot(alice.page, "03-two-people-chatting")

    bob.close()
    alice.wait_online(["alice"])
    alice.page.wait_for_selector("#messages .notice >> text=bob left", timeout=WAIT_MS)


def test_a_later_joiner_sees_the_last_messages_from_history(people: Any) -> None:
    room = new_room()
    hana = people().login("hana", room)
    for i in range(55):
        hana.send(f"message {i}")
    hana.wait_message("message 54")
    carol = people().login("carol", room)
    carol.page.wait_for_function("() => document.querySelectorAll('#messages li.message').length === 50",
                                 timeout=WAIT_MS)
    assert carol.texts() == [f"message {i}" for i in range(5, 55)]  # the last 50, oldest first
    carol.wait_online(["carol", "hana"])
    screenshot(carol.page, "04-history-on-join")


def test_reconnect_after_a_server_disconnect_fills_in_missed_messages_once(people: Any, api: Api) -> None:
    room = new_room()
    alice = people().login("alice", room)
    bob = people().login("bob", room)
    alice.send("before the cut")
    bob.wait_message("before the cut")

    bob.context.set_offline(True)  # keep bob away for a while once the server has cut him off
    api.call("disconnect", {"user": "bob", "disconnect": {"code": 3000, "reason": "test cut"}})
    bob.page.wait_for_selector('#status[data-state="reconnecting"]', timeout=WAIT_MS)
    missed = [f"missed {i}" for i in range(5)]
    for text in missed:
        alice.send(text)
    alice.wait_message(missed[-1])
    screenshot(bob.page, "05-reconnecting")

    bob.context.set_offline(False)
    bob.wait_connected()
    bob.wait_message(missed[-1])
    alice.send("after the reconnect")
    bob.wait_message("after the reconnect")
    expected = ["before the cut", *missed, "after the reconnect"]
    assert bob.texts() == expected  # every missed message, in order, exactly once
    assert alice.texts() == expected
    screenshot(bob.page, "06-reconnected")


def test_html_in_messages_and_names_is_shown_as_text(people: Any) -> None:
    room = new_room()
    alice = people().login("alice", room)
    bob = people().login("bob", room)
    payload = "<img src=x onerror=alert(1)>"
    alice.send(payload)
    bob.wait_message(payload)
    assert bob.page.query_selector("#messages img") is None
    assert bob.page.inner_text("#messages li.message .bubble") == payload
    screenshot(bob.page, "07-html-as-text")
    # the `people` fixture fails the test if a dialog opened or a script error happened


def test_an_overlong_message_gets_a_friendly_error_and_is_not_sent(people: Any) -> None:
    room = new_room()
    alice = people().login("alice", room)
    alice.send("x" * 301)
    error = alice.page.wait_for_selector("#send-error", state="visible", timeout=WAIT_MS)
    assert "limit is 300" in error.inner_text()
    assert alice.page.input_value("#text") == "x" * 301  # kept, so it can be shortened
    assert "over" in (alice.page.get_attribute("#counter", "class") or "")
    screenshot(alice.page, "08-too-long")
    alice.send("short enough")
    alice.wait_message("short enough")
    assert alice.page.is_hidden("#send-error")
    assert alice.texts() == ["short enough"]


def test_rate_limit_shows_the_servers_message(people: Any, server: GustProcess) -> None:
    room = new_room()
    alice = people().login("ratey", room)
    for i in range(100):  # the burst is 60 in this server's config, refilled at 1/s
        alice.send(f"fast {i}")
        if alice.page.is_visible("#send-error"):
            break
    error = alice.page.wait_for_selector("#send-error", state="visible", timeout=WAIT_MS)
    assert "too fast" in error.inner_text()


def test_keyboard_only_and_phone_sized_screen(people: Any) -> None:
    room = new_room()
    phone = people({"width": 390, "height": 760}).login("dana", room)
    page = phone.page
    assert page.is_hidden("#rooms-panel") and page.is_hidden("#people-panel")
    # Open the rooms panel from the keyboard, create a room by name, send a message: no mouse.
    page.focus("#toggle-rooms")
    page.keyboard.press("Enter")
    page.wait_for_selector("#rooms-panel.open", timeout=WAIT_MS)
    screenshot(page, "09-phone-rooms")
    page.focus("#join-room")
    page.keyboard.type(f"{room}-k")
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => window.gustChat.room.name === '{room}-k'", timeout=WAIT_MS)
    assert page.is_hidden("#rooms-panel")
    page.focus("#text")
    page.keyboard.type("typed with the keyboard")
    page.keyboard.press("Enter")
    phone.wait_message("typed with the keyboard")
    screenshot(page, "10-phone-chat")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390  # nothing sticks out sideways


def test_logout_returns_to_the_landing_page(people: Any) -> None:
    person = people().login("erin", new_room())
    person.page.click("form.logout button")
    person.page.wait_for_selector("#nickname", timeout=WAIT_MS)
    person.page.goto(person.base + "/chat")
    assert person.page.url.rstrip("/") == person.base  # logged out: back to the landing page
