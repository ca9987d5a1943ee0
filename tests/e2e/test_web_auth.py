"""Accounts in the web page (headless Chromium): sign-in and sign-out, the one-time link, a private instance, roles.

A corpus of its own (four small PNGs with A1111 parameters, imported and indexed), served twice at once: with
anonymous read access (the default) and private (PROMPTDEX_API__ANONYMOUS=none). Every page is checked for console
errors and CSP violations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from tests.e2e.test_web import (
    DESKTOP,
    Account,
    Served,
    Web,
    _cli,
    _new_web,
    add_account,
    chromium,  # noqa: F401  (the browser fixture)
    corpus_env,
    serve,
)

pytestmark = pytest.mark.e2e

PROMPTS = ["a lighthouse on a stormy cliff", "origami crane on a wooden desk", "misty pine forest at dawn",
           "a bowl of ramen, studio ghibli style"]
IMAGES = len(PROMPTS)
WRONG = "sign-in failed: unknown user or wrong password"
JOB_HINT = "Sign in as a creator to queue jobs"


@dataclass
class Site:
    public: Served  # anonymous callers may read (the default)
    private: Served  # anonymous callers get 401 from every API and file route
    creator: Account
    viewer: Account


def _write_pngs(folder: Path) -> None:
    """Small PNGs carrying A1111 parameters, as a WebUI saves them (importing them needs no model)."""
    folder.mkdir()
    for i, prompt in enumerate(PROMPTS):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"{prompt}\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
                                    f"Seed: {100 + i}, Size: 96x96, Model: auth-test")
        Image.new("RGB", (96, 96), (40 + 50 * i, 90, 160)).save(folder / f"{i}.png", pnginfo=info)


@pytest.fixture(scope="module")
def site(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The corpus, indexed; a creator and a viewer made with the CLI; served public and private."""
    root = tmp_path_factory.mktemp("web-auth")
    _write_pngs(root / "pngs")
    with corpus_env(pg_server_url, root) as env:
        _cli("import", str(root / "pngs"), cwd=root, env=env)
        _cli("index", cwd=root, env=env)
        creator = add_account(root, env, "ada", "creator")
        viewer = add_account(root, env, "vic", "viewer", token=False)
        with serve(root, env, "serve-public") as public, \
                serve(root, {**env, "PROMPTDEX_API__ANONYMOUS": "none"}, "serve-private") as private:
            yield Site(public, private, creator, viewer)


@pytest.fixture(scope="module")
def public(site: Site) -> Served:
    return site.public


@pytest.fixture(scope="module")
def private(site: Site) -> Served:
    return site.private


@pytest.fixture
def web(chromium: Any, public: Served) -> Iterator[Web]:  # noqa: F811
    yield from _new_web(chromium, public, DESKTOP)


@pytest.fixture
def other(chromium: Any, public: Served) -> Iterator[Web]:  # noqa: F811
    """A second browser context (its own cookies) on the public site."""
    yield from _new_web(chromium, public, DESKTOP)


@pytest.fixture
def private_web(chromium: Any, private: Served) -> Iterator[Web]:  # noqa: F811
    yield from _new_web(chromium, private, DESKTOP)


def cookies(web: Web) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in web.page.context.cookies()}


def me(web: Web) -> Any:
    """GET /api/auth/me with the browser context's cookies."""
    response = web.page.request.get(f"{web.served.base}/api/auth/me")
    assert response.status == 200, response.text()
    return response.json()


def open_form(web: Web) -> None:
    web.page.click("#signin-toggle")
    web.page.wait_for_selector("#signin-panel:not([hidden]) #signin-form")
    assert web.page.get_attribute("#signin-toggle", "aria-expanded") == "true"
    assert web.page.evaluate("document.activeElement.id") == "signin-name", "the form opens with the name focused"


def submit_form(web: Web, name: str, password: str) -> Any:
    web.page.fill("#signin-name", name)
    web.page.fill("#signin-password", password)
    with web.page.expect_response(lambda r: r.url.endswith("/api/auth/login")) as answered:
        web.page.press("#signin-password", "Enter")
    return answered.value


def sign_in_with_form(web: Web, account: Account) -> None:
    open_form(web)
    assert submit_form(web, account.name, account.password).status == 200
    web.page.wait_for_selector(f"#account-name:text-is('{account.name}')")


def wait_results(web: Web) -> list[int]:
    web.page.wait_for_selector("#results .card", timeout=20_000)
    return [int(i) for i in web.page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.id)")]


def open_detail(web: Web) -> None:
    image_id = wait_results(web)[0]
    web.page.locator("#results .card").first.click()
    web.page.wait_for_selector(f"#detail[open][data-loaded=full][data-image-id='{image_id}']")


# ---------------------------------------------------------------- tests


def test_sign_in_and_out_with_the_form(web: Web, site: Site) -> None:
    web.goto("/")
    wait_results(web)
    assert web.page.text_content("#signin-toggle") == "Sign in"
    sign_in_with_form(web, site.creator)
    assert web.page.text_content("#account-role") == "creator"
    assert web.page.is_visible("#signout") and web.page.is_hidden("#signin-panel")

    jar = cookies(web)
    session, csrf = jar["promptdex_session"], jar["promptdex_csrf"]
    assert session["httpOnly"] is True and session["sameSite"] == "Lax"
    assert csrf["httpOnly"] is False and csrf["sameSite"] == "Lax"
    page_cookies = web.page.evaluate("document.cookie")
    assert "promptdex_session" not in page_cookies and f"promptdex_csrf={csrf['value']}" in page_cookies
    assert me(web)["user"] == {"name": "ada", "role": "creator"}

    with web.page.expect_response(lambda r: r.url.endswith("/api/auth/logout")) as answered:
        web.page.click("#signout")
    assert answered.value.status == 204
    assert answered.value.request.headers.get("x-csrf-token") == csrf["value"]
    web.page.wait_for_selector("#signin-toggle:text-is('Sign in')")
    assert web.page.is_hidden("#account-name")
    assert web.page.evaluate("document.activeElement.id") == "signin-toggle"
    assert "promptdex_session" not in cookies(web)
    assert me(web) == {"user": None, "via": "anonymous", "anonymous": "read", "csrf_token": None,
                       "safe": {"default": "strict", "levels": ["strict", "moderate"]}}


