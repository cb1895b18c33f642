"""A 500 is only for the gateway's own bugs: the caller gets a request id, the log the traceback."""

from __future__ import annotations

import json
import logging

import pytest

from addons import replies


@pytest.mark.parametrize("dialect", ["openai_chat", "openai_responses", "claude", "gemini"])
def test_internal_error_carries_a_request_id_that_the_log_has_with_the_traceback(
    dialect: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    try:
        raise KeyError("a bug")
    except KeyError:
        resp = replies.internal_error(dialect, "routing the request")
    request_id = resp.headers["x-request-id"]
    assert resp.status_code == 500 and request_id.startswith("req_")
    assert request_id in json.dumps(json.loads(resp.content))
    record = next(r for r in caplog.records if request_id in r.getMessage())
    assert record.exc_info is not None and record.exc_info[0] is KeyError
