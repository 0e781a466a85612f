"""The widget's strings: every language has every key, and Moodle codes pick the right table."""

import re

import pytest

from gchat.strings import STRINGS, strings_for


def _placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", text))


@pytest.mark.parametrize("lang", sorted(STRINGS))
def test_every_table_has_the_english_keys_and_placeholders(lang):
    table = STRINGS[lang]
    assert set(table) == set(STRINGS["en"])
    for key, text in table.items():
        assert text.strip(), f"{lang}.{key} is empty"
        assert _placeholders(text) == _placeholders(STRINGS["en"][key]), f"{lang}.{key} placeholders differ"
        assert "<" not in text and ">" not in text, f"{lang}.{key}: strings are plain text"


@pytest.mark.parametrize(("code", "title"), [
    ("en", "Global Chat"), ("pt_br", "Chat Global"), ("pt", "Chat Global"), ("PT-BR", "Chat Global"),
    ("de_du", "Globaler Chat"), ("de", "Globaler Chat"), ("de_comm", "Globaler Chat"),
    ("fr", "Global Chat"), ("", "Global Chat"), (None, "Global Chat"), ("xx_yy_zz", "Global Chat"),
])
def test_moodle_language_codes(code, title):
    assert strings_for(code)["title"] == title


def test_the_old_block_strings():
    assert strings_for("en")["no_users"] == "No online users."
    assert strings_for("pt_br")["no_users"] == "Nenhum usuário online."
    assert strings_for("de")["no_users"] == "Keine Benutzer online."


def test_missing_keys_fall_back_to_english_and_constants_stay_untouched(monkeypatch):
    partial = {"title": "Chat Global"}
    monkeypatch.setitem(STRINGS, "pt", partial)
    strings = strings_for("pt_br")
    assert strings["title"] == "Chat Global"
    assert strings["send"] == "Send"
    strings["title"] = "changed by a caller"
    assert partial == {"title": "Chat Global"}
    assert strings_for("pt")["title"] == "Chat Global"
