"""The console in a real browser: Debian's headless Chromium driven through chromedriver by
Selenium, against a gateway and an upstream on loopback sockets with a real Redis.

Nothing is downloaded: Selenium is given chromedriver's path, so Selenium Manager never runs.
When Chromium or chromedriver is missing these tests fail, saying what to install; they never
skip. One browser and one gateway serve a whole module, so the tests stay fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx2
import pytest
import redis as redis_sync
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from gateway.app import create_app
from gateway.dev.embedded_redis import RedisProcess
from gateway.sim.app import create_sim_app
from gateway.sim.config import SimConfig
from gateway.web.asgi import Receive, Scope, Send
from tests.conftest import Stack, gateway_config
from tests.oidc_provider import TestIdp, serve
from tests.servers import free_port, run_server, wait_for

CHROMIUM = Path(os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("GATEWAY_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
CLIP = Path(__file__).parent / "data" / "clip.webm"  # 1.2 s of VP8, made by Chromium itself
ADMIN, TEAM_ADMIN = "gateway-admin", "team-admin"
PRICES = {"gpt-4o-mini": {"input_per_million": 0.15, "output_per_million": 0.6}}
_CONTENT = re.compile(r"^/v1/videos/([^/]+)/content$")


def require_browser() -> None:
    missing = [
        str(p) for p in (CHROMIUM, CHROMEDRIVER) if not (p.is_file() and os.access(p, os.X_OK))
    ]
    if missing:
        pytest.fail(
            f"The console's browser tests need Chromium and chromedriver, missing: "
            f"{', '.join(missing)}. Install Debian's packages: "
            "apt-get install chromium chromium-driver (or point GATEWAY_TEST_CHROMIUM and "
            "GATEWAY_TEST_CHROMEDRIVER at other builds of the same version).",
            pytrace=False,
        )


class PlayableUpstream:
    """The simulator, except that a video's content is a real, playable clip: the
    simulator's own bodies are noise no browser can decode. Every content request is noted
    with the credential it carried, so a test can tell that the bytes came through."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.state = sim.state
        self.clip = CLIP.read_bytes()
        self.served: list[tuple[str, str]] = []  # (upstream job id, authorization)
        self.content_type = b"video/webm"  # a test may make it another upstream's, then back
        self.more_headers: list[tuple[bytes, bytes]] = []  # after content-type, say a second one

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        m = _CONTENT.match(scope.get("path", "")) if scope["type"] == "http" else None
        if m is None:
            await self.sim(scope, receive, send)
            return
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        self.served.append((m.group(1), auth))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", self.content_type),
                    (b"content-length", str(len(self.clip)).encode()),
                    *self.more_headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.clip})


@dataclasses.dataclass
class ConsoleStack:
    stack: Stack
    upstream: PlayableUpstream
    shots: Path  # screenshots go here
    idp: TestIdp  # the OpenID Connect provider the console may sign in through

    @property
    def url(self) -> str:
        return self.stack.url


