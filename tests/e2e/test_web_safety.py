"""Safe mode in the web page (headless Chromium): the level switch, blurred flagged tiles, reveal, an admin's scores.

A corpus of its own: small PNGs with A1111 parameters, imported and indexed with the prompt word list as the only
classifier (PROMPTDEX_SAFETY__CLASSIFIERS=words) and an admin word list (PROMPTDEX_SAFETY__WORDS_FILE) of two
made-up words, so which images are flagged follows from the prompts alone: FLAG_WORD scores between the strict and
the moderate thresholds (hidden in strict, blurred in moderate), EXTREME_WORD above the moderate one (shown only
when safe mode is off). Every page is checked for console errors and CSP violations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from tests.e2e.test_web import (
    DESKTOP,
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
    sign_in,
)
from tests.e2e.test_web_auth import sign_in_with_form, wait_results

pytestmark = pytest.mark.e2e

FLAG_WORD, FLAG_SCORE = "zorblat", 0.7  # at or above the strict threshold (0.5), below the moderate one (0.9)
EXTREME_WORD, EXTREME_SCORE = "quaxle", 0.95  # at or above the moderate threshold
SAFE_PROMPTS = ["a lighthouse on a stormy cliff", "origami crane on a wooden desk", "misty pine forest at dawn",
                "a bowl of ramen, studio ghibli style"]
FLAGGED_PROMPTS = [f"a {FLAG_WORD} in a field of flowers", f"portrait of a {FLAG_WORD}, oil painting"]
EXTREME_PROMPTS = [f"a {EXTREME_WORD} on the beach"]
REVEAL_LABEL = "Flagged — click to reveal"
SEARCH_PATHS = re.compile(r"/api/(search|suggest|facets|v1/search)(\?|$)|/api/images/\d+/similar(\?|$)")
BLURRED = "#results .card.nsfw-blur"


@dataclass
class Site:
    served: Served
    admin: Account
    viewer: Account
    ids: dict[str, int]  # prompt -> image id

    def ids_of(self, prompts: list[str]) -> set[int]:
        return {self.ids[p] for p in prompts}


def _write_pngs(folder: Path) -> None:
    """Small PNGs carrying A1111 parameters, as a WebUI saves them (importing them needs no model)."""
    folder.mkdir()
    for i, prompt in enumerate(SAFE_PROMPTS + FLAGGED_PROMPTS + EXTREME_PROMPTS):
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", f"{prompt}\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, "
                                    f"Seed: {200 + i}, Size: 96x96, Model: safety-test")
        Image.new("RGB", (96, 96), (30 + 30 * i, 200 - 20 * i, 120)).save(folder / f"{i}.png", pnginfo=info)


@pytest.fixture(scope="module")
def site(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The corpus scored by the word list, indexed and served; an admin and a viewer made with the CLI."""
    root = tmp_path_factory.mktemp("web-safety")
    _write_pngs(root / "pngs")
    words = root / "words.txt"
    words.write_text(f"# made-up words: no real prompt has them\n{FLAG_WORD} = {FLAG_SCORE}\n"
                     f"{EXTREME_WORD} = {EXTREME_SCORE}\n")
    with corpus_env(pg_server_url, root, PROMPTDEX_SAFETY__CLASSIFIERS="words",
                    PROMPTDEX_SAFETY__WORDS_FILE=str(words), **UNLIMITED_RATES) as env:
        _cli("import", str(root / "pngs"), cwd=root, env=env)
        _cli("index", cwd=root, env=env)
        admin = add_account(root, env, "ida", "admin")
        viewer = add_account(root, env, "val", "viewer", token=False)
        with serve(root, env, "serve-safety") as served:
            everything = served.get("/api/search", token=admin.token, safe="off", limit=200)["data"]
            ids = {item["prompt"]: item["id"] for item in everything}
            assert set(ids) == set(SAFE_PROMPTS + FLAGGED_PROMPTS + EXTREME_PROMPTS), "every PNG was imported"
            yield Site(served, admin, viewer, ids)


@pytest.fixture
def web(chromium: Any, site: Site) -> Iterator[Web]:  # noqa: F811
    yield from _new_web(chromium, site.served, DESKTOP)


