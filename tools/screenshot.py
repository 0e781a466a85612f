"""Take docs/screenshot.png: the demo page with the buddy list and two chat windows.

    .venv/bin/python tools/screenshot.py [--out docs/screenshot.png]

Starts its own gchat server (demo mode, temporary data folder, free port), logs three demo users
in with Debian's Chromium (/usr/bin/chromium; nothing is downloaded), has them chat, and saves
what Ana sees. It reuses the browser tests' helpers (tests/browser/gchat_browser.py).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "browser"))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from gchat_browser import (ANA, CHROMIUM, CHROMIUM_ARGS, DAN, TEREZA, User, buddy, messages,  # noqa: E402
                           running_server, send, window_with)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshot.png"))
    args = parser.parse_args()

    for server in running_server(["--log_level=warning"]):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            ana = User(browser, server, ANA, viewport={"width": 1280, "height": 760})
            dan = User(browser, server, DAN)
            tereza = User(browser, server, TEREZA)
            for user in (ana, dan, tereza):
                user.login()
            a = ana.page
            a.goto(server.url("/demo/course?id=2"))
            a.wait_for_function("window.gchat && window.gchat.state === 'connected'")

            buddy(a, DAN).click()
            send(a, DAN, "Oi Dan! Got the lab template?")
            expect(window_with(dan.page, ANA)).to_be_visible()
            send(dan.page, ANA, "Yes: https://moodle.example.org/mod/resource/view.php?id=42")
            send(dan.page, ANA, "Shall we compare results after class?")
            expect(messages(a, DAN)).to_have_count(3)
            send(a, DAN, "Great, see you at 3!")
            expect(messages(a, DAN).last).to_have_attribute("data-state", "sent")

            buddy(tereza.page, ANA).click()
            send(tereza.page, ANA, "Hi Ana, your essay draft looks good. One question about section 2…")
            expect(window_with(a, TEREZA)).to_be_visible()
            window_with(tereza.page, ANA).locator("textarea").type("Could you")  # typing indicator
            expect(window_with(a, TEREZA).locator(".gchat-typing")).not_to_be_empty()
            window_with(a, DAN).locator("textarea").focus()

            out = pathlib.Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            a.screenshot(path=str(out))
            browser.close()
        print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
