"""``gchat check`` warns when the configured chat colours fail WCAG 2.1 AA; the defaults pass."""

from __future__ import annotations

import pytest

from gchat.check import _Report, check_colors, contrast_ratio
from gchat.config import Settings


def run(settings: Settings) -> list[str]:
    lines: list[str] = []
    check_colors(settings, _Report(lines.append))
    return lines


def test_contrast_ratio_matches_wcag_reference_values():
    assert contrast_ratio("#000", "#fff") == pytest.approx(21.0)
    assert contrast_ratio("#fff", "#fff") == pytest.approx(1.0)
    assert contrast_ratio("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
    assert contrast_ratio("white", "green") == pytest.approx(5.14, abs=0.01)
    assert contrast_ratio("#12", "#fff") is None
    assert contrast_ratio("papayawhip", "#fff") is None


def test_default_colours_pass_and_say_nothing():
    settings = Settings()
    assert contrast_ratio(settings.color_header_text, settings.color_header) >= 4.5
    assert contrast_ratio(settings.color_header_text, settings.color_header_unread) >= 4.5
    assert contrast_ratio(settings.color_border, "#fff") >= 3.0
    assert run(settings) == []


def test_block_gchat_colours_are_named_with_their_ratio():
    old = Settings(color_header="#2F922C", color_header_unread="#5ECC76", color_header_text="#B0DDBA",
                   color_border="#888")
    [line] = run(old)
    assert line.startswith("WARN  colours: ")
    assert "color_header_text on color_header is 2.6:1, WCAG 2.1 AA needs 4.5:1" in line
    assert "color_header_text on color_header_unread is 1.3:1" in line
    assert "color_border on the white page is 3.5:1" not in line  # #888 passes 3:1 (3.54)
    assert "#267A24" in line  # the advice names passing defaults


def test_a_colour_that_cannot_be_read_is_said_so():
    [line] = run(Settings(color_header="papayawhip"))
    assert "cannot check 'papayawhip'" in line
