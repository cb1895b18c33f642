"""The loopback listener that receives an OAuth authorization code (the browser logins of
`python -m auth login gemini|codex`): one HTTP server on 127.0.0.1, waiting for the redirect whose
`state` matches; a redirect with another state is refused and the wait goes on."""

from __future__ import annotations

import html
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


class OAuthCallbackServer(HTTPServer):
    def __init__(
        self,
        port: int,
        state: str,
        *,
        path: str,
        vendor: str,
        error: type[Exception],
        redirect_host: str = "127.0.0.1",
    ) -> None:
        """`vendor` names who refused in messages; `error` is what wait() raises; `redirect_host` is the
        host of the redirect URI exactly as the OAuth client registered it (the server itself only
        listens on 127.0.0.1)."""
        self.state = state
        self.path = path
        self.vendor = vendor
        self.error = error
        self.redirect_host = redirect_host
        self.code: str | None = None
        self.failure: str | None = None
        super().__init__(("127.0.0.1", port), _CallbackHandler)

    @property
    def redirect_uri(self) -> str:
        return f"http://{self.redirect_host}:{self.server_address[1]}{self.path}"

    def wait(self, timeout: float) -> str:
        """The code, once the browser came back with it; raises `error` on a refusal or a timeout."""
        deadline = time.monotonic() + timeout
        self.timeout = 0.5
        while self.code is None and self.failure is None:
            if time.monotonic() > deadline:
                raise self.error(f"no answer from the browser within {timeout:g} s")
            self.handle_request()
        if self.failure is not None:
            raise self.error(self.failure)
        assert self.code is not None
        return self.code


class _CallbackHandler(BaseHTTPRequestHandler):
    server: OAuthCallbackServer

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != self.server.path:
            self._page(404, "Not found.")
            return
        params = dict(urllib.parse.parse_qsl(url.query))
        if params.get("state") != self.server.state:
            print("ignored a redirect with a wrong state (not from this login)", file=sys.stderr, flush=True)
            self._page(400, "This answer does not belong to the login in progress (state mismatch).")
            return
        if "error" in params:
            self.server.failure = f"{self.server.vendor} refused the login: {params['error']}"
            self._page(400, f"Login failed: {params['error']}. You can close this tab.")
            return
        if not params.get("code"):
            self._page(400, "The redirect carries no code.")
            return
        self.server.code = params["code"]
        self._page(200, "Login complete. You can close this tab and return to the terminal.")

    def _page(self, status: int, text: str) -> None:
        body = f"<!doctype html><title>aiclient-mitm login</title><p>{html.escape(text)}</p>".encode()
        self.send_response(status)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the URL carries the code."""
