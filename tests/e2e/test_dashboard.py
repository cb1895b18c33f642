"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright (no browser
download: `make test` installs the OS package when /usr/bin/chromium is missing).

Logs in with a key, watches an account go to "cooling" after the upstream's 429 and back to
"ready" after the page's Reset button, and saves screenshots as test artifacts
(test-artifacts/dashboard-*.png; AICLIENT_DOCS_SCREENSHOT=1 also refreshes docs/dashboard.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import CLIENT_KEY, Fakes, api_key_providers
from tests.drivers import MODEL
from tests.fakes.codex import BASE_PATH as CODEX_BASE_PATH
from tests.fakes.codex import FakeCodex
from tests.fakes.server import Fault
from tests.gateway import GatewayProcess, start_gateway

playwright_api = pytest.importorskip("playwright.sync_api")

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("AICLIENT_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The page polls every 3 s; a state change shows within one poll.
WAIT_MS = 15_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)")


@pytest.fixture(scope="module")
def codex() -> Iterator[FakeCodex]:
    with FakeCodex() as server:
        server.used_percent["acct-1"] = 42.0
        yield server


@pytest.fixture(scope="module")
def gw(fakes: Fakes, codex: FakeCodex, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("dashboard")
    creds = workdir / "codex-auth.json"
    creds.write_text(json.dumps(codex.auth_file("acct-1")), encoding="utf-8")
    creds.chmod(0o600)
    config = {
        "api_keys": [CLIENT_KEY],
        "default_provider": "openai-custom",
        "providers": {
            **api_key_providers(fakes),
            "openai-codex-oauth": {
                "base_url": f"{codex.url}{CODEX_BASE_PATH}",
                "token_url": f"{codex.url}/oauth/token",
                "accounts": [{"label": "plus", "credentials": str(creds)}],
            },
            "openai-qwen-oauth": {"accounts": [{"label": "not-logged-in", "credentials": "missing.json"}]},
        },
        "retry": {"max_wait": 1},
    }
    gw = start_gateway(workdir, config)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def page(gw: GatewayProcess) -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        yield page
        context.close()
        browser.close()


def traffic(gw: GatewayProcess, n: int) -> None:
    """Some requests to three providers and models, so the charts have something to draw."""
    for i in range(n):
        for provider, model in (("openai-custom", MODEL), ("claude-custom", MODEL), ("openai-codex-oauth", "gpt-5.5")):
            r = httpx2.post(
                f"{gw.url}/{provider}/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": f"chart {i} " * (i + 1)}]},
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
                timeout=20,
            )
            assert r.status_code == 200, r.text


def state_of(page, account: str):
    return page.locator(f'#accounts tr[data-account="{account}"]')


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_login_cooling_and_reset(gw: GatewayProcess, fakes: Fakes, page):
    data_requests: list = []
    page.on("request", lambda req: data_requests.append(req) if "/dashboard/data" in req.url else None)
    traffic(gw, 3)
    page.goto(f"{gw.url}/dashboard")
    # Without a key the page asks for one; a wrong key is refused and asked again.
    page.locator("#login").wait_for(state="visible")
    page.fill("#key", "not-the-key")
    page.click("#login button")
    playwright_api.expect(page.locator("#login-error")).to_contain_text("invalid API key")
    page.fill("#key", CLIENT_KEY)
    page.click("#login button")
    row = state_of(page, "openai-custom/oa")
    playwright_api.expect(row).to_have_attribute("data-state", "ready")
    playwright_api.expect(state_of(page, "openai-qwen-oauth/not-logged-in")).to_have_attribute("data-state", "unusable")
    # The subscription usage window Codex reports with every answer.
    window = state_of(page, "openai-codex-oauth/plus").locator('[data-window="primary"]')
    playwright_api.expect(window).to_have_text(re.compile(r"^primary \(5 h\): 42 % used, resets in (59 min|1 h)"))
    # The key lives in this tab's sessionStorage and travels as a header, never in a URL.
    assert page.evaluate("sessionStorage.getItem('aiclient.dashboard.key')") == CLIENT_KEY
    assert data_requests and all(CLIENT_KEY not in r.url for r in data_requests)
    assert data_requests[-1].headers["authorization"] == f"Bearer {CLIENT_KEY}"
    assert CLIENT_KEY not in page.url

    fakes.openai.faults.append(Fault(status=429, headers={"retry-after": "900"}))
    r = httpx2.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "rate limit me"}]},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        timeout=10,
    )
    assert r.status_code == 429
    playwright_api.expect(row).to_have_attribute("data-state", "cooling")
    playwright_api.expect(row.locator(".cooldown")).to_have_text(re.compile(rf"{MODEL}: 1[45] min \d+ s"))
    playwright_api.expect(row.locator("td.err").last).to_contain_text("rate_limited")
    playwright_api.expect(page.locator("#s-accounts")).to_have_text(re.compile(r"^3 / 1 / 1$"))
    assert int(page.inner_text("#s-hour")) >= 10
    cooling = screenshot(page, "cooling")
    assert cooling.stat().st_size > 10_000
    if os.environ.get("AICLIENT_DOCS_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(cooling, REPO / "docs" / "dashboard.png")

    row.locator('button[data-action="reset"]').click()
    playwright_api.expect(row).to_have_attribute("data-state", "ready")
    playwright_api.expect(row.locator(".cooldown")).to_have_text("")
    assert f"admin {gw_key_id()}: reset openai-custom/oa" in gw.log()
    screenshot(page, "after-reset")
    # And the pool really serves again.
    r = httpx2.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "back"}]},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
        timeout=10,
    )
    assert r.status_code == 200


def test_forget_key_asks_again(gw: GatewayProcess, page):
    page.goto(f"{gw.url}/dashboard")
    page.locator("#app").wait_for(state="visible")
    page.click("#logout")
    page.locator("#login").wait_for(state="visible")
    assert page.evaluate("sessionStorage.getItem('aiclient.dashboard.key')") is None


def gw_key_id() -> str:
    import hashlib

    return "key-" + hashlib.sha256(CLIENT_KEY.encode()).hexdigest()[:12]
