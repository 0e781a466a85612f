"""The widget in real Chromium against a real gchat server (demo mode).

Each test drives two or more people, each in their own browser context, through the demo pages
(which log in the way Moodle does) with the one <script> tag of static/gchat.js on every page.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import expect

from gchat_browser import ANA, BEN, DAN, EVE, TEREZA, buddy, messages, send, wait_connected, window_with


def transport(page) -> str:
    return page.evaluate("window.gchat.transport")


def test_invisible_when_not_logged_in(browser, server):
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url("/demo"))  # a page of the site, nobody logged in
    page.add_script_tag(url=server.url("/static/gchat.js"))
    page.wait_for_function("window.gchat && window.gchat.state === 'hidden'")
    expect(page.locator("#gchat-root")).to_have_count(0)
    expect(page.locator("link[href$='gchat.css']")).to_have_count(0)
    context.close()


def test_two_users_chat_both_ways_and_buddy_lists_follow_logins(users):
    ana = users(ANA)
    a = ana.page
    expect(a.locator(".gchat-panel")).to_be_visible()
    expect(a.locator(".gchat-empty")).to_have_text(re.compile(r"\S"))  # "No online users." in Ana's Portuguese
    expect(a.locator(".gchat-empty")).to_be_visible()

    dan = users(DAN)
    d = dan.page
    # Ana sees Dan arrive (live presence event); Dan sees Ana (snapshot).
    expect(buddy(a, DAN)).to_have_text("Dan Okafor")
    expect(buddy(d, ANA)).to_have_text("Ana Silva")
    expect(a.locator(".gchat-empty")).to_be_hidden()
    expect(buddy(d, ANA).locator("img")).to_have_attribute("width", "32")
    expect(buddy(d, ANA)).to_have_attribute("aria-label", "Ana Silva, online")

    # Ana opens a chat from the keyboard: Tab to the buddy button, Enter.
    buddy(a, DAN).focus()
    a.keyboard.press("Enter")
    expect(window_with(a, DAN)).to_be_visible()
    expect(window_with(a, DAN)).to_have_attribute("role", "dialog")
    expect(window_with(a, DAN).locator("[role=log]")).to_have_attribute("aria-live", "polite")
    expect(window_with(a, DAN).locator("textarea")).to_be_focused()

    # Shift+Enter is a new line, Enter sends.
    box = window_with(a, DAN).locator("textarea")
    box.type("Olá Dan,")
    box.press("Shift+Enter")
    box.type("tudo bem?")
    box.press("Enter")
    mine = messages(a, DAN).last
    expect(mine).to_have_attribute("data-state", "sent")
    assert mine.locator(".gchat-text").evaluate("node => node.textContent") == "Olá Dan,\ntudo bem?"
    expect(box).to_have_value("")

    # The window opens by itself on Dan's page, with the message; typing shows up at Ana's.
    expect(window_with(d, ANA)).to_be_visible()
    expect(messages(d, ANA).last.locator(".gchat-text")).to_contain_text("tudo bem?")
    window_with(d, ANA).locator("textarea").type("Hi")
    expect(window_with(a, DAN).locator(".gchat-typing")).to_contain_text("Dan Okafor")
    window_with(d, ANA).locator("textarea").press("Enter")
    expect(messages(a, DAN).last.locator(".gchat-text")).to_have_text("Hi")
    expect(window_with(a, DAN).locator(".gchat-typing")).to_have_text("")
    send(d, ANA, "All good, see https://moodle.org/ and javascript:alert(1)")
    link = messages(a, DAN).last.locator("a")
    expect(link).to_have_count(1)
    expect(link).to_have_attribute("href", "https://moodle.org/")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    expect(link).to_have_attribute("target", "_blank")

    # Both see the conversation in id order, once.
    expect(messages(d, ANA).last).to_have_attribute("data-state", "sent")
    ids_a = a.evaluate("window.gchat.snapshot().conversations[0].messages")
    ids_d = d.evaluate("window.gchat.snapshot().conversations[0].messages")
    assert ids_a == ids_d == sorted(ids_a) and len(ids_a) == 3

    # Esc minimises; the header toggles it back.
    window_with(a, DAN).locator("textarea").press("Escape")
    expect(window_with(a, DAN)).to_have_attribute("data-minimized", "true")
    expect(window_with(a, DAN).locator("textarea")).to_be_hidden()
    window_with(a, DAN).locator(".gchat-win-title").click()
    expect(window_with(a, DAN)).to_have_attribute("data-minimized", "false")

    # Tereza logs in: both lists grow, sorted by name. Dan logs out: he leaves Ana's list.
    users(TEREZA)
    expect(a.locator(".gchat-buddy-name")).to_have_text(["Dan Okafor", "Tereza Teacher"])
    expect(d.locator(".gchat-buddy-name")).to_have_text(["Ana Silva", "Tereza Teacher"])
    dan.logout()
    expect(buddy(a, DAN)).to_have_count(0)
    expect(a.locator(".gchat-buddy-name")).to_have_text(["Tereza Teacher"])
    # ... and back in.
    dan.login()
    expect(buddy(a, DAN)).to_have_count(1)
    assert transport(a) == transport(d) == "websocket"


def test_buddy_list_in_a_block_and_people_outside_the_course(users):
    ana = users(ANA)
    users(EVE)  # shares no course with Ana: never listed
    ben = users(BEN)
    ana.page.goto(ana.server.url("/demo/course?block=1"))
    wait_connected(ana.page)
    block = ana.page.locator("#gchat-block")
    expect(block.locator(".gchat-buddy")).to_have_count(1)
    expect(block.locator(".gchat-buddy-name")).to_have_text(["Ben Müller"])
    expect(ana.page.locator(".gchat-panel")).to_have_count(0)  # no floating panel then
    expect(buddy(ben.page, ANA)).to_have_count(1)


def test_longpoll_user_chats_in_real_time_with_websocket_user(users):
    ana = users(ANA, no_websocket=True)
    dan = users(DAN)
    a, d = ana.page, dan.page
    assert a.evaluate("typeof window.WebSocket") == "undefined"
    assert transport(a) == "longpoll"
    assert transport(d) == "websocket"

    buddy(d, ANA).click()
    send(d, ANA, "from the WebSocket side")
    expect(messages(a, DAN).last.locator(".gchat-text")).to_have_text("from the WebSocket side", timeout=5_000)
    send(a, DAN, "from the long-poll side")
    expect(messages(a, DAN).last).to_have_attribute("data-state", "sent", timeout=5_000)
    expect(messages(d, ANA).last.locator(".gchat-text")).to_have_text("from the long-poll side", timeout=5_000)
    # Several in a row, in order, each once.
    for i in range(3):
        send(a, DAN, f"poll {i}")
    expect(messages(d, ANA).locator(".gchat-text")).to_have_text(
        ["from the WebSocket side", "from the long-poll side", "poll 0", "poll 1", "poll 2"], timeout=5_000)
    assert transport(a) == "longpoll" and transport(d) == "websocket"


# A WebSocket that is there but never opens, as behind a proxy that strips the Upgrade header.
# It counts how often a page tried it.
_DEAD_WEBSOCKET = """
window.__wsTries = 0;
window.WebSocket = function () { window.__wsTries++; this.readyState = 0; };
window.WebSocket.prototype.send = function () { throw new Error('not open'); };
window.WebSocket.prototype.close = function () { this.readyState = 3; };
"""


def test_falls_back_when_websocket_never_opens_and_remembers_it(users):
    ana = users(ANA, init_script=_DEAD_WEBSOCKET)
    a = ana.page
    assert transport(a) == "longpoll"
    assert a.evaluate("window.__wsTries") >= 1
    assert a.evaluate("sessionStorage.getItem('gchat.transport')") == "longpoll"
    # The next page of the same browser session goes straight to long-polling.
    a.goto(ana.server.url("/demo/course?id=2"))
    wait_connected(a, timeout=4_000)
    assert transport(a) == "longpoll"
    assert a.evaluate("window.__wsTries") == 0
    dan = users(DAN)
    buddy(dan.page, ANA).click()
    send(dan.page, ANA, "can you read me?")
    expect(messages(a, DAN).last.locator(".gchat-text")).to_have_text("can you read me?")


def test_windows_minimised_state_and_unread_survive_reload_and_navigation(users):
    ana = users(ANA)
    dan = users(DAN)
    a, d = ana.page, dan.page
    buddy(a, DAN).click()
    send(a, DAN, "first")
    expect(window_with(d, ANA)).to_be_visible()
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "1")  # not read until Dan is in it
    # Dan minimises (clicking into the window reads it); two more arrive: unread 2, highlighted.
    window_with(d, ANA).locator(".gchat-win-min").click()
    expect(window_with(d, ANA)).to_have_attribute("data-minimized", "true")
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "0")
    send(a, DAN, "second")
    send(a, DAN, "third")
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "2")
    expect(window_with(d, ANA).locator(".gchat-badge")).to_have_text("2")
    expect(window_with(d, ANA)).to_have_class(re.compile(r"\bgchat-unread\b"))

    # Reload: the window is back, still minimised, still 2 unread.
    d.reload()
    wait_connected(d)
    expect(window_with(d, ANA)).to_have_attribute("data-minimized", "true")
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "2")
    # Navigate to a course page: same.
    d.goto(dan.server.url("/demo/course?id=3"))
    wait_connected(d)
    expect(window_with(d, ANA)).to_have_attribute("data-minimized", "true")
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "2")

    # A second tab shows the same; expanding it there expands it in the first tab too.
    d2 = dan.new_page()
    d2.goto(dan.server.url("/demo/course"))
    wait_connected(d2)
    expect(window_with(d2, ANA)).to_have_attribute("data-minimized", "true")
    window_with(d2, ANA).locator(".gchat-win-title").click()
    expect(window_with(d2, ANA)).to_have_attribute("data-minimized", "false")
    expect(window_with(d, ANA)).to_have_attribute("data-minimized", "false")
    # Reading it (focus in the window) clears unread in every tab.
    window_with(d2, ANA).locator("textarea").focus()
    expect(window_with(d2, ANA)).to_have_attribute("data-unread", "0")
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "0")
    d2.close()

    # A message sent while Dan's next page is loading arrives there exactly once.
    d.goto(dan.server.url("/demo/course?id=2"), wait_until="commit")
    send(a, DAN, "sent while the page loads")
    wait_connected(d)
    send(a, DAN, "marker after")
    expect(messages(d, ANA).last.locator(".gchat-text")).to_have_text("marker after")
    expect(window_with(d, ANA).locator(".gchat-text", has_text="sent while the page loads")).to_have_count(1)
    expect(messages(d, ANA).locator(".gchat-text")).to_have_text(
        ["first", "second", "third", "sent while the page loads", "marker after"])

    # Ana's own page: closed windows stay closed after navigation, open ones stay open.
    a.goto(ana.server.url("/demo/course?id=2"))
    wait_connected(a)
    expect(messages(a, DAN)).to_have_count(5)
    window_with(a, DAN).locator(".gchat-win-close").click()
    expect(window_with(a, DAN)).to_have_count(0)
    a.reload()
    wait_connected(a)
    expect(window_with(a, DAN)).to_have_count(0)


class TurnedRound:
    """Routes a user's WebSocket through the test: from ``hold()`` on, the events are held back
    until the next event of type ``until``, then given to the page in the order
    ``order(held, that_event)`` returns, under the cursors they came with (in order, as from a
    log written in that order). ``windows``: the window events the page was sent, in order."""

    def __init__(self, user, order, until: str = "message") -> None:
        self.user = user
        self.order = order
        self.until = until
        self.holding = False
        self.held: list[dict] = []
        self.windows: list[dict] = []
        self.last_cursor = ""  # of the last event the page was sent
        user.context.route_web_socket("**/gchat/ws**", self._route)

    def hold(self) -> None:
        self.holding = True

    def _route(self, ws) -> None:
        server = ws.connect_to_server()

        def from_server(frame):
            event = json.loads(frame) if isinstance(frame, str) else {}
            if event.get("type") == "conversation":
                self.windows.append(event["conversation"])
            if not self.holding or "cursor" not in event:  # replies are not in the log
                ws.send(frame)
                self.last_cursor = event.get("cursor", self.last_cursor)
                return
            if event["type"] != self.until:
                self.held.append(event)
                return
            cursors = [e["cursor"] for e in self.held] + [event["cursor"]]
            for cursor, late in zip(cursors, self.order(self.held, event)):
                ws.send(json.dumps({**late, "cursor": cursor}))
            self.held, self.holding, self.last_cursor = [], False, cursors[-1]

        server.on_message(from_server)

    def wait_delivered(self) -> None:
        """Until the page has taken in every event it was sent."""
        self.user.page.wait_for_function("cursor => window.gchat.cursor === cursor", arg=self.last_cursor)

    def wait(self, what: str, test) -> None:
        deadline = time.monotonic() + 10
        while not test():
            assert time.monotonic() < deadline, f"{what} never came: {self.windows}"
            self.user.page.wait_for_timeout(20)  # lets Playwright run the route's handler


def first_message_to_dan(users, order, until: str = "message"):
    """Ana and Dan logged in, Dan's events routed through ``TurnedRound(dan, order, until)``; Ana
    has written "first", which Dan's page shows unread. Returns Ana's page, Dan's, the route."""
    ana = users(ANA)
    dan = users(DAN, login=False)
    route = TurnedRound(dan, order, until)
    d = dan.login()
    a = ana.page
    buddy(a, DAN).click()
    send(a, DAN, "first")
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "1")
    return a, d, route