def test_a_wrong_password_shows_the_error_and_does_not_sign_in(web: Web, site: Site) -> None:
    web.allow_http_error(401, "/api/auth/login")
    web.goto("/")
    wait_results(web)
    open_form(web)
    assert submit_form(web, site.creator.name, "not-the-password").status == 401
    web.page.wait_for_selector("#signin-error:not([hidden])")
    assert web.page.text_content("#signin-error") == WRONG
    assert web.page.get_attribute("#signin-password", "aria-invalid") == "true"
    assert web.page.is_visible("#signin-toggle") and web.page.is_hidden("#account-name")
    assert "promptdex_session" not in cookies(web)
    assert me(web)["user"] is None
    web.page.keyboard.press("Escape")  # the panel closes and the focus goes back to its button
    web.page.wait_for_selector("#signin-panel", state="hidden")
    assert web.page.evaluate("document.activeElement.id") == "signin-toggle"


def test_the_one_time_link_signs_in_once(web: Web, other: Web, public: Served) -> None:
    link = public.link
    assert link and link.startswith(f"{public.base}/auth/link?token="), f"serve printed no sign-in link:\n" \
                                                                           f"{public.log.read_text()[-2000:]}"
    response = web.page.goto(link)
    assert response is not None and response.status == 200 and web.page.url == f"{public.base}/"
    web.page.wait_for_selector("#account-name:text-is('local-admin')")
    assert web.page.text_content("#account-role") == "admin"
    assert me(web)["user"] == {"name": "local-admin", "role": "admin"}
    wait_results(web)

    other.allow_http_error(401, "/auth/link")
    other.allow_http_error(404, "/favicon.ico")  # the browser's own request for the JSON error document
    again = other.page.goto(link)  # a fresh context: the same link again
    assert again is not None and again.status == 401
    assert "already used" in again.json()["detail"]
    assert "promptdex_session" not in cookies(other)
    other.goto("/")
    other.page.wait_for_selector("#signin-toggle")
    assert me(other)["user"] is None


def test_a_private_instance_asks_to_sign_in_then_shows_results(private_web: Web, site: Site) -> None:
    web = private_web
    refused: list[str] = []
    web.page.on("response", lambda r: r.status == 401 and refused.append(r.url))
    web.goto("/")
    web.page.wait_for_selector("#state[data-kind=private] #signin-form")
    assert web.page.text_content("#state .state-title") == "This promptdex is private: sign in"
    assert web.page.is_hidden("#results .card") and web.page.text_content("#status") == ""
    assert refused == [], "the page asks /api/auth/me first and calls nothing that answers 401"

    web.page.fill("#signin-name", site.viewer.name)  # the form in the page, not the top bar's
    web.page.fill("#signin-password", site.viewer.password)
    web.page.click("#signin-submit")
    web.page.wait_for_selector(f"#account-name:text-is('{site.viewer.name}')")
    assert len(wait_results(web)) == IMAGES
    assert web.page.is_hidden("#state")
    web.page.wait_for_function(  # the thumbnails load with the session cookie
        "() => [...document.querySelectorAll('#results .card img')].every(i => i.complete && i.naturalWidth > 0)")
    assert refused == []


def test_a_creator_queues_variations(web: Web, site: Site) -> None:
    web.goto("/")
    sign_in_with_form(web, site.creator)
    open_detail(web)
    assert web.page.is_enabled("#job-variations") and web.page.is_hidden("#job-hint")
    with web.page.expect_response(lambda r: r.url.endswith("/api/jobs") and r.request.method == "POST") as created:
        web.page.click("#job-variations")
    assert created.value.status == 201, created.value.text()
    assert created.value.request.headers.get("x-csrf-token") == cookies(web)["promptdex_csrf"]["value"]
    assert json.loads(created.value.request.post_data or "{}")["kind"] == "variations"
    (job_id,) = created.value.json()["job_ids"]
    row = web.page.locator(f"#job-list li[data-job-id='{job_id}']")
    row.locator(".job-status[data-status=queued]").wait_for()
    assert re.fullmatch(rf"Variation job {job_id[:8]}", row.locator(".job-title").text_content() or "")
    status = web.served.get(f"/api/jobs/{job_id}", token=site.creator.token)
    assert status["kind"] == "variations" and status["status"] == "queued"


def test_viewers_and_anonymous_callers_cannot_queue_jobs(web: Web, other: Web, site: Site) -> None:
    web.goto("/")
    sign_in_with_form(web, site.viewer)
    assert web.page.text_content("#account-role") == "viewer"
    other.goto("/")  # anonymous
    for client, hint in ((web, f"You are signed in as a viewer. {JOB_HINT}."), (other, f"{JOB_HINT}.")):
        open_detail(client)
        assert client.page.is_disabled("#job-reproduce") and client.page.is_disabled("#job-variations")
        assert client.page.is_visible("#job-hint") and client.page.text_content("#job-hint") == hint
        described = client.page.get_attribute("#job-variations", "aria-describedby")
        assert described == "job-hint"