@pytest.fixture(scope="module")
def console_stack(
    redis_server: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsoleStack]:
    client = redis_sync.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    keys = {"primary": f"sk-primary-{secrets.token_hex(12)}"}
    sim = create_sim_app(SimConfig(keys=tuple(keys.values()), job_seconds=0.2))
    upstream = PlayableUpstream(sim)
    jwt_secret = secrets.token_urlsafe(48)
    # Sign-in through an IdP too: it is "localhost", the gateway "127.0.0.1", two sites to the
    # browser, as a company IdP and the gateway would be.
    idp = TestIdp(client_id="gateway-console", client_secret=secrets.token_urlsafe(32))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    idp.redirect_uri = base + "/console/oidc/callback"
    with contextlib.ExitStack() as stack:
        sim_url = stack.enter_context(run_server(upstream, server_header=False))
        stack.enter_context(serve(idp))
        settings = gateway_config(
            sim_url,
            redis_server.url,
            jwt_secret,
            keys,
            teams={"default": {}, "team-a": {}, "team-b": {}},
            pricing={"models": PRICES},
            videos={"models": {"sora-2": {"seconds": [4], "sizes": ["1280x720"]}}},
            server={"public_base_url": base},
            auth={"algorithms": ["HS256", "RS256"], "jwks_url": idp.issuer + "/jwks"},
            console={
                "session_secret": secrets.token_urlsafe(32),
                "session_hours": 1,
                "oidc": {
                    "issuer": idp.issuer,
                    "client_id": idp.client_id,
                    "client_secret": idp.client_secret,
                    "display_name": "Test IdP",
                },
            },
        )
        app = create_app(settings)
        url = stack.enter_context(run_server(app, server_header=False, port=port))
        shots = tmp_path_factory.mktemp("console-screenshots")
        yield ConsoleStack(
            Stack(url, sim_url, sim, app, settings, jwt_secret, keys), upstream, shots, idp
        )
        print(f"\nconsole screenshots: {shots}")  # shown with -s


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--password-store=basic",
    ):
        options.add_argument(arg)
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"console-chromium-{secrets.token_hex(4)}"
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports land there
    # An explicit driver path: Selenium Manager (which would download one) never runs.
    chrome = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    chrome.set_page_load_timeout(20)
    chrome.set_script_timeout(20)
    try:
        yield chrome
    finally:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Console:
    """A person at the console: the browser, signed in as someone."""

    def __init__(self, driver: webdriver.Chrome, cs: ConsoleStack) -> None:
        self.driver = driver
        self.cs = cs

    def open(self, path: str) -> None:
        self.driver.get(self.cs.url + path)

    def sign_in(self, token: str) -> None:
        self.driver.delete_all_cookies()
        self.open("/console/sign-in")
        self.driver.find_element(By.NAME, "token").send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait_for(lambda: self.driver.current_url.endswith("/console"), timeout=5)
        # The URL changes when the navigation commits, before the page is there: wait for the
        # console's own navigation bar, which only a signed-in page has.
        WebDriverWait(self.driver, 10).until(
            expected_conditions.presence_of_element_located((By.TAG_NAME, "nav"))
        )

    def text(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "body").text)

    def h1(self) -> str:
        return str(self.driver.find_element(By.TAG_NAME, "h1").text)

    def arrive(self, h1: str) -> None:
        """Wait until the page whose heading is ``h1`` is there: after a click or a redirect
        the URL changes before the new document is, and an element found in between can
        belong to the page being replaced."""
        WebDriverWait(self.driver, 10, ignored_exceptions=(WebDriverException,)).until(
            lambda d: d.find_element(By.TAG_NAME, "h1").text == h1
        )

    def click_when_there(self, element_id: str) -> None:
        """Click the element with this id once the page that has it is there."""
        WebDriverWait(self.driver, 10, ignored_exceptions=(WebDriverException,)).until(
            expected_conditions.element_to_be_clickable((By.ID, element_id))
        ).click()

    def submit(self, css: str) -> None:
        """Click a form's button and wait for the page the POST leads to."""
        page = self.driver.find_element(By.TAG_NAME, "html")
        self.driver.find_element(By.CSS_SELECTOR, css).click()
        WebDriverWait(self.driver, 10).until(lambda d: _replaced(page))

    def follow(self, link_text: str) -> None:
        page = self.driver.find_element(By.TAG_NAME, "html")
        self.driver.find_element(By.LINK_TEXT, link_text).click()
        WebDriverWait(self.driver, 10).until(lambda d: _replaced(page))

    def browser_log(self) -> list[dict[str, Any]]:
        """What the page's console received since the last call (CSP reports included)."""
        get_log = cast(Callable[[str], list[dict[str, Any]]], self.driver.get_log)
        return get_log("browser")

    def shot(self, name: str) -> Path:
        path = self.cs.shots / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), name
        return path

    def status_of(self, path: str) -> int:
        """The status a signed-in GET of ``path`` gets (the browser's own cookie, over HTTP)."""
        cookie = self.driver.get_cookie("gw_console")
        assert cookie is not None
        r = httpx2.get(self.cs.url + path, cookies={"gw_console": cookie["value"]})
        return r.status_code


def _replaced(element: WebElement) -> bool:
    """Whether the document ``element`` belongs to has been replaced. Chromium answers a
    stale reference either as a stale element or, while the new document loads, as "node
    does not belong to the document": both mean the same here."""
    try:
        element.is_enabled()
    except WebDriverException:  # StaleElementReferenceException is one
        return True
    return False