def test_unread_stays_exact_when_a_window_event_comes_after_a_newer_message(users):
    """The server counts a window's unread messages in one unit of work and stores a message in
    another, so the window event that counted can come after a message it did not count: the
    badge still says how many messages Dan has not read."""
    a, d, route = first_message_to_dan(users, lambda held, message: [message] + held)
    window_with(d, ANA).locator("textarea").focus()  # Dan reads it
    route.wait("the window event of reading", lambda: route.windows and route.windows[-1]["unread"] == 0)
    # Minimised, counted before "second" exists, given to the page after "second".
    route.hold()
    window_with(d, ANA).locator(".gchat-win-min").click()
    route.wait("the window event of minimising", lambda: route.held)
    send(a, DAN, "second")
    route.wait("the message", lambda: not route.holding)
    expect(messages(d, ANA).last.locator(".gchat-text")).to_have_text("second")
    expect(window_with(d, ANA)).to_have_attribute("data-minimized", "true")
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "1")
    send(a, DAN, "third")
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "2")
    d.reload()
    wait_connected(d)
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "2")


def test_a_window_event_from_before_a_minimise_does_not_undo_it(users):
    """Dan reads the window and at once minimises it; a message arrives between the two window
    events (of reading, then of minimising). The first says "not minimised": it must not open
    the window for a moment, or the message would be marked read under Dan's cursor."""
    # The server's order: read, then the message, then minimised.
    a, d, route = first_message_to_dan(users, lambda held, message: held[:1] + [message] + held[1:])
    route.hold()
    window_with(d, ANA).locator("textarea").focus()  # Dan reads it ...
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "0")
    window_with(d, ANA).locator(".gchat-win-min").click()  # ... and minimises it
    route.wait("both window events", lambda: sum(e["type"] == "conversation" for e in route.held) == 2)
    send(a, DAN, "second")
    route.wait("the message", lambda: not route.holding)
    expect(messages(d, ANA).last.locator(".gchat-text")).to_have_text("second")
    expect(window_with(d, ANA)).to_have_attribute("data-minimized", "true")
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "1")
    # Nothing marked it read meanwhile: the server says so too.
    d.reload()
    wait_connected(d)
    expect(window_with(d, ANA)).to_have_attribute("data-minimized", "true")
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "1")


