"""The Create panel in headless Chromium: a real `promptdex serve` and a real `promptdex worker` with the tiny model.

Signed out, Create is disabled with a sign-in link; a creator sees the tiny model's profile, gets a 422 next to the
field it names, queues an image, follows its progress live and finds it in the queue and the grid; Remix of that
image makes the same settings and seed again, which gives the same bytes and so the same image id.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from tests.e2e.test_web import (
    DESKTOP,
    SCREENSHOTS,
    UNLIMITED_RATES,
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
from tests.helpers import stop_process

pytestmark = pytest.mark.e2e

JOB_TIMEOUT_MS = 60_000  # queued -> done for one tiny image, with the worker already running
PROMPT = "a lighthouse on a stormy cliff, oil painting"
# Records every status and whether "step i of N" or a preview showed for each job row of the queue (the tiny model
# is fast: a state may last less than a frame, so it is watched from inside the page, not polled from outside).
WATCH_QUEUE = """() => {
  window.__seen = {};
  const look = () => {
    for (const row of document.querySelectorAll('#create-queue li[data-job-id]')) {
      const seen = window.__seen[row.dataset.jobId] ||= {statuses: [], step: false, preview: false};
      const status = row.dataset.status;
      if (seen.statuses[seen.statuses.length - 1] !== status) seen.statuses.push(status);
      if (/step \\d+ of \\d+/.test(row.querySelector('.job-step')?.textContent || '')) seen.step = true;
      if (row.querySelector('img.job-preview[src^="data:image/"]')) seen.preview = true;
    }
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                     characterData: true});
}"""


@dataclass
class Site:
    served: Served
    creator: Account
    imported: list[int]  # the ids of the imported PNGs (indexed, with thumbnails)


def _write_pngs(folder: Path) -> None:
    """Two small PNGs with A1111 parameters, so the grid has something before the first job."""
    folder.mkdir()
    for i, prompt in enumerate(["misty pine forest at dawn", "origami crane on a wooden desk"]):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"{prompt}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {7 + i}, "
                                    "Size: 64x64, Model: imported")
        Image.new("RGB", (64, 64), (60 + 70 * i, 90, 140)).save(folder / f"{i}.png", pnginfo=info)


@contextmanager
def worker(root: Path, env: dict[str, str]) -> Iterator[Path]:  # the log's path
    """`promptdex worker` polling the queue, in a subprocess ended by its pid afterwards; output in worker.log."""
    log = root / "worker.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "promptdex", "worker", "--poll", "0.2", "--threads", "2"],
                                    cwd=root, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=sink,
                                    stderr=subprocess.STDOUT)
        yield log
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def site(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("web-create")
    _write_pngs(root / "pngs")
    with corpus_env(pg_server_url, root, **UNLIMITED_RATES) as env:
        _cli("import", str(root / "pngs"), cwd=root, env=env)
        with worker(root, env):  # it starts (imports torch) while the rest is set up
            _cli("index", cwd=root, env=env)
            creator = add_account(root, env, "cleo", "creator", token=False)
            with serve(root, env, "serve-create") as served:
                yield Site(served, creator, served.all_ids())


@pytest.fixture
def web(chromium: Any, site: Site) -> Iterator[Web]:  # noqa: F811
    yield from _new_web(chromium, site.served, DESKTOP)


def _sign_in_from_create(web: Web, account: Account) -> None:
    """Signed out: Create is disabled, and its link opens the top bar's sign-in form."""
    page = web.page
    page.wait_for_selector("#create-toggle")
    assert page.is_disabled("#create-toggle")
    assert page.text_content("#create-signin") == "Sign in to create"
    page.click("#create-signin")
    page.wait_for_selector("#signin-panel:not([hidden]) #signin-form")
    assert page.evaluate("document.activeElement.id") == "signin-name"
    page.fill("#signin-name", account.name)
    page.fill("#signin-password", account.password)
    page.press("#signin-password", "Enter")
    page.wait_for_selector(f"#account-name:text-is('{account.name}')")
    page.wait_for_selector("#create-toggle:enabled")
    assert page.is_hidden("#create-signin")


def _wait_done(web: Web, job_id: str) -> list[int]:
    row = web.page.locator(f"#create-queue li[data-job-id='{job_id}']")
    row.locator(".job-status[data-status=done]").wait_for(timeout=JOB_TIMEOUT_MS)
    hrefs = row.locator("a.job-link").evaluate_all("links => links.map(a => a.pathname)")
    return [int(h.rsplit("/", 1)[1]) for h in hrefs]


def _job(web: Web, job_id: str) -> Any:
    """GET /api/jobs/{id} as the signed-in browser (its session cookie)."""
    response = web.page.request.get(f"{web.served.base}/api/jobs/{job_id}")
    assert response.status == 200, response.text()
    return response.json()


def _submit(web: Web) -> Any:
    with web.page.expect_response(lambda r: r.url.endswith("/api/generations") and r.request.method == "POST") as r:
        web.page.click("#create-submit")
    return r.value