def card_ids(web: Web, selector: str = "#results .card") -> set[int]:
    return {int(i) for i in web.page.eval_on_selector_all(selector, "cs => cs.map(c => c.dataset.id)")}


def safe_options(web: Web) -> list[str]:
    return web.page.eval_on_selector_all("#safe option", "os => os.map(o => o.value)")


def img_filter(web: Web, selector: str) -> str:
    return str(web.page.eval_on_selector(selector, "el => getComputedStyle(el).filter"))


def card(image_id: int) -> str:
    return f"#results .card[data-id='{image_id}']"


def choose(web: Web, level: str) -> None:
    """Pick `level` in the switch; the search runs again at it."""
    with web.page.expect_response(lambda r: "/api/search?" in r.url and f"safe={level}" in r.url) as answered:
        web.page.select_option("#safe", level)
    assert answered.value.status == 200, answered.value.text()
    web.settle()


def search_requests(web: Web) -> list[str]:
    """The URLs of every search-type call the page makes from now on (filled in as they are sent)."""
    sent: list[str] = []
    web.page.on("request", lambda r: SEARCH_PATHS.search(r.url) and sent.append(r.url))
    return sent


def detail_open(web: Web) -> bool:
    return bool(web.page.evaluate("document.querySelector('#detail').open"))


# ---------------------------------------------------------------- tests


def test_anonymous_default_is_strict_and_hides_flagged_images(web: Web, site: Site) -> None:
    sent = search_requests(web)
    web.goto("/")
    wait_results(web)
    web.settle()
    assert web.page.input_value("#safe") == "strict", "anonymous callers default to strict"
    assert safe_options(web) == ["strict", "moderate"], "off is not offered to anonymous callers"
    assert card_ids(web) == site.ids_of(SAFE_PROMPTS), "strict shows no flagged image"
    assert web.page.locator("#results .card[data-nsfw]").count() == 0
    assert web.page.get_attribute("#safe", "aria-label") == "Safe mode"

    web.page.click("#q")
    web.page.keyboard.type("origami cr")  # the suggestions ask at the level too
    web.page.wait_for_selector("#suggestions li")
    web.settle()
    assert any("/api/search?" in url for url in sent) and any("/api/facets" in url for url in sent)
    assert any("/api/suggest?" in url for url in sent)
    unsent = [url for url in sent if "safe=strict" not in url]
    assert not unsent, f"every search-type call names the level: {unsent}"

    status, body = site.served.call("/api/search", safe="off")  # and the API refuses what the switch leaves out
    assert status == 403 and isinstance(body["detail"], str) and "off" in body["detail"]


def test_moderate_blurs_flagged_tiles_and_a_click_reveals_then_opens(web: Web, site: Site) -> None:
    web.goto("/")
    wait_results(web)
    choose(web, "moderate")
    flagged = site.ids_of(FLAGGED_PROMPTS)
    assert card_ids(web) == site.ids_of(SAFE_PROMPTS) | flagged, "moderate adds the flagged images, not the extreme"
    assert card_ids(web, BLURRED) == flagged
    assert card_ids(web, "#results .card[data-nsfw='1']") == flagged
    for image_id in flagged:
        assert "blur(" in img_filter(web, f"{card(image_id)} img")
        label = web.page.locator(f"{card(image_id)} .nsfw-label")
        assert label.is_visible() and label.text_content() == REVEAL_LABEL
    for image_id in site.ids_of(SAFE_PROMPTS):
        assert img_filter(web, f"{card(image_id)} img") == "none"
    web.wait_first_thumbs(len(SAFE_PROMPTS) + len(flagged))
    web.screenshot("safe-moderate")

    target = min(flagged)
    web.page.click(card(target))  # the first click reveals
    web.page.wait_for_selector(f"{card(target)}:not(.nsfw-blur)")
    assert img_filter(web, f"{card(target)} img") == "none"
    assert web.page.locator(f"{card(target)} .nsfw-label").count() == 0
    assert not detail_open(web) and web.page.url == f"{site.served.base}/"
    assert card_ids(web, BLURRED) == flagged - {target}, "only the clicked tile is revealed"

    web.page.click(card(target))  # the second opens the detail view, not blurred: it was revealed
    web.page.wait_for_selector(f"#detail[open][data-loaded=full][data-image-id='{target}']")
    assert web.page.get_attribute("#detail-figure", "data-nsfw") == "1"
    assert img_filter(web, "#detail-image") == "none" and web.page.is_hidden("#detail-reveal")
    assert web.page.is_hidden("#detail-safety"), "the scores are for admins"

    assert web.page.evaluate("localStorage.getItem('promptdex.safe')") == "moderate"
    web.page.keyboard.press("Escape")
    web.goto("/")
    wait_results(web)
    assert web.page.input_value("#safe") == "moderate", "the choice is remembered"


