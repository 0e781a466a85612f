"""Tokens never reach a log line in full (issue 12, hole 8): whatever logs a request URL."""

from __future__ import annotations

import logging

import pytest
from tornado.log import access_log, app_log, gen_log

from gchat.app import RedactTokens, redact, redact_tokens_in_logs

TOKEN = "eyJ1IjoxMSwicyI6ImFiYyJ9.axbxwg.cWQq2dH58dTjQDJH9J24MiEFuuQ"


@pytest.mark.parametrize("line", [
    f"101 GET /gchat/ws?token={TOKEN} (127.0.0.1) 0.43ms",
    f"101 GET /gchat/ws?cursor=ab:3&token={TOKEN}&x=1 (127.0.0.1)",
    f"Uncaught exception GET /gchat/ws?token={TOKEN} (127.0.0.1)\nHTTPServerRequest(protocol='http', "
    f"uri='/gchat/ws?token={TOKEN}', version='HTTP/1.1')",
    "GET /gchat/ws?token=" + TOKEN.replace(".", "%2E") + "#frag",
])
def test_a_token_in_a_url_is_redacted(line):
    redacted = redact(line)
    assert "cWQq2dH58dTjQDJH9J24MiEFuuQ" not in redacted and "axbxwg" not in redacted
    assert "token=[redacted]" in redacted


def test_other_parameters_stay():
    assert redact("GET /gchat/api/poll?tab=t1&cursor=ab:3") == "GET /gchat/api/poll?tab=t1&cursor=ab:3"
    assert redact("x_token=abc") == "x_token=abc"


def test_the_filter_rewrites_the_formatted_record_on_tornados_loggers():
    redact_tokens_in_logs()
    redact_tokens_in_logs()  # once per logger, however many applications
    for logger in (access_log, app_log, gen_log):
        assert sum(isinstance(f, RedactTokens) for f in logger.filters) == 1
    record = logging.LogRecord("tornado.access", logging.INFO, __file__, 1, "%d %s", (101, f"/ws?token={TOKEN}"),
                               None)
    assert RedactTokens().filter(record)
    assert record.getMessage() == "101 /ws?token=[redacted]"