def test_live_progress_then_cancel(web: Web, site: Site) -> None:
    """A long job shows step i of N and its progress bar as it runs; Cancel (DELETE /api/jobs/{id}, with the CSRF
    header) stops it at its next step, and it makes no image."""
    page = web.page
    web.goto("/")
    _sign_in_from_create(web, site.creator)
    page.click("#create-toggle")
    page.wait_for_function("() => document.querySelector('#create-model')?.value === 'tiny'")
    page.fill("#create-prompt", "a very long job to cancel")
    page.select_option("#create-count", "4")
    steps = site.served.get("/api/models")["limits"]["max_steps"]
    page.fill("#create-steps", str(steps))
    page.evaluate(WATCH_QUEUE)
    created = _submit(web)
    assert created.status == 201, created.text()
    job_id = created.json()["id"]
    row = page.locator(f"#create-queue li[data-job-id='{job_id}']")
    shows = f"""() => {{
      const row = document.querySelector("#create-queue li[data-job-id='{job_id}']");
      return /^step \\d+ of {steps} · image 1 of 4$/.test(row?.querySelector(".job-step")?.textContent || "")
        && row.querySelector("progress.job-bar").value > 0;
    }}"""
    page.wait_for_function(shows, timeout=JOB_TIMEOUT_MS)  # step i of N and the bar, while it runs
    assert row.get_attribute("data-status") == "running"
    row.screenshot(path=str(SCREENSHOTS / "create-job-running.png"))
    with page.expect_response(lambda r: r.url.endswith(f"/api/jobs/{job_id}") and r.request.method == "DELETE") as r:
        row.locator(".job-cancel").click()
    assert r.value.status == 200, r.value.text()
    csrf = {c["name"]: c["value"] for c in page.context.cookies()}["promptdex_csrf"]
    assert r.value.request.headers.get("x-csrf-token") == csrf
    row.locator(".job-status[data-status=cancelled]").wait_for(timeout=JOB_TIMEOUT_MS)
    assert page.evaluate(f"window.__seen[{job_id!r}]")["statuses"][-2:] == ["running", "cancelled"]
    job = _job(web, job_id)
    assert job["status"] == "cancelled" and job["image_ids"] == []
    assert row.locator(".job-cancel").count() == 0


def test_create_follow_and_remix(web: Web, site: Site) -> None:
    page, served = web.page, site.served
    web.allow_http_error(422, "/api/generations")  # the width below is refused on purpose
    models = served.get("/api/models")
    tiny = next(m for m in models["data"] if m["name"] == "tiny")
    profile = tiny["profile"]
    web.goto("/")
    web.wait_cards()
    _sign_in_from_create(web, site.creator)

    page.click("#create-toggle")
    page.wait_for_selector("#create-panel:not([hidden])")
    page.wait_for_function("() => document.querySelector('#create-model')?.value === 'tiny'")
    assert page.evaluate("document.activeElement.id") == "create-prompt"
    shown = {f: page.input_value(f"#create-{f}") for f in ("width", "height", "steps", "cfg", "sampler", "schedule")}
    assert shown == {"width": str(profile["width"]), "height": str(profile["height"]), "steps": str(profile["steps"]),
                     "cfg": f"{profile['cfg']:g}", "sampler": profile["sampler"], "schedule": profile["schedule"]}
    assert page.is_checked("#create-seed-random") and page.is_disabled("#create-seed")

    # A width that is not a multiple of 8: the API's 422 shows next to the width field, and nothing is queued.
    page.fill("#create-prompt", PROMPT)
    page.fill("#create-width", "100")
    queued = page.locator("#create-queue li").count()  # the jobs of earlier tests are listed too
    refused = _submit(web)
    assert refused.status == 422, refused.text()
    assert [e["loc"] for e in refused.json()["errors"]] == [["body", "width"]]
    page.wait_for_selector("#create-width-error")
    assert "multiple of 8" in (page.text_content("#create-width-error") or "")
    assert page.get_attribute("#create-width", "aria-invalid") == "true"
    assert page.get_attribute("#create-width", "aria-describedby") == "create-width-error"
    assert page.locator("#create-queue li").count() == queued

    # A small image, a few steps; cfg above the profile's range is allowed and comes back as a warning.
    page.click(".size-chip:text-is('64×64')")
    page.wait_for_selector("#create-width-error", state="detached")
    page.fill("#create-steps", "4")
    page.fill("#create-cfg", str(profile["cfg_range"][1] + 1))
    page.evaluate(WATCH_QUEUE)
    created = _submit(web)
    assert created.status == 201, created.text()
    body = created.json()
    job_id, (seed,) = body["id"], body["seeds"]
    sent = created.request.post_data_json
    assert sent["prompt"] == PROMPT and (sent["width"], sent["height"], sent["steps"]) == (64, 64, 4)
    assert "seed" not in sent, "a random seed is left to the server"
    assert body["warnings"] and any(w.startswith("cfg:") for w in body["warnings"])
    page.wait_for_selector("#create-warnings")
    assert page.locator("#create-warnings li").all_text_contents() == body["warnings"]
    web.screenshot("create-queued")

    (image_id,) = _wait_done(web, job_id)
    seen = page.evaluate(f"window.__seen[{job_id!r}]")
    statuses = [status for status in seen["statuses"] if status != "pending"]  # "pending": before the first answer
    assert statuses[0] in {"queued", "running"} and statuses[-1] == "done", seen  # it changed live, no reload
    job = _job(web, job_id)
    assert job["status"] == "done" and job["image_ids"] == [image_id]
    # In the grid at once (the view is the newest images), and searchable.
    page.wait_for_selector(f"#results .card[data-id='{image_id}']")
    assert web.card_ids()[0] == image_id
    assert image_id in served.all_ids()
    web.screenshot("create-done")
    page.locator("#create-queue").screenshot(path=str(SCREENSHOTS / "create-queue.png"))

    # Open it from the queue, Remix: the form comes back with its prompt and its seed, locked. (The worker does not
    # index: the detail view's similar images answer 404 for a new image until `promptdex index`.)
    web.allow_http_error(404, f"/api/images/{image_id}/similar")
    page.click(f"#create-queue li[data-job-id='{job_id}'] a.job-link")
    page.wait_for_selector(f"#detail[open][data-loaded=full][data-image-id='{image_id}']")
    page.click("#job-remix")
    page.wait_for_selector("#detail", state="hidden")
    page.wait_for_selector("#create-panel:not([hidden])")
    page.wait_for_function(f"() => document.querySelector('#create-prompt').value === {PROMPT!r}")
    assert page.evaluate("document.activeElement.id") == "create-prompt"
    assert not page.is_checked("#create-seed-random") and page.input_value("#create-seed") == str(seed)
    remixed = {f: page.input_value(f"#create-{f}") for f in ("width", "height", "steps", "model")}
    assert remixed == {"width": "64", "height": "64", "steps": "4", "model": "tiny"}
    assert page.locator("#create-note").count() == 0, "its model is on offer: no note about a stand-in"

    again = _submit(web)
    assert again.status == 201, again.text()
    assert again.request.post_data_json["seed"] == seed
    second = again.json()["id"]
    assert second != job_id
    assert _wait_done(web, second) == [image_id], "the same settings and seed make the same image"
    assert page.locator(f"#results .card[data-id='{image_id}']").count() == 1


