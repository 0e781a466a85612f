"""Take the screenshots in docs/: the widget in its main states, as a person sees them.

    .venv/bin/python tools/screenshot.py [--out-dir docs]

Starts its own gchat server (demo mode, temporary data folder, free port), logs demo users in
with Debian's Chromium (/usr/bin/chromium; nothing is downloaded), has them chat, and saves:

    screenshot.png            the list and two conversations (Ana, 1280 px), "Seen" under
                              Ana's last message, the peer typing
    screenshot-overflow.png   four conversations at 1280 px: three docked, one in the "+1" menu
                              (open, with its unread count)
    screenshot-search.png     a course-mate found by search while offline, and the window that
                              says they will read it later
    screenshot-phone.png      a phone (390 x 844): the conversation full screen, back button
    screenshot-offline.png    the connection lost: the banner above the collapsed list,
                              presence unknown
    screenshot-logged-out.png another tab after logging out of Moodle

It reuses the browser tests' helpers (tests/browser/gchat_browser.py).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "browser"))
sys.path.insert(0, str(REPO))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from gchat_browser import (ANA, BEN, CHLOE, CHROMIUM, CHROMIUM_ARGS, DAN, INES, TEREZA, User, buddy,  # noqa: E402
                           found, messages, open_by_search, running_server, search, send, wait_connected,
                           window_with)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(REPO / "docs"))
    args = parser.parse_args()
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def save(page, name: str) -> None:
        page.screenshot(path=str(out / name))
        print(f"saved {out / name}")

    for server in running_server(["--log_level=warning", "--presence_grace=1"]):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            ana = User(browser, server, ANA, viewport={"width": 1280, "height": 760})
            dan = User(browser, server, DAN)
            tereza = User(browser, server, TEREZA)
            for user in (ana, dan, tereza):
                user.login()
            a, d = ana.page, dan.page
            a.goto(server.url("/demo/course?id=2"))
            wait_connected(a)

            # -- the list and two conversations -------------------------------------------------
            buddy(a, DAN).click()
            send(a, DAN, "Oi Dan! Got the lab template?")
            expect(window_with(d, ANA)).to_be_visible()
            send(d, ANA, "Yes: https://moodle.example.org/mod/resource/view.php?id=42")
            send(d, ANA, "Shall we compare results after class?")
            expect(messages(a, DAN)).to_have_count(3)
            send(a, DAN, "Great, see you at 3!")
            expect(messages(a, DAN).last).to_have_attribute("data-state", "sent")
            window_with(d, ANA).locator("textarea").focus()  # Dan reads: "Seen" for Ana
            expect(window_with(a, DAN).locator(".gchat-seen")).to_be_visible()
            buddy(tereza.page, ANA).click()
            send(tereza.page, ANA, "Hi Ana, your essay draft looks good. One question about section 2…")
            expect(window_with(a, TEREZA)).to_be_visible()
            window_with(tereza.page, ANA).locator("textarea").type("Could you")  # typing indicator
            expect(window_with(a, TEREZA).locator(".gchat-typing")).not_to_be_empty()
            window_with(a, DAN).locator("textarea").focus()
            save(a, "screenshot.png")

            # -- four conversations at 1280 px: the "+1" menu -----------------------------------
            for peer, text in ((BEN, "ben"), (CHLOE, "chlo")):
                open_by_search(a, peer, text)
            d.locator("#logout").focus()
            send(d, ANA, "Room B204, by the way")
            more = a.locator(".gchat-overflow-button")
            expect(more.locator(".gchat-badge")).to_have_text("1")
            more.click()
            expect(a.locator(".gchat-overflow-item")).to_have_count(1)
            save(a, "screenshot-overflow.png")
            a.keyboard.press("Escape")

            # -- search: an offline course-mate, and "they will see it later" -------------------
            open_by_search(a, INES, "ines")
            send(a, INES, "Olá Inês! Are you in the study group on Thursday?")
            expect(messages(a, INES).last).to_have_attribute("data-state", "sent")
            search(a, "ines")
            expect(found(a, INES)).to_be_visible()
            save(a, "screenshot-search.png")
            search(a, "")

            # -- a phone ------------------------------------------------------------------------
            phone = User(browser, server, DAN, viewport={"width": 390, "height": 844})
            phone.login()
            window_with(phone.page, ANA).locator(".gchat-win-title").wait_for()
            if window_with(phone.page, ANA).get_attribute("data-minimized") == "true":
                phone.page.locator(".gchat-overflow-button").click()
                phone.page.locator(".gchat-overflow-item").first.click()
            expect(window_with(phone.page, ANA)).to_be_visible()
            window_with(phone.page, ANA).locator("textarea").fill("On my way!")
            save(phone.page, "screenshot-phone.png")

            # -- the connection lost ------------------------------------------------------------
            a.locator(".gchat-panel-header").click()
            server.stop()
            a.wait_for_function("window.gchat.state === 'reconnecting'")
            expect(a.locator(".gchat-banner")).to_be_visible()
            save(a, "screenshot-offline.png")
            server.start()
            wait_connected(a, timeout=30_000)
            a.locator(".gchat-panel-header").click()

            # -- logged out in another tab ------------------------------------------------------
            other = ana.new_page()
            other.set_viewport_size({"width": 1280, "height": 760})
            other.goto(server.url("/demo/course?id=3"))
            wait_connected(other)
            ana.logout(a)
            other.wait_for_function("window.gchat.state === 'ended'")
            save(other, "screenshot-logged-out.png")
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