def test_a_window_event_from_before_a_close_does_not_bring_the_window_back(users):
    """Dan reads the window and at once closes it; the window event of reading reaches the page
    after the close. The window stays closed, not back for a moment."""
    a, d, route = first_message_to_dan(users, lambda held, typing: held + [typing], "typing")
    route.hold()
    window_with(d, ANA).locator("textarea").focus()  # Dan reads it ...
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "0")
    window_with(d, ANA).locator(".gchat-win-close").click()  # ... and closes it
    expect(window_with(d, ANA)).to_have_count(0)
    route.wait("both window events", lambda: sum(e["type"] == "conversation" for e in route.held) == 2)
    d.evaluate("""() => {
        window.__back = false;
        new MutationObserver(() => {
            window.__back = window.__back || !!document.querySelector(".gchat-win[data-peer='3']");
        }).observe(document.body, {childList: true, subtree: true});
    }""")
    window_with(a, DAN).locator("textarea").press_sequentially("s")  # Ana's typing lets them through
    route.wait("the typing event", lambda: not route.holding)
    route.wait_delivered()
    assert d.evaluate("window.__back") is False, "the closed window came back"
    send(a, DAN, "sorry, one more thing")  # a message opens it again, as ever
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "1")


def test_scrolling_up_loads_older_messages(users):
    ana = users(ANA)
    dan = users(DAN)
    a, d = ana.page, dan.page
    buddy(a, DAN).click()
    for i in range(14):
        send(a, DAN, f"message {i}")
    expect(messages(a, DAN).last).to_have_attribute("data-state", "sent")
    expect(messages(a, DAN)).to_have_count(14)
    d.reload()
    wait_connected(d)
    expect(messages(d, ANA)).to_have_count(10)  # history_size
    window_with(d, ANA).locator(".gchat-log").evaluate("log => { log.scrollTop = 0; }")
    expect(messages(d, ANA)).to_have_count(14)
    expect(messages(d, ANA).first.locator(".gchat-text")).to_have_text("message 0")
    expect(window_with(d, ANA).locator(".gchat-older-note")).to_be_visible()


