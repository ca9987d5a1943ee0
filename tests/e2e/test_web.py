"""The web page in headless Chromium (Playwright) against `promptdex serve` on a tiny generated + imported corpus.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install chromium`); never `playwright install`.
Screenshots land in artifacts/screenshots/ at the repository root. The served corpus, the browser fixtures and
the sign-in helpers here are reused by test_web_auth.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import REPO, require_shared_fixtures
from tests.helpers import clean_env, run_cli, stop_process

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}
UI_TIMEOUT_MS = 20_000
# Every test browser is the same 127.0.0.1 caller, and a page of 200 results asks for 200 thumbnails at once: these
# tests are about the page, so the request rate limits are raised out of their way (sign-in attempts keep theirs).
UNLIMITED_RATES = {"PROMPTDEX_API__RATE_BURST": "100000", "PROMPTDEX_API__RATE_SUSTAINED": "1000000"}
LINK_INTRO = "sign in as the local admin with this one-time link"
# Reports every Content-Security-Policy violation as a console error (which the Web fixture collects). Playwright
# adds it through the DevTools protocol, so the page's CSP does not apply to it.
CSP_REPORTER = """document.addEventListener("securitypolicyviolation", (e) => console.error(
  `CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"} (${e.sourceFile}:${e.lineNumber})`),
  true);"""

# 20 prompts x 2 seeds = 40 images; sizes, samplers, steps and cfg vary so the filters have something to narrow.
PROMPTS = [
    "a lighthouse on a stormy cliff, oil painting", "zeppelin over a neon city at night, cinematic",
    "origami crane on a wooden desk, macro photo", "an astronaut cat floating in space, highly detailed",
    "misty pine forest at dawn, volumetric light", "steampunk owl with brass goggles, illustration",
    "a bowl of ramen, studio ghibli style", "cyberpunk street market in the rain",
    "ancient temple ruins in the jungle, matte painting", "watercolor portrait of a fox in a scarf",
    "glass dragon sculpture, studio lighting", "retro futuristic car on mars, 1970s poster",
    "snowy mountain cabin with warm windows", "underwater coral palace, bioluminescent",
    "lighthouse keeper reading by candlelight", "a field of sunflowers under a thunderstorm",
    "isometric pixel art castle", "koi pond with cherry blossoms, ukiyo-e",
    "robot gardener watering tomatoes", "desert caravan under the milky way",
]
SIZES = ["128x128", "128x192", "192x128", "128x256", "256x128"]
SAMPLERS = ["Euler a", "DPM++ 2M", "DDIM", "Euler"]


def _require(condition: bool, reason: str) -> None:
    """Skip when a browser prerequisite is missing; under CI=true, fail instead."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true: the browser tests must run)")
    pytest.skip(reason)


@dataclass
class _Shared:
    """Playwright's sync API runs once per thread: modules that import `chromium` share one browser."""

    users: int = 0
    playwright: Any = None
    browser: Any = None


_SHARED = _Shared()


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    _require(CHROMIUM.is_file(), f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "the python package playwright is not installed (pip install playwright)")
        raise
    if _SHARED.users == 0:
        playwright = sync_playwright().start()
        try:
            _SHARED.browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except BaseException:
            playwright.stop()
            raise
        _SHARED.playwright = playwright
    _SHARED.users += 1
    try:
        yield _SHARED.browser
    finally:
        _SHARED.users -= 1
        if _SHARED.users == 0:
            _SHARED.browser.close()
            _SHARED.playwright.stop()


# ---------------------------------------------------------------- the served corpus


@dataclass(frozen=True)
class Account:
    """A user made with the CLI: signs in with the password, calls the API with the token."""

    name: str
    role: str
    password: str
    token: str


