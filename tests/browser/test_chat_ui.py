"""The widget as people who use Messenger, Google Chat or Moodle's messaging drawer expect it:
windows that never get lost, read receipts, conversations and search, reading comfort, the
phone, the keyboard, and every state explained (issue 13). Real Chromium, real gchat server.

Ana's Moodle language is Portuguese, so what she sees is checked against the pt strings; the
texts come from gchat/strings.py, the same table the server hands the widget.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from gchat.strings import strings_for
from gchat_browser import (ANA, BEN, CHLOE, DAN, EVE, FARID, INES, TEREZA, buddy, demo_sql, found, messages,
                           open_by_search, search, send, wait_connected, window_with)

PT = strings_for("pt")
EN = strings_for("en")


def on_screen(page, locator) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= size["width"] + 0.5
            and box["y"] + box["height"] <= size["height"] + 0.5)


def shown_and_hidden(page, peers):
    shown = [p for p in peers if window_with(page, p).is_visible()]
    return shown, [p for p in peers if p not in shown]


def test_four_windows_at_1280_all_reachable_and_the_dock_reflows(users):
    ana = users(ANA)
    dan = users(DAN)
    a = ana.page
    buddy(a, DAN).click()
    # Ben, Chloé and Tereza are offline: found by search, opened all the same.
    for peer, text in ((BEN, "ben"), (CHLOE, "chlo"), (TEREZA, "tere")):
        open_by_search(a, peer, text)
    peers = [DAN, BEN, CHLOE, TEREZA]
    expect(a.locator(".gchat-win")).to_have_count(4)
    shown, hidden = shown_and_hidden(a, peers)
    assert hidden == [DAN]  # the one used longest ago waits in the menu
    for peer in shown:
        assert on_screen(a, window_with(a, peer)), peer
    more = a.locator(".gchat-overflow-button")
    expect(more).to_be_visible()
    assert on_screen(a, more)
    expect(more).to_have_text("+1")

    # A message in a window that waits in the menu: its unread count shows on the button and in the menu.
    buddy(dan.page, ANA).click()
    send(dan.page, ANA, "psst")
    expect(more.locator(".gchat-badge")).to_have_text("1")
    expect(more).to_have_attribute("aria-label", f"{PT['more_chats'].format(count=1)}. {PT['unread'].format(count=1)}")
    more.click()
    item = a.locator(".gchat-overflow-item[data-conversation]")
    expect(item).to_have_attribute("aria-label", f"Dan Okafor, online. {PT['unread'].format(count=1)}")
    item.click()
    expect(window_with(a, DAN)).to_be_visible()
    assert on_screen(a, window_with(a, DAN))
    expect(window_with(a, DAN).locator("textarea")).to_be_focused()
    expect(window_with(a, DAN)).to_have_attribute("data-unread", "0")  # focused in it: read
    shown, hidden = shown_and_hidden(a, peers)
    assert hidden == [BEN]

    # Wider: everything fits, no menu. Narrower: fewer windows, the rest in the menu, each reachable.
    a.set_viewport_size({"width": 1800, "height": 800})
    expect(more).to_be_hidden()
    for peer in peers:
        expect(window_with(a, peer)).to_be_visible()
        assert on_screen(a, window_with(a, peer))
    a.set_viewport_size({"width": 760, "height": 800})
    expect(more).to_have_text("+3")
    for peer in peers:
        if not window_with(a, peer).is_visible():
            more.click()
            a.locator(f".gchat-overflow-item[aria-label^='{window_name(peer)}']").click()
        expect(window_with(a, peer)).to_be_visible()
        assert on_screen(a, window_with(a, peer)), peer
        assert on_screen(a, more)


def window_name(peer: int) -> str:
    return {DAN: "Dan Okafor", BEN: "Ben Müller", CHLOE: "Chloé Martin", TEREZA: "Tereza Teacher"}[peer]


def test_seen_appears_for_the_sender_within_a_second_of_the_peer_reading(users):
    ana = users(ANA)
    dan = users(DAN)
    a, d = ana.page, dan.page
    buddy(a, DAN).click()
    send(a, DAN, "um")
    send(a, DAN, "dois")
    expect(messages(d, ANA)).to_have_count(2)
    seen = window_with(a, DAN).locator(".gchat-seen")
    expect(seen).to_have_count(0)
    window_with(d, ANA).locator("textarea").focus()  # Dan is in the window: he reads
    expect(window_with(d, ANA)).to_have_attribute("data-unread", "0")
    expect(seen).to_have_text(re.compile(PT["seen"].replace("{time}", r"\d\d:\d\d")), timeout=1_000)
    # Under the last own message, with the full date on hover.
    assert seen.evaluate("node => node.previousElementSibling.querySelector('.gchat-text').textContent") == "dois"
    assert re.search(r"20\d\d", seen.get_attribute("title"))
    # A reload keeps it (peer_read in the snapshot).
    a.reload()
    wait_connected(a)
    expect(seen).to_be_visible()
    # A new message Dan has not read: no "Seen" under it; once he reads it, there.
    d.locator("#logout").focus()
    send(a, DAN, "três")
    expect(messages(d, ANA)).to_have_count(3)
    expect(seen).to_have_count(0)
    window_with(d, ANA).locator("textarea").focus()
    expect(seen).to_be_visible(timeout=1_000)
    assert seen.evaluate("node => node.previousElementSibling.querySelector('.gchat-text').textContent") == "três"


def test_an_offline_course_mate_found_by_search_gets_the_message_at_next_login(users):
    ana = users(ANA)
    a = ana.page
    search(a, "INES")  # case and accents do not matter
    expect(found(a, INES)).to_have_attribute("aria-label", re.compile(r"^Inês Costa, offline\. "))
    expect(found(a, INES).locator(".gchat-detail")).to_have_text(PT["offline_hint"])
    search(a, "zzz")
    expect(a.locator(".gchat-search-item")).to_have_count(0)
    expect(a.locator(".gchat-none", has_text="zzz")).to_have_text(PT["search_none"].format(query="zzz"))
    open_by_search(a, INES, "inês")
    win = window_with(a, INES)
    expect(win.locator(".gchat-older-note")).to_have_text(PT["start_of_conversation"].format(name="Inês Costa"))
    expect(win.locator(".gchat-offline-note")).to_have_text(PT["offline_note"].format(name="Inês Costa"))
    send(a, INES, "Olá Inês, vê isto quando voltares")
    expect(messages(a, INES).last).to_have_attribute("data-state", "sent")

    # The recent conversations list it, with the last message.
    a.locator(".gchat-tab", has_text=PT["tab_recent"]).click()
    recent = a.locator(f".gchat-recent-item[data-user-id='{INES}']")
    expect(recent.locator(".gchat-detail")).to_have_text(f"{PT['you']}: Olá Inês, vê isto quando voltares")

    ines = users(INES)
    i = ines.page
    expect(window_with(i, ANA)).to_be_visible()
    expect(messages(i, ANA).locator(".gchat-text")).to_have_text(["Olá Inês, vê isto quando voltares"])
    expect(window_with(i, ANA)).to_have_attribute("data-unread", "1")
    expect(win.locator(".gchat-offline-note")).to_be_hidden()  # she is online now

    # Someone who shares no course is told so, not "no one online".
    eve = users(EVE)
    expect(eve.page.locator(".gchat-empty")).to_have_text(EN["no_coursemates"])


def test_reading_comfort_keyboard_and_the_character_limit(users):
    ana = users(ANA)
    dan = users(DAN)
    a, d = ana.page, dan.page
    a.keyboard.press("Alt+Shift+C")  # no window open: the shortcut goes to the search field
    expect(a.locator(".gchat-search")).to_be_focused()
    expect(a.locator(".gchat-panel-header")).to_have_attribute("aria-keyshortcuts", "Alt+Shift+C")
    buddy(a, DAN).click()
    win = window_with(a, DAN)
    box = win.locator("textarea")
    expect(box).to_be_focused()  # focus goes into the window that opens
    expect(win.locator(".gchat-older-note")).to_be_visible()  # a new conversation is not a blank box
    send(a, DAN, "primeira")
    send(a, DAN, "segunda")
    send(d, ANA, "resposta")
    mine = messages(a, DAN)
    expect(mine).to_have_count(3)
    expect(mine.nth(0)).not_to_have_class(re.compile(r"\bgchat-grouped\b"))
    expect(mine.nth(1)).to_have_class(re.compile(r"\bgchat-grouped\b"))  # same sender, same minute
    expect(mine.nth(2)).not_to_have_class(re.compile(r"\bgchat-grouped\b"))
    expect(win.locator(".gchat-day")).to_have_text([PT["today"]])
    expect(mine.nth(0).locator(".gchat-sr-only")).to_have_text(f"{PT['you']}: ")
    expect(mine.nth(2).locator(".gchat-sr-only")).to_have_text("Dan Okafor: ")
    expect(mine.nth(2).locator(".gchat-face img")).to_have_count(1)  # the peer's avatar
    assert re.search(r"20\d\d", mine.nth(0).locator("time").get_attribute("title"))
    expect(mine.nth(0).locator(".gchat-fulldate")).to_be_hidden()
    mine.nth(0).focus()  # keyboard users get the full date too
    expect(mine.nth(0).locator(".gchat-fulldate")).to_be_visible()

    # Shortcut from anywhere on the page to the open conversation.
    a.locator("#logout").focus()
    a.keyboard.press("Alt+Shift+C")
    expect(box).to_be_focused()

    # Scrolled up reading older messages: a new one says so with a pill instead of jumping.
    for n in range(12):
        send(d, ANA, f"linha {n}")
    expect(mine).to_have_count(15)
    log = win.locator(".gchat-log")
    log.evaluate("node => { node.scrollTop = 0; }")
    send(d, ANA, "nova")
    pill = win.locator(".gchat-pill")
    expect(pill).to_have_text(PT["new_messages"] + " \u2193")
    expect(pill).to_be_visible()
    pill.click()
    expect(pill).to_be_hidden()
    assert log.evaluate("node => node.scrollHeight - node.scrollTop - node.clientHeight < 40")

    # Too long: the counter says how much, Enter sends nothing and cuts nothing.
    counter = win.locator(".gchat-counter")
    expect(counter).to_be_hidden()
    box.fill("x" * 1400)
    expect(counter).to_have_text(PT["chars_over"].format(count=67))
    expect(box).to_have_attribute("aria-invalid", "true")
    box.press("Enter")
    expect(win.locator(".gchat-win-error")).to_have_text(PT["error_too_long"].format(max=1333))
    assert len(box.input_value()) == 1400
    expect(mine).to_have_count(16)
    box.fill("y" * 1333)
    expect(counter).to_have_text(PT["chars_left"].format(count=0))
    box.press("Enter")
    expect(messages(d, ANA).last.locator(".gchat-text")).to_have_text("y" * 1333)

    # Closing the window gives focus back to the panel.
    win.locator(".gchat-win-close").click()
    expect(a.locator(".gchat-panel-header")).to_be_focused()


# -- refusals and capabilities: the server side is the privacy branch's (issue 12) -------------------


@pytest.mark.server_args("--cache_ttl=0")
def test_each_refusal_reason_is_explained(users, server):
    """Needs the privacy branch: the server must send not_allowed with a reason."""
    ana = users(ANA)
    a = ana.page
    for peer, text in ((DAN, "dan"), (TEREZA, "tere"), (FARID, "farid")):
        open_by_search(a, peer, text)
        send(a, peer, "antes")
        expect(messages(a, peer).last).to_have_attribute("data-state", "sent")
    demo_sql(server, "INSERT INTO mdl_message_contacts (userid, contactid, blocked) VALUES (?, ?, 1)", (DAN, ANA))
    demo_sql(server, "INSERT INTO mdl_user_preferences (userid, name, value) "
                     "VALUES (?, 'message_blocknoncontacts', '1')",
             (TEREZA,))
    demo_sql(server, "DELETE FROM mdl_user_enrolments WHERE userid = ?", (FARID,))
    for peer, key in ((DAN, "error_blocked"), (TEREZA, "error_contacts_only"), (FARID, "error_no_shared_course")):
        win = window_with(a, peer)
        if not win.is_visible():
            a.locator(".gchat-overflow-button").click()
            a.locator(f".gchat-overflow-item[data-conversation='{win.get_attribute('data-conversation')}']").click()
        send(a, peer, "depois")
        expect(messages(a, peer).last).to_have_attribute("data-state", "failed")
        expect(win.locator(".gchat-win-error")).to_have_text(PT[key])
        expect(messages(a, peer).last.locator(".gchat-state")).to_contain_text(PT[key])


def test_read_only_when_the_role_may_not_send(users, server):
    """Needs the privacy branch: bootstrap's can_send from moodle/site:sendmessage."""
    demo_sql(server, "INSERT INTO mdl_role_capabilities (contextid, roleid, capability, permission) "
                     "VALUES (1, 99, 'moodle/site:sendmessage', -1000)")
    demo_sql(server, "INSERT INTO mdl_role_assignments (roleid, contextid, userid) VALUES (99, 1, ?)", (ANA,))
    ana = users(ANA)
    dan = users(DAN)
    a = ana.page
    expect(a.locator(".gchat-panel .gchat-read-only")).to_have_text(PT["read_only"])
    expect(a.locator(".gchat-panel .gchat-read-only")).to_be_visible()
    buddy(dan.page, ANA).click()
    send(dan.page, ANA, "can you read this?")
    win = window_with(a, DAN)
    expect(messages(a, DAN).locator(".gchat-text")).to_have_text(["can you read this?"])
    expect(win.locator("textarea")).to_be_hidden()
    expect(win.locator(".gchat-read-only")).to_be_visible()


def test_chat_turned_off_on_the_site_is_said_and_nothing_connects(users, server):
    """Needs the privacy branch: bootstrap's messaging from Moodle's site switch."""
    demo_sql(server, "UPDATE mdl_config SET value = '0' WHERE name = 'messaging'")
    ana = users(ANA, login=False)
    a = ana.page
    ana.login(wait=False)
    a.wait_for_function("window.gchat && window.gchat.state === 'disabled'")
    expect(a.locator(".gchat-banner")).to_have_text(PT["messaging_disabled"])
    expect(a.locator(".gchat-search")).to_be_hidden()
    assert a.evaluate("window.gchat.transport") is None