def test_server_restart_mid_conversation(users, server):
    ana = users(ANA)
    dan = users(DAN, no_websocket=True)
    a, d = ana.page, dan.page
    buddy(a, DAN).click()
    send(a, DAN, "before the restart")
    expect(messages(d, ANA).last.locator(".gchat-text")).to_have_text("before the restart")

    server.stop()
    a.wait_for_function("window.gchat.state === 'reconnecting'")
    expect(a.locator(".gchat-banner")).to_be_visible()
    # Sent while the server is down: shown at once, delivered later, once.
    send(a, DAN, "during the gap")
    expect(messages(a, DAN).last).not_to_have_attribute("data-state", "sent")
    server.start()

    wait_connected(a, timeout=30_000)
    wait_connected(d, timeout=30_000)
    expect(messages(a, DAN).last).to_have_attribute("data-state", "sent", timeout=15_000)
    expect(messages(d, ANA).locator(".gchat-text")).to_have_text(["before the restart", "during the gap"])
    send(d, ANA, "after the restart")
    expect(messages(a, DAN).locator(".gchat-text")).to_have_text(
        ["before the restart", "during the gap", "after the restart"])
    expect(a.locator(".gchat-banner")).to_be_hidden()
    expect(buddy(a, DAN)).to_have_count(1)
    assert transport(a) == "websocket" and transport(d) == "longpoll"