@dataclass
class Served:
    base: str
    data_dir: Path
    log: Path
    env: dict[str, str]
    link: str | None = None  # the one-time sign-in link `serve` printed (valid once)

    def call(self, path: str, *, token: str | None = None, **params: Any) -> tuple[int, Any]:
        """GET `path` (as the token's user, or anonymously): the status and the JSON body, also for errors."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        request = urllib.request.Request(f"{self.base}{path}{'?' + query if query else ''}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read() or b"null")

    def get(self, path: str, *, token: str | None = None, **params: Any) -> Any:
        status, body = self.call(path, token=token, **params)
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    def all_ids(self, **params: Any) -> list[int]:
        """Every id GET /api/search returns for `params`, following the cursor."""
        ids: list[int] = []
        cursor = None
        while True:
            page = self.get("/api/search", limit=200, cursor=cursor, **params)
            ids += [item["id"] for item in page["data"]]
            cursor = page["next_cursor"]
            if not cursor:
                return ids


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> str:
    result = run_cli(*args, cwd=cwd, env=env, timeout=900)
    assert result.returncode == 0, f"promptdex {' '.join(args)} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def add_account(root: Path, env: dict[str, str], name: str, role: str, *, token: bool = True) -> Account:
    """`promptdex user add NAME --role ROLE --password-stdin`, then (unless token=False) `promptdex token create`."""
    password = f"pw-{uuid.uuid4().hex[:16]}"
    result = subprocess.run([sys.executable, "-m", "promptdex", "user", "add", name, "--role", role,
                             "--password-stdin"], cwd=root, env=env, input=password + "\n", capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, f"promptdex user add {name} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    secret = _cli("token", "create", name, cwd=root, env=env).strip().splitlines()[-1] if token else ""
    return Account(name, role, password, secret)


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    """Wait for /api/auth/me, which answers in every PROMPTDEX_API__ANONYMOUS mode (a private one too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"promptdex serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/auth/me", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"promptdex serve did not answer /api/auth/me in {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def _sign_in_link(log: Path) -> str | None:
    """The one-time link from the lines `serve` printed: the intro line, then the indented link."""
    lines = log.read_text(errors="replace").splitlines()
    for intro, link in zip(lines, lines[1:], strict=False):
        if intro.startswith(LINK_INTRO) and link.strip().startswith("http"):
            return link.strip()
    return None


@contextmanager
def serve(root: Path, env: dict[str, str], name: str = "serve") -> Iterator[Served]:
    """`promptdex serve` on a free loopback port, in a subprocess that is ended (by its pid) afterwards.
    Its output goes to ROOT/NAME.log."""
    port = _free_port()
    log = root / f"{name}.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "promptdex", "serve", "--port", str(port)], cwd=root,
                                    env={**env, "PYTHONUNBUFFERED": "1"}, stdout=sink, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        _wait_ready(base, proc, log)
        yield Served(base, root / "data", log, env, _sign_in_link(log))
    finally:
        stop_process(proc)


@contextmanager
def corpus_env(pg_server_url: str, root: Path, **extra: str) -> Iterator[dict[str, str]]:
    """The environment of a corpus under `root` with its own database (dropped afterwards) and the tiny models."""
    name = f"web_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(pg_server_url)
    info["dbname"] = name
    try:
        yield clean_env(PROMPTDEX_DATA_DIR=str(root / "data"), PROMPTDEX_MODELS="tiny",
                        PROMPTDEX_DATABASE_URL=psycopg.conninfo.make_conninfo(**info), **extra)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def served(chromium: Any, pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """40 tiny generated images + the sd-metadata fixtures, indexed and served on a free port, own database."""
    fixtures = require_shared_fixtures() / "sd-metadata"
    root = tmp_path_factory.mktemp("web")
    lines = [
        json.dumps({"prompt": prompt, "seed": 1000 + 10 * i, "count": 2, "size": SIZES[i % len(SIZES)],
                    "sampler": SAMPLERS[i % len(SAMPLERS)], "steps": 2 + i % 3, "cfg": [3.0, 5.5, 7.0][i % 3]})
        for i, prompt in enumerate(PROMPTS)
    ]
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    with corpus_env(pg_server_url, root, **UNLIMITED_RATES) as env:
        _cli("generate", "--model", "tiny", "--prompts-file", str(root / "prompts.jsonl"), cwd=root, env=env)
        _cli("import", str(fixtures), cwd=root, env=env)
        _cli("index", cwd=root, env=env)
        with serve(root, env) as served:
            yield served


@pytest.fixture(scope="session")
def creator(served: Served) -> Account:
    """A creator on the served corpus (queuing jobs needs the creator role)."""
    return add_account(served.data_dir.parent, served.env, "web-creator", "creator")


# ---------------------------------------------------------------- a page per test


@dataclass
class Web:
    page: Any
    served: Served
    errors: list[str] = field(default_factory=list)
    allowed: list[tuple[int, str]] = field(default_factory=list)

    def goto(self, path: str) -> Any:
        return self.page.goto(self.served.base + path)

    def allow_http_error(self, status: int, path: str) -> None:
        """A response the test expects (a refused sign-in): Chromium logs it as an error, but the page is right."""
        self.allowed.append((status, f"{self.served.base}{path}"))

    def on_console(self, message: Any) -> None:
        if message.type != "error":
            return
        url = message.location.get("url", "")
        if any(f"status of {status} " in message.text and url.split("?")[0] == expected
               for status, expected in self.allowed):
            return
        self.errors.append(f"console: {message.text} ({url})")

    def wait_cards(self, selector: str = "#results .card") -> Any:
        self.page.wait_for_selector(selector, timeout=UI_TIMEOUT_MS)
        return self.page.locator(selector)

    def card_ids(self, selector: str = "#results .card") -> list[int]:
        return [int(i) for i in self.page.eval_on_selector_all(selector, "cards => cards.map(c => c.dataset.id)")]

    def settle(self) -> None:
        """Wait until no search is in flight and the grid is not showing stale results."""
        self.page.wait_for_function(
            "() => !document.querySelector('#results').hasAttribute('aria-busy') && "
            "(document.querySelector('#state').hidden || document.querySelector('#state').dataset.kind !== 'loading')",
            timeout=UI_TIMEOUT_MS)

    def wait_first_thumbs(self, count: int = 8) -> None:
        """Wait until the first `count` thumbnails have loaded (the rest are lazy)."""
        self.page.wait_for_function(
            f"() => [...document.querySelectorAll('#results .card img')].slice(0, {count}).every(i => i.complete)")

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.wait_for_timeout(400)  # thumbnails fade in
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def _new_web(chromium: Any, served: Served, viewport: dict[str, int]) -> Iterator[Web]:
    """A fresh browser context (no cookies) and page; at the end, no console error, page error or CSP violation."""
    context = chromium.new_context(viewport=viewport, permissions=["clipboard-read", "clipboard-write"],
                                   base_url=served.base)
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.add_init_script(CSP_REPORTER)
    page = context.new_page()
    web = Web(page, served)
    page.on("console", web.on_console)
    page.on("pageerror", lambda error: web.errors.append(f"pageerror: {error}"))
    yield web
    context.close()
    assert not web.errors, "the page logged errors:\n" + "\n".join(web.errors)


@pytest.fixture
def web(chromium: Any, served: Served) -> Iterator[Web]:
    yield from _new_web(chromium, served, DESKTOP)


@pytest.fixture
def phone(chromium: Any, served: Served) -> Iterator[Web]:
    yield from _new_web(chromium, served, PHONE)


def sign_in(web: Web, account: Account) -> None:
    """Sign the page's browser context in through POST /api/auth/login (it shares the context's cookies)."""
    response = web.page.request.post(f"{web.served.base}/api/auth/login",
                                     data={"name": account.name, "password": account.password})
    assert response.status == 200, response.text()
    assert response.json()["user"] == {"name": account.name, "role": account.role}


def _open_first_detail(web: Web) -> int:
    first = web.wait_cards().first
    image_id = int(first.get_attribute("data-id"))
    first.click()
    web.page.wait_for_url(re.compile(rf"/image/{image_id}(\?|$)"))
    web.page.wait_for_selector(f"#detail[open][data-loaded=full][data-image-id='{image_id}']")
    return image_id


# ---------------------------------------------------------------- tests


def test_search_shows_the_results_of_the_api(web: Web) -> None:
    web.goto("/")
    web.wait_cards()
    web.settle()
    browse = web.served.get("/api/search", limit=24)
    assert web.card_ids() == [item["id"] for item in browse["data"]]
    assert re.fullmatch(r"24 results · more · \d+ ms", web.page.text_content("#status") or "")

    web.page.click("label:has(input[name=mode][value=keyword])")
    with web.page.expect_response(lambda r: "/api/search" in r.url and "q=lighthouse" in r.url):
        web.page.fill("#q", "lighthouse")  # search as you type: no Enter
    web.settle()
    expected = web.served.get("/api/search", q="lighthouse", mode="keyword", limit=24)["data"]
    assert expected, "the keyword index finds the generated lighthouse prompts"
    assert web.card_ids() == [item["id"] for item in expected]
    assert all("lighthouse" in (alt or "") for alt in web.page.eval_on_selector_all(
        "#results .card img", "imgs => imgs.map(i => i.alt)"))
    assert "q=lighthouse" in web.page.url and "mode=keyword" in web.page.url


def test_suggestions_complete_the_query(web: Web) -> None:
    web.goto("/")
    web.wait_cards()
    web.page.click("#q")
    web.page.keyboard.type("zeppelin over a neon ci")
    wanted = "zeppelin over a neon city"
    web.page.locator("#suggestions [role=option]", has_text=wanted).first.wait_for()
    texts = web.page.eval_on_selector_all("#suggestions [role=option]", "os => os.map(o => o.textContent)")
    index = texts.index(wanted)
    with web.page.expect_response(lambda r: "/api/search" in r.url and "q=zeppelin+over+a+neon+city" in r.url):
        for _ in range(index + 1):
            web.page.keyboard.press("ArrowDown")
        assert web.page.get_attribute("#q", "aria-activedescendant") == f"suggestion-{index}"
        web.page.keyboard.press("Enter")
    assert web.page.input_value("#q") == "zeppelin over a neon city"
    web.page.wait_for_selector("#suggestions", state="hidden")


def test_a_filter_narrows_the_results(web: Web) -> None:
    web.goto("/?limit=200")
    web.wait_cards()
    web.settle()
    everything = web.card_ids()
    web.page.click("#filters-toggle")
    web.page.wait_for_selector("#f-sampler option[value='DDIM']", state="attached")
    with web.page.expect_response(lambda r: "/api/search" in r.url and "sampler=DDIM" in r.url):
        web.page.select_option("#f-sampler", "DDIM")
    web.settle()
    narrowed = web.card_ids()
    expected = web.served.get("/api/search", sampler="DDIM", limit=200)["data"]
    assert narrowed == [item["id"] for item in expected]
    assert all(item["sampler"] == "DDIM" for item in expected)
    assert 0 < len(narrowed) < len(everything)
    assert web.page.text_content("#filter-count") == "1"


def test_detail_opens_from_a_click_and_back_closes_it(web: Web, phone: Web) -> None:
    web.goto("/")
    image_id = _open_first_detail(web)
    record = web.served.get(f"/api/images/{image_id}")
    assert web.page.text_content("#detail-prompt") == (record["prompt"] or "(no prompt recorded)")
    params = web.page.text_content("#detail-params") or ""
    assert str(record["seed"]) in params and f"{record['width']} × {record['height']}" in params
    web.page.wait_for_selector("#detail-image.loaded")
    web.screenshot("detail-desktop")
    web.page.go_back()
    web.page.wait_for_selector("#detail:not([open])", state="attached")
    assert urllib.parse.urlparse(web.page.url).path == "/"

    phone.goto("/")
    _open_first_detail(phone)
    phone.page.wait_for_selector("#detail-image.loaded")
    phone.screenshot("detail-phone")


def test_detail_opens_from_its_url(web: Web) -> None:
    image_id = web.served.get("/api/search", limit=5)["data"][2]["id"]
    record = web.served.get(f"/api/images/{image_id}")
    web.goto(f"/image/{image_id}")
    web.page.wait_for_selector(f"#detail[open][data-loaded=full][data-image-id='{image_id}']")
    assert web.page.text_content("#detail-prompt") == (record["prompt"] or "(no prompt recorded)")
    assert web.page.get_attribute("#detail-image", "src") == record["url"]
    web.page.keyboard.press("Escape")
    web.page.wait_for_selector("#detail:not([open])", state="attached")
    assert urllib.parse.urlparse(web.page.url).path == "/"
    web.wait_cards()


def test_copy_button_puts_exactly_the_a1111_text_on_the_clipboard(web: Web) -> None:
    web.goto("/")
    image_id = _open_first_detail(web)
    expected = web.served.get(f"/api/images/{image_id}")["reproduce"]["a1111"]
    web.page.click("#copy-a1111")
    web.page.wait_for_selector("#copy-a1111.copied")
    assert web.page.text_content("#copy-a1111") == "Copied!"
    assert web.page.evaluate("navigator.clipboard.readText()") == expected
    web.page.click("#copy-seed")
    web.page.wait_for_selector("#copy-seed.copied")
    assert web.page.evaluate("navigator.clipboard.readText()") == str(web.served.get(f"/api/images/{image_id}")["seed"])


def test_the_similar_grid_fills(web: Web) -> None:
    web.goto("/")
    image_id = _open_first_detail(web)
    web.wait_cards("#similar-grid .card")
    expected = [item["id"] for item in web.served.get(f"/api/images/{image_id}/similar", k=24)["data"]
                if item["id"] != image_id]
    assert expected and web.card_ids("#similar-grid .card") == expected
    web.page.locator("#similar-grid .card").first.click()  # a similar image opens in the detail view
    web.page.wait_for_url(re.compile(rf"/image/{expected[0]}(\?|$)"))
    web.page.wait_for_selector(f"#detail[data-loaded=full][data-image-id='{expected[0]}']")


def test_reproduce_creates_a_job_and_shows_its_status_until_done(web: Web, creator: Account) -> None:
    sign_in(web, creator)
    web.goto("/")
    web.page.wait_for_selector(f"#account-name:text-is('{creator.name}')")
    image_id = _open_first_detail(web)
    assert web.page.is_enabled("#job-reproduce") and web.page.is_hidden("#job-hint")
    with web.page.expect_response(lambda r: r.url.endswith("/api/jobs") and r.request.method == "POST") as created:
        web.page.click("#job-reproduce")
    assert created.value.status == 201, created.value.text()
    csrf = {c["name"]: c["value"] for c in web.page.context.cookies()}["promptdex_csrf"]
    assert created.value.request.headers.get("x-csrf-token") == csrf, "a signed-in page sends the CSRF token"
    job_id = created.value.json()["job_ids"][0]
    assert isinstance(job_id, str) and re.fullmatch(r"[0-9a-f]{8,64}", job_id), "job ids are opaque hex strings"
    status = web.page.locator(f"#job-list li[data-job-id='{job_id}'] .job-status:not([data-status=pending])")
    status.wait_for()  # "pending" until the page's first answer about the job (a busy machine may take a while)
    assert status.get_attribute("data-status") in {"queued", "running"}
    assert web.served.get(f"/api/jobs/{job_id}", token=creator.token)["kind"] == "reproduce"
    assert web.served.call(f"/api/jobs/{job_id}")[0] == 404, "a job is visible to its owner, not to anonymous callers"

    _cli("worker", "--once", cwd=web.served.data_dir.parent, env=web.served.env)  # the page polls every 2 s
    web.page.wait_for_selector(f"#job-list li[data-job-id='{job_id}'] .job-status[data-status=done]")
    job = web.served.get(f"/api/jobs/{job_id}", token=creator.token)
    assert job["status"] == "done" and job["image_ids"]
    links = web.page.eval_on_selector_all(f"#job-list li[data-job-id='{job_id}'] a", "as => as.map(a => a.pathname)")
    assert links == [f"/image/{i}" for i in job["image_ids"]]
    assert web.page.get_attribute("#detail", "data-image-id") == str(image_id)


def test_search_by_uploaded_image(web: Web) -> None:
    web.goto("/")
    web.wait_cards()
    image_id = web.card_ids()[0]
    upload = web.served.data_dir.parent / f"upload-{image_id}.png"
    with urllib.request.urlopen(f"{web.served.base}/images/{image_id}", timeout=30) as response:
        upload.write_bytes(response.read())
    with web.page.expect_response(lambda r: "/api/search/image" in r.url) as answered:
        web.page.set_input_files("#image-input", str(upload))
    assert answered.value.status == 200
    web.page.wait_for_selector("#image-banner:not([hidden])")
    web.settle()
    results = answered.value.json()["data"]
    assert results and web.card_ids() == [item["id"] for item in results]
    assert "Results for your image" in (web.page.text_content("#image-banner") or "")
    assert re.match(r"\d+ similar images? · \d+ ms", web.page.text_content("#status") or "")
    web.page.click("#image-clear")
    web.page.wait_for_selector("#image-banner", state="hidden")


def test_scrolling_loads_the_next_page(web: Web) -> None:
    total = len(web.served.all_ids())
    assert total > 12
    cursor_requests: list[str] = []
    web.page.on("request", lambda r: "/api/search" in r.url and "cursor=" in r.url and cursor_requests.append(r.url))
    with web.page.expect_response(lambda r: "/api/search" in r.url and "limit=6" in r.url) as first:
        web.goto("/?limit=6")
    assert first.value.json()["next_cursor"]
    web.wait_cards()
    for _ in range(60):
        if len(web.card_ids()) >= total:
            break
        web.page.mouse.wheel(0, 4000)
        web.page.wait_for_timeout(150)
    web.settle()
    assert web.card_ids() == web.served.all_ids(), "every page, in order, without duplicates"
    assert len(cursor_requests) >= (total - 1) // 6
    web.page.wait_for_selector("#end:not([hidden])")
    assert "more" not in (web.page.text_content("#status") or "")


def test_keyboard_slash_arrows_and_escape(web: Web) -> None:
    web.goto("/")
    web.wait_cards()
    web.settle()
    web.page.keyboard.press("/")
    assert web.page.evaluate("document.activeElement.id") == "q"
    web.page.keyboard.press("Tab")  # leave the search box so arrows are not typing
    ids = web.card_ids()
    first = _open_first_detail(web)
    assert first == ids[0]
    web.page.keyboard.press("ArrowRight")
    web.page.wait_for_selector(f"#detail[data-image-id='{ids[1]}']")
    assert urllib.parse.urlparse(web.page.url).path == f"/image/{ids[1]}"
    web.page.keyboard.press("ArrowLeft")
    web.page.wait_for_selector(f"#detail[data-image-id='{ids[0]}']")
    web.page.keyboard.press("Escape")
    web.page.wait_for_selector("#detail:not([open])", state="attached")
    assert urllib.parse.urlparse(web.page.url).path == "/"
    assert web.page.evaluate("document.activeElement.dataset.id") == str(ids[0])


def test_screenshots_at_phone_and_desktop_widths(web: Web, phone: Web) -> None:
    for name, client in (("desktop", web), ("phone", phone)):
        client.goto("/")
        client.wait_cards()
        client.settle()
        client.wait_first_thumbs()
        assert client.page.is_visible("#tiny-banner"), "the corpus uses the tiny models, so the banner shows"
        client.screenshot(f"grid-{name}")
        client.page.click("#filters-toggle")
        client.page.click("#q")
        client.page.keyboard.type("lightho")
        client.page.wait_for_selector("#suggestions li")
        client.settle()
        client.screenshot(f"search-{name}")
    # the imported fixtures are real pictures: the README's screenshot
    web.goto("/?q=masterpiece&mode=keyword")
    web.wait_cards()
    web.settle()
    web.wait_first_thumbs()
    web.screenshot("showcase-desktop")
    _open_first_detail(web)
    web.page.wait_for_selector("#detail-image.loaded")
    web.wait_cards("#similar-grid .card")
    web.screenshot("showcase-detail-desktop")
    widths = web.page.evaluate("document.documentElement.scrollWidth"), phone.page.evaluate(
        "document.documentElement.scrollWidth")
    assert widths == (DESKTOP["width"], PHONE["width"]), "no horizontal overflow"


def _open_detail(web: Web, image_id: int) -> None:
    web.goto(f"/image/{image_id}")
    web.page.wait_for_selector(f"#detail[open][data-loaded=full][data-image-id='{image_id}']")


def test_the_detail_offers_a_comfyui_workflow_to_download(web: Web) -> None:
    [comfy] = [i for i in web.served.get("/api/search", source="comfyui", limit=50)["data"]
               if web.served.get(f"/api/images/{i['id']}")["has_workflow"]][:1]
    _open_detail(web, comfy["id"])
    link = web.page.locator("#download-workflow")
    assert link.is_visible() and link.inner_text() == "ComfyUI workflow"
    assert link.get_attribute("href") == f"/api/images/{comfy['id']}/workflow"
    assert link.get_attribute("download") == f"promptdex-{comfy['id']}-workflow.json"
    with web.page.expect_download() as download:
        link.click()
    saved = json.loads(Path(download.value.path()).read_text())
    assert saved == json.loads(web.served.get(f"/api/images/{comfy['id']}")["raw_metadata"]["workflow"])
    a1111 = web.served.get("/api/search", source="a1111", limit=1)["data"][0]
    _open_detail(web, a1111["id"])
    assert not web.page.locator("#download-workflow").is_visible()
    assert web.page.locator("#copy-a1111").is_enabled()  # A1111-family images: the settings text, as before


def test_only_images_the_tiny_model_made_are_called_noise(web: Web, served: Served) -> None:
    web.goto("/")
    web.wait_cards()
    banner = web.page.inner_text("#tiny-banner")
    assert "Images generated here" in banner and "imported images show as they are" in banner, banner
    generated = served.get("/api/search", source="generated", limit=1)["data"][0]
    _open_detail(web, generated["id"])
    assert web.page.locator("#detail-tiny-note").is_visible()
    imported = served.get("/api/search", source="comfyui", limit=1)["data"][0]
    _open_detail(web, imported["id"])
    assert not web.page.locator("#detail-tiny-note").is_visible()


def test_admins_see_the_files_that_hold_an_image(web: Web, served: Served) -> None:
    imported = served.get("/api/search", source="comfyui", limit=1)["data"][0]
    _open_detail(web, imported["id"])
    assert web.page.locator("#detail-params .param.files").count() == 0  # anonymous: no server paths
    admin = add_account(served.data_dir.parent, served.env, "web-admin", "admin")
    sign_in(web, admin)
    paths = served.get(f"/api/images/{imported['id']}", token=admin.token)["paths"]
    assert paths and all(Path(p).is_file() for p in paths)
    _open_detail(web, imported["id"])
    row = web.page.locator("#detail-params .param.files")
    assert row.locator("dt").inner_text() in ("File", f"Files ({len(paths)})")
    assert row.locator("li").all_inner_texts() == paths