def test_enter_and_space_reveal_a_blurred_tile(web: Web, site: Site) -> None:
    web.goto("/")
    wait_results(web)
    choose(web, "moderate")
    first, second = sorted(site.ids_of(FLAGGED_PROMPTS))
    web.page.focus(card(first))
    web.page.keyboard.press("Enter")
    web.page.wait_for_selector(f"{card(first)}:not(.nsfw-blur)")
    assert not detail_open(web)
    web.page.focus(card(second))
    web.page.keyboard.press("Space")
    web.page.wait_for_selector(f"{card(second)}:not(.nsfw-blur)")
    assert not detail_open(web) and web.page.evaluate("window.scrollY") == 0, "Space reveals, it does not scroll"
    web.page.keyboard.press("Enter")  # now it opens
    web.page.wait_for_selector(f"#detail[open][data-image-id='{second}']")


def test_a_flagged_image_opened_from_its_url_is_blurred_until_clicked(web: Web, site: Site) -> None:
    web.page.add_init_script("localStorage.setItem('promptdex.safe', 'moderate')")
    target = min(site.ids_of(FLAGGED_PROMPTS))
    web.goto(f"/image/{target}")
    web.page.wait_for_selector(f"#detail[open][data-loaded=full][data-image-id='{target}']")
    assert web.page.get_attribute("#detail-figure", "class") == "detail-figure nsfw-blur"
    assert "blur(" in img_filter(web, "#detail-image")
    reveal = web.page.locator("#detail-reveal")
    assert reveal.is_visible() and reveal.text_content() == REVEAL_LABEL
    web.page.wait_for_selector("#detail-image.loaded")
    web.screenshot("safe-detail-blurred")
    web.wait_cards("#similar-grid .card")
    for image_id in card_ids(web, "#similar-grid .card[data-nsfw='1']"):  # flagged similar images are blurred too
        assert web.page.locator(f"#similar-grid .card[data-id='{image_id}']").get_attribute("class") == \
            "card nsfw-blur"

    reveal.click()
    web.page.wait_for_selector("#detail-figure:not(.nsfw-blur)")
    assert img_filter(web, "#detail-image") == "none" and web.page.is_hidden("#detail-reveal")
    web.page.keyboard.press("Escape")
    web.page.wait_for_selector("#detail:not([open])", state="attached")
    wait_results(web)
    web.settle()
    assert web.page.get_attribute(card(target), "class") == "card", "revealed in the detail view, revealed here too"
    assert card_ids(web, BLURRED) == site.ids_of(FLAGGED_PROMPTS) - {target}


def test_a_remembered_off_is_clamped_for_anonymous_callers(web: Web, site: Site) -> None:
    web.page.add_init_script("localStorage.setItem('promptdex.safe', 'off')")
    sent = search_requests(web)
    web.goto("/")
    wait_results(web)
    web.settle()
    assert web.page.input_value("#safe") == "moderate", "off is not allowed: the nearest allowed level"
    assert safe_options(web) == ["strict", "moderate"]
    assert sent and all("safe=moderate" in url for url in sent), sent
    assert card_ids(web, BLURRED) == site.ids_of(FLAGGED_PROMPTS)