def test_html_in_a_message_is_shown_as_text(users):
    ana = users(ANA)
    dan = users(DAN)
    a, d = ana.page, dan.page
    payload = "<img src=x onerror=alert(1)>"
    buddy(a, DAN).click()
    send(a, DAN, payload)
    send(a, DAN, "<script>alert(2)</script><b>bold</b>")
    for page, peer in ((a, DAN), (d, ANA)):
        expect(messages(page, peer)).to_have_count(2)
        texts = messages(page, peer).locator(".gchat-text")
        expect(texts.first).to_have_text(payload)
        expect(texts.last).to_have_text("<script>alert(2)</script><b>bold</b>")
        expect(window_with(page, peer).locator(".gchat-text img, .gchat-text script, .gchat-text b")).to_have_count(0)
    # Give a would-be onerror handler the chance to run: the image would have failed by now.
    a.evaluate("() => new Promise(r => setTimeout(r, 300))")
    d.evaluate("() => new Promise(r => setTimeout(r, 300))")
    assert ana.dialogs == [] and dan.dialogs == []


def test_phone_full_screen_conversation_with_a_back_button(users):
    ana = users(ANA, viewport={"width": 390, "height": 844})
    users(DAN)
    a = ana.page
    panel = a.locator(".gchat-panel")
    assert panel.bounding_box()["width"] == 390
    assert buddy(a, DAN).bounding_box()["height"] >= 44
    buddy(a, DAN).click()
    win = window_with(a, DAN)
    box = win.bounding_box()
    assert box is not None and (box["x"], box["y"], box["width"], box["height"]) == (0, 0, 390, 844)
    expect(panel).to_be_hidden()  # the list waits behind the back button
    box_input = win.locator("textarea")
    expect(box_input).to_be_focused()
    assert box_input.evaluate("node => getComputedStyle(node).fontSize") == "16px"  # iOS does not zoom in
    for target in (".gchat-win-back", ".gchat-win-min", ".gchat-win-close", ".gchat-send", "textarea"):
        size = win.locator(target).bounding_box()
        assert size["width"] >= 44 and size["height"] >= 44, (target, size)
    send(a, DAN, "from the phone")
    expect(messages(a, DAN).last).to_have_attribute("data-state", "sent")
    win.locator(".gchat-win-back").click()
    expect(win).to_be_hidden()
    expect(panel).to_be_visible()
    expect(a.locator(".gchat-panel-header")).to_be_focused()
    # The conversation waits in the "+1" menu (and the recent list); one tap brings it back.
    more = a.locator(".gchat-overflow-button")
    assert more.bounding_box()["height"] >= 44
    more.click()
    a.locator(".gchat-overflow-item").click()
    expect(win).to_be_visible()
    expect(messages(a, DAN).locator(".gchat-text")).to_have_text(["from the phone"])


