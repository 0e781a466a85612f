"""Automated WCAG 2.1 A/AA checks (axe-core, shipped by axe-playwright-python: nothing is
fetched at run time) of the demo page with the widget in each of its main states: the list open,
a conversation open, minimised with unread messages, on a phone, and with the connection lost.
Zero violations is the bar. The connection-lost stage also checks what the state says: the
banner with the panel collapsed, and presence shown as unknown in every accessible name.
"""

from __future__ import annotations

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from gchat.strings import strings_for
from gchat_browser import ANA, DAN, TEREZA, buddy, messages, send, wait_connected, window_with

WCAG_21_AA = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
              "resultTypes": ["violations"]}
PT = strings_for("pt")
AXE = Axe()


def violations(page) -> list[str]:
    """One line per violated rule: its id, impact and the first elements it names."""
    found = AXE.run(page, options=WCAG_21_AA).response["violations"]
    return [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]} {v['help']}" for v in found]


def test_zero_wcag_violations_in_every_state(users, server):
    ana = users(ANA)
    dan = users(DAN)
    a, d = ana.page, dan.page
    results: dict[str, list[str]] = {}

    expect(buddy(a, DAN)).to_be_visible()
    results["list open"] = violations(a)

    buddy(a, DAN).click()
    send(a, DAN, "Olá! https://moodle.org/")
    send(d, ANA, "Hi Ana")
    window_with(d, ANA).locator("textarea").focus()
    expect(window_with(a, DAN).locator(".gchat-seen")).to_be_visible()
    window_with(a, DAN).locator("textarea").fill("a draft")
    results["conversation open"] = violations(a)

    window_with(a, DAN).locator(".gchat-win-min").click()
    d.locator("#logout").focus()
    send(d, ANA, "unread while minimised")
    expect(window_with(a, DAN)).to_have_attribute("data-unread", "1")
    results["minimised with unread"] = violations(a)

    tereza = users(TEREZA, viewport={"width": 390, "height": 844})
    t = tereza.page
    buddy(t, ANA).click()
    send(t, ANA, "from a phone")
    results["phone, conversation"] = violations(t)
    window_with(t, ANA).locator(".gchat-win-back").click()
    expect(t.locator(".gchat-panel")).to_be_visible()
    results["phone, list"] = violations(t)

    a.locator(".gchat-panel-header").click()  # collapsed: the banner must still say it
    expect(a.locator(".gchat-panel-body")).to_be_hidden()
    server.stop()
    a.wait_for_function("window.gchat.state === 'reconnecting'")
    expect(a.locator(".gchat-banner")).to_be_visible()
    expect(a.locator(".gchat-banner")).to_have_text(PT["reconnecting"])
    expect(window_with(a, DAN)).to_have_attribute("aria-label", f"{PT['chat_with'].format(name='Dan Okafor')}, "
                                                                f"{PT['presence_unknown']}")
    results["connection lost, collapsed"] = violations(a)
    a.locator(".gchat-panel-header").click()
    expect(buddy(a, DAN)).to_have_attribute("aria-label", PT["name_unknown"].format(name="Dan Okafor"))
    results["connection lost, list open"] = violations(a)
    server.start()
    wait_connected(a, timeout=30_000)
    expect(a.locator(".gchat-banner")).to_be_hidden()
    expect(messages(a, DAN)).to_have_count(3)

    print("axe WCAG 2.1 A/AA violations per state:", {state: len(found) for state, found in results.items()})
    assert results == {state: [] for state in results}