def test_search_by_image_sends_the_level(web: Web, site: Site, tmp_path: Path) -> None:
    """The multipart body is not readable from the browser's side (a file part), so the answer tells: anonymous
    callers default to strict, and only a search sent at moderate returns flagged images."""
    web.goto("/")
    wait_results(web)
    choose(web, "moderate")
    upload = tmp_path / "query.png"
    Image.new("RGB", (96, 96), (90, 160, 120)).save(upload)
    with web.page.expect_response(lambda r: "/api/search/image" in r.url) as answered:
        web.page.set_input_files("#image-input", str(upload))
    assert answered.value.status == 200, answered.value.text()
    web.page.wait_for_selector("#image-banner:not([hidden])")
    web.settle()
    results = {item["id"]: item["nsfw"] for item in answered.value.json()["data"]}
    assert set(results) == site.ids_of(SAFE_PROMPTS + FLAGGED_PROMPTS), "k exceeds the corpus: all moderate shows"
    assert {i for i, nsfw in results.items() if nsfw} == site.ids_of(FLAGGED_PROMPTS)
    assert card_ids(web, BLURRED) == site.ids_of(FLAGGED_PROMPTS)

    with web.page.expect_response(lambda r: "/api/search/image" in r.url) as again:
        web.page.select_option("#safe", "strict")  # the image search runs again at the new level
    assert again.value.status == 200, again.value.text()
    web.settle()
    assert web.page.is_visible("#image-banner")
    assert {item["id"] for item in again.value.json()["data"]} == site.ids_of(SAFE_PROMPTS)
    assert card_ids(web) == site.ids_of(SAFE_PROMPTS)


def test_an_admin_sees_the_scores_and_off_blurs_nothing(web: Web, site: Site) -> None:
    sign_in(web, site.admin)
    web.goto("/")
    web.page.wait_for_selector(f"#account-name:text-is('{site.admin.name}')")
    wait_results(web)
    web.settle()
    assert web.page.input_value("#safe") == "moderate", "admins default to moderate"
    assert safe_options(web) == ["strict", "moderate", "off"]

    choose(web, "off")
    assert card_ids(web) == set(site.ids.values()), "off shows everything"
    assert web.page.locator(BLURRED).count() == 0, "off blurs nothing"
    assert card_ids(web, "#results .card[data-nsfw='1']") == site.ids_of(FLAGGED_PROMPTS + EXTREME_PROMPTS)

    target = site.ids[FLAGGED_PROMPTS[0]]
    web.page.click(card(target))  # no blur, so the first click opens
    web.page.wait_for_selector(f"#detail[open][data-loaded=full][data-image-id='{target}']")
    assert img_filter(web, "#detail-image") == "none"
    web.page.wait_for_selector("#detail-safety:not([hidden])")
    summary = web.page.text_content("#detail-safety-score") or ""
    assert summary.startswith(f"NSFW score {FLAG_SCORE:.2f} (words)"), summary
    assert "not scored yet" not in summary
    assert web.page.text_content("#detail-safety-scores [data-classifier='words'] dt") == "words"
    assert web.page.text_content("#detail-safety-scores [data-classifier='words'] dd") == f"{FLAG_SCORE:.2f}"
    web.page.keyboard.press("Escape")
    web.page.wait_for_selector("#detail:not([open])", state="attached")

    with web.page.expect_response(lambda r: "/api/search?" in r.url and "safe=moderate" in r.url):
        web.page.click("#signout")  # anonymous now: the remembered off is clamped to moderate
    web.page.wait_for_selector("#signin-toggle")
    web.settle()
    assert web.page.input_value("#safe") == "moderate" and safe_options(web) == ["strict", "moderate"]
    assert card_ids(web, BLURRED) == site.ids_of(FLAGGED_PROMPTS)
    sign_in_with_form(web, site.admin)
    web.page.wait_for_function("document.querySelector('#safe').value === 'off'")  # and off again once signed in
    web.settle()
    assert card_ids(web) == set(site.ids.values())


def test_a_viewer_defaults_to_strict_and_may_turn_it_off(web: Web, site: Site) -> None:
    web.goto("/")
    wait_results(web)
    sign_in_with_form(web, site.viewer)
    web.page.wait_for_function("document.querySelectorAll('#safe option').length === 3")
    web.settle()
    assert web.page.input_value("#safe") == "strict" and safe_options(web) == ["strict", "moderate", "off"]
    assert card_ids(web) == site.ids_of(SAFE_PROMPTS)