@pytest.mark.server_args("--token_ttl=4", "--longpoll_timeout=1-2")
def test_tokens_are_renewed_before_they_expire(users):
    ana = users(ANA, no_websocket=True)  # long-poll: every request carries the token
    dan = users(DAN)
    a, d = ana.page, dan.page
    # Renewed at 80 % of 4 s: after two renewals the first token has expired for a while.
    a.wait_for_function("window.gchat.tokens >= 3", timeout=15_000)
    d.wait_for_function("window.gchat.tokens >= 3", timeout=15_000)
    buddy(a, DAN).click()
    send(a, DAN, "still here")
    expect(messages(a, DAN).last).to_have_attribute("data-state", "sent")
    expect(messages(d, ANA).last.locator(".gchat-text")).to_have_text("still here")
    send(d, ANA, "me too")
    expect(messages(a, DAN).last.locator(".gchat-text")).to_have_text("me too")
    assert a.evaluate("window.gchat.state") == "connected"


# No periodic session re-check in this test: the other tab learns it from the tab that logged
# out (its login page's bootstrap answers 401 and it tells its siblings at once).
@pytest.mark.server_args("--session_check_interval=3600")
def test_logging_out_in_one_tab_is_said_in_the_others(users):
    ana = users(ANA)
    dan = users(DAN)
    other_tab = dan.new_page()
    other_tab.goto(dan.server.url("/demo/course?id=2"))
    wait_connected(other_tab)
    expect(buddy(ana.page, DAN)).to_have_count(1)
    buddy(ana.page, DAN).click()
    send(ana.page, DAN, "still there?")
    expect(window_with(other_tab, ANA)).to_be_visible()
    dan.logout()  # in the first tab
    other_tab.wait_for_function("window.gchat.state === 'ended'")
    # Not a silent disappearance: the panel says why, the windows are gone.
    expect(other_tab.locator(".gchat-banner")).to_have_text("You are logged out of Moodle. Log in again to chat.")
    expect(other_tab.locator(".gchat-banner")).to_be_visible()
    expect(window_with(other_tab, ANA)).to_have_count(0)
    expect(buddy(ana.page, DAN)).to_have_count(0)


# Lets a test hide "the tab": document.hidden and hasFocus() follow window.__hidden.
_HIDEABLE_TAB = """
window.__hidden = false;
Object.defineProperty(Document.prototype, 'hidden', {configurable: true, get: function () { return window.__hidden; }});
Document.prototype.hasFocus = function () { return !window.__hidden; };
window.__setHidden = function (hidden) {
  window.__hidden = hidden; document.dispatchEvent(new Event('visibilitychange'));
};
"""