def test_image_to_image_sends_the_init_image_and_strength(web: Web, site: Site, tmp_path: Path) -> None:
    page = web.page
    init = tmp_path / "init.png"
    Image.new("RGB", (96, 64), (200, 120, 40)).save(init)
    web.goto("/")
    _sign_in_from_create(web, site.creator)
    page.click("#create-toggle")
    page.wait_for_function("() => document.querySelector('#create-model')?.value === 'tiny'")
    page.fill("#create-prompt", "an orange dusk")
    page.fill("#create-steps", "2")
    page.set_input_files("#create-init-file", str(init))
    page.wait_for_selector("#create-init-preview[src^='blob:']")
    assert page.input_value("#create-strength") == "0.6"
    assert page.is_visible("#create-size-hint"), "with an init image and no size set, the size follows the image"
    created = _submit(web)
    assert created.status == 201, created.text()
    sent = created.request.headers.get("content-type", "")
    assert sent.startswith("multipart/form-data"), sent
    request = created.json()["request"]  # what the server read from the form, defaults filled in
    assert request["strength"] == 0.6 and request["init_image"]
    assert abs(request["width"] / request["height"] - 1.5) < 0.1, "the size follows the 3:2 init image"
    assert len(_wait_done(web, created.json()["id"])) == 1
    page.focus("#create-prompt")
    page.keyboard.press("Escape")  # the drawer closes and the focus goes back to its button
    page.wait_for_selector("#create-panel", state="hidden")
    assert page.evaluate("document.activeElement.id") == "create-toggle"
    assert page.get_attribute("#create-toggle", "aria-expanded") == "false"


def test_remix_of_an_image_whose_model_is_not_offered(web: Web, site: Site) -> None:
    """An imported image (Model: imported): Remix takes its settings and seed, with the default model and a note."""
    page = web.page
    image_id = site.imported[0]
    record = site.served.get(f"/api/images/{image_id}")
    web.goto("/")
    _sign_in_from_create(web, site.creator)
    web.goto(f"/image/{image_id}")
    page.wait_for_selector(f"#detail[open][data-loaded=full][data-image-id='{image_id}']")
    page.wait_for_selector("#job-remix:enabled")
    page.click("#job-remix")
    page.wait_for_selector("#create-note")
    assert "“imported”" in (page.text_content("#create-note") or "")
    assert page.input_value("#create-model") == "tiny"
    assert page.input_value("#create-prompt") == record["prompt"]
    assert page.input_value("#create-seed") == str(record["seed"]) and not page.is_checked("#create-seed-random")
    assert page.input_value("#create-sampler") == record["sampler"]