def test_hidden_tab_flashes_its_title_and_screen_readers_hear_new_messages(users):
    ana = users(ANA)
    dan = users(DAN, init_script=_HIDEABLE_TAB)
    a, d = ana.page, dan.page
    title = d.title()
    buddy(a, DAN).click()
    d.evaluate("window.__setHidden(true)")
    send(a, DAN, "are you there?")
    d.wait_for_function("document.title.indexOf('Ana Silva') >= 0")
    d.wait_for_function(f"document.title === {title!r}")  # it flashes: back and forth
    expect(d.locator("#gchat-root [role=status][aria-live=polite]")).to_have_text(
        "New message from Ana Silva: are you there?")
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "1")
    d.evaluate("window.__setHidden(false)")
    d.wait_for_function(f"document.title === {title!r}")
    # Back in front, the message is read once Dan is in the window.
    window_with(d, ANA).locator("textarea").focus()
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "0")
    d.wait_for_function(f"document.title === {title!r}")


def test_longpoll_user_rides_out_a_network_drop(users):
    ana = users(ANA, no_websocket=True)
    dan = users(DAN)
    a, d = ana.page, dan.page
    buddy(a, DAN).click()
    send(a, DAN, "one")
    expect(messages(d, ANA)).to_have_count(1)
    ana.context.set_offline(True)
    a.wait_for_function("window.gchat.state === 'reconnecting'")
    send(a, DAN, "typed offline")  # shown at once, sent when back (same client_id on every try)
    expect(messages(a, DAN).last).to_have_attribute("data-state", re.compile("pending|failed"))
    send(d, ANA, "while Ana was away")
    ana.context.set_offline(False)
    # Resuming from its cursor: the missed message arrives, the failed one is delivered once.
    # (sorted by id: the message typed offline was stored last)
    expect(messages(a, DAN).locator(".gchat-text")).to_have_text(["one", "while Ana was away", "typed offline"])
    expect(messages(a, DAN).last).to_have_attribute("data-state", "sent")
    expect(messages(d, ANA).locator(".gchat-text")).to_have_text(["one", "while Ana was away", "typed offline"])
    wait_connected(a)
    # A drop during which nothing happened: the resumed poll has nothing to answer and is held
    # by the server (45-55 s); the widget must count that as connected, not as still lost.
    ana.context.set_offline(True)
    a.wait_for_function("window.gchat.state === 'reconnecting'")
    ana.context.set_offline(False)
    wait_connected(a, timeout=5_000)
    expect(a.locator(".gchat-banner")).to_be_hidden()
    send(d, ANA, "and now?")
    expect(messages(a, DAN).last.locator(".gchat-text")).to_have_text("and now?")
    assert a.evaluate("window.gchat.transport") == "longpoll"


def test_unsent_message_survives_a_reload_and_is_stored_once(users):
    ana = users(ANA, no_websocket=True)  # commands go over HTTP, where the test can block them
    dan = users(DAN)
    a, d = ana.page, dan.page
    buddy(a, DAN).click()
    expect(window_with(a, DAN)).to_be_visible()
    a.route("**/api/send", lambda route: route.abort())
    send(a, DAN, "kept across pages")
    expect(messages(a, DAN).last).to_have_attribute("data-state", "failed")
    expect(messages(a, DAN).last.locator(".gchat-retry")).to_be_visible()
    a.reload()  # still blocked: the new page shows it again, from the browser session's outbox
    wait_connected(a)
    expect(messages(a, DAN).locator(".gchat-text")).to_have_text(["kept across pages"])
    expect(messages(a, DAN).last).to_have_attribute("data-state", re.compile("pending|failed"))
    a.unroute("**/api/send")
    expect(messages(a, DAN).last).to_have_attribute("data-state", "sent", timeout=15_000)
    expect(messages(d, ANA).locator(".gchat-text")).to_have_text(["kept across pages"])
    a.reload()
    wait_connected(a)
    expect(messages(a, DAN).locator(".gchat-text")).to_have_text(["kept across pages"])
    assert a.evaluate("sessionStorage.getItem('gchat.outbox')") is None
