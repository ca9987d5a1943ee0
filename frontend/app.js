// app.js — the page: search flow, infinite scroll, routing between the grid and /image/{id}, keyboard.

import { api } from "./api.js";
import { Account } from "./auth.js";
import { accountChanged as createAccountChanged, closeCreate, remix } from "./create.js";
import { CreateBar, CreatePanel } from "./create-view.js";
import {
  activeFilterCount, apiParams, fillFacets, queryString, readControls, readOptions, renderFilterBadge, writeControls,
} from "./controls.js";
import { DetailView } from "./detail.js";
import { $, announce, debounce, h, isAbort, isTyping } from "./dom.js";
import { Masonry } from "./grid.js";
import { onJobDone, resetJobs } from "./jobs.js";
import { SafeSwitch, blurs, rememberReveal, safeLevel, setSafeAccess } from "./safe.js";
import { mount, store, update } from "./store.js";
import { Suggestions } from "./suggest.js";
import { setupImageSearch } from "./upload.js";

const TYPE_DEBOUNCE_MS = 250;
const IMAGE_SEARCH_K = 48;
const IMAGE_PATH = /^\/image\/([^/]+)\/?$/;

const state = {
  options: readOptions(),
  items: [],
  cursor: null,
  tookMs: null,
  loadingMore: false,
  controller: null,
  imageQuery: null, // {name, url, file} while results come from an uploaded image
  opener: null, // the card that opened the detail view (focus returns there)
  started: false, // the first /api/auth/me has answered
  remixing: null, // the image whose Remix waits for the detail view to close
};

const grid = new Masonry($("#results"), {
  onOpen: (id) => openImage(id, "push"),
  blur: blurs, // safe mode: flagged cards are drawn blurred, a click reveals them
  onReveal: rememberReveal,
});
const detail = new DetailView({
  onOpenImage: (id) => openImage(id, "push"),
  onReveal: (id) => grid.reveal(id),
  onClose: () => requestClose(),
  onStep: (delta) => step(delta),
  onRemix: (item) => {
    state.remixing = item;
    state.opener = null; // the focus goes to the Create form instead
    requestClose();
  },
});
const input = $("#q");
const suggestions = new Suggestions(input, $("#suggestions"), () => runSearch());
const typed = debounce(() => runSearch(), TYPE_DEBOUNCE_MS);
const account = new Account({ onChange: () => accountChanged() });

/** "Sign in to create": the top bar's sign-in panel (or the form already on the page, when private). */
function signInToCreate() {
  if (account.panel.hidden) account.toggle();
  else $("#signin-name").focus();
}

mount($("#create-bar"), CreateBar, { onSignIn: signInToCreate });
mount($("#create-root"), CreatePanel, { onSignIn: signInToCreate });
mount($("#safe-root"), SafeSwitch, { onChange: () => safeChanged() });

// ---------------------------------------------------------------- states and status

function showState(kind, title, message, action) {
  const box = $("#state");
  box.hidden = false;
  box.dataset.kind = kind;
  const parts = [
    kind === "loading" ? h("span", { class: "spinner big", "aria-hidden": "true" }) : null,
    title ? h("p", { class: "state-title" }, title) : null,
    message ? h("p", { class: "state-message" }, message) : null,
    action ? h("button", { class: "chip-button", type: "button", onclick: action.run }, action.label) : null,
  ];
  box.replaceChildren(...parts.filter(Boolean));
}

function hideState() {
  $("#state").hidden = true;
}

function setStatus(text) {
  $("#status").textContent = text;
}

function resultsStatus() {
  const count = state.items.length;
  const noun = state.imageQuery ? (count === 1 ? "similar image" : "similar images") : count === 1 ? "result" : "results";
  const more = state.cursor ? " · more" : "";
  const took = state.tookMs !== null && state.tookMs !== undefined ? ` · ${Math.round(state.tookMs)} ms` : "";
  return `${count} ${noun}${more}${took}`;
}

function showEmpty() {
  const { q } = state.options;
  const filtered = activeFilterCount(state.options) > 0;
  if (state.imageQuery) {
    showState("empty", "No similar images found.", "The image index may not be built yet: run `promptdex index`.");
  } else if (q.trim() || filtered) {
    showState(
      "empty",
      q.trim() ? `No images match “${q.trim()}”.` : "No images match these filters.",
      "Try other words, switch to Semantic mode, or loosen the filters.",
      filtered ? { label: "Clear filters", run: clearFilters } : null,
    );
  } else {
    showState("empty", "The corpus is empty.", "Generate or import images, then run `promptdex index`.");
  }
}

function showError(error, action) {
  showState("error", "Something went wrong.", error.detail || error.message, action);
  setStatus("");
}

/** A private instance and nobody signed in: no results, the sign-in form instead. */
function showPrivate() {
  const box = $("#state");
  if (!box.hidden && box.dataset.kind === "private" && box.contains($("#signin-form"))) return;
  state.controller?.abort();
  state.controller = null;
  if (detail.id !== null) closeDetail(); // the URL stays: the image opens once signed in
  if (state.imageQuery) clearImageQuery({ search: false });
  clearResults();
  showState("private", "This promptdex is private: sign in", "Sign in with your promptdex account to search its images.");
  account.embedForm($("#state"));
  announce("This promptdex is private: sign in");
}

/** A 401: when it is because the instance is private (or the session ended there), show the sign-in state. */
async function privateAfter(error) {
  if (error.status !== 401) return false;
  await account.refresh();
  if (!account.mustSignIn) return false;
  showPrivate();
  return true;
}

function jobHint() {
  if (account.canCreate) return "";
  const role = account.user ? account.user.role : null;
  return role ? `You are signed in as a ${role}. Sign in as a creator to queue jobs.` : "Sign in as a creator to queue jobs.";
}

function accountChanged() {
  detail.setJobAccess(account.canCreate, jobHint());
  const before = store.state.account;
  const user = account.user || null;
  update({ account: { known: !!account.me, user, anonymous: account.anonymous, canCreate: account.canCreate } });
  if (setSafeAccess(account.safe) && state.started) detail.safeChanged(); // the search below runs at the new level
  if (!state.started) return;
  if (JSON.stringify(before.user) !== JSON.stringify(user)) resetJobs(); // another user's jobs are not ours to follow
  createAccountChanged();
  if (account.mustSignIn) {
    showPrivate();
    return;
  }
  loadSideInfo(); // a private instance held these back until sign-in
  runSearch();
  route();
}

// ---------------------------------------------------------------- searching

/** GET /api/search's parameters for the options, at the safe-mode level in use. */
function searchParams(cursor) {
  return { ...apiParams(state.options, cursor), safe: safeLevel() };
}

/** A 403 may mean the level is no longer allowed (signed out elsewhere): ask who we are, which re-runs the search. */
async function refusedLevel(error, signal) {
  if (error.status !== 403) return false;
  await account.refresh();
  return signal.aborted;
}

/** The user picked another safe-mode level: search again (the image search too), and the detail view follows. */
function safeChanged() {
  announce(`Safe mode: ${safeLevel()}`);
  if (account.mustSignIn) return;
  if (state.imageQuery) searchByImage(state.imageQuery.file);
  else runSearch();
  detail.safeChanged();
  loadSideInfo();
}

function syncUrl() {
  if (IMAGE_PATH.test(window.location.pathname)) return; // the detail URL keeps the search it was opened from
  const url = `/${queryString(state.options)}`;
  if (url !== window.location.pathname + window.location.search) window.history.replaceState(window.history.state, "", url);
}

function beginLoading() {
  state.controller?.abort();
  state.controller = new AbortController();
  state.loadingMore = false;
  $("#more").hidden = true;
  $("#end").hidden = true;
  if (grid.count) {
    $("#results").classList.add("stale"); // keep the old results (dimmed) until new ones arrive
  } else {
    showState("loading", "Searching…");
  }
  $("#results").setAttribute("aria-busy", "true");
  return state.controller.signal;
}

function clearResults() {
  grid.clear();
  state.items = [];
  state.cursor = null;
  state.loadingMore = false;
  $("#results").classList.remove("stale");
  $("#results").removeAttribute("aria-busy");
  $("#more").hidden = true;
  $("#end").hidden = true;
  setStatus("");
  rearmSentinel();
}

function showResults(items, cursor, tookMs) {
  state.items = items;
  state.cursor = cursor;
  state.tookMs = tookMs;
  grid.clear();
  grid.append(items);
  $("#results").classList.remove("stale");
  $("#results").removeAttribute("aria-busy");
  if (items.length) hideState();
  else showEmpty();
  setStatus(items.length ? resultsStatus() : "");
  $("#end").hidden = !!cursor || !items.length || items.length < 8;
  announce(items.length ? resultsStatus() : "No results");
  window.scrollTo({ top: 0 });
  rearmSentinel();
  updateDetailNav();
}

async function runSearch() {
  typed.cancel();
  state.options = readControls(state.options);
  if (state.imageQuery) clearImageQuery({ search: false });
  renderFilterBadge(state.options);
  syncUrl();
  document.title = state.options.q.trim() ? `${state.options.q.trim()} · promptdex` : "promptdex";
  if (account.mustSignIn) {
    showPrivate();
    return;
  }
  const signal = beginLoading();
  try {
    const result = await api.search(searchParams(), signal);
    if (signal.aborted) return;
    showResults(result.data || [], result.next_cursor || null, result.took_ms);
  } catch (error) {
    if (isAbort(error) || signal.aborted) return;
    clearResults();
    if ((await privateAfter(error)) || (await refusedLevel(error, signal)) || signal.aborted) return;
    showError(error, { label: "Try again", run: runSearch });
  }
}

async function loadMore() {
  if (state.loadingMore || !state.cursor || state.imageQuery || !state.controller) return false;
  const signal = state.controller.signal;
  state.loadingMore = true;
  const more = $("#more");
  more.hidden = false;
  more.replaceChildren(h("span", { class: "spinner", "aria-hidden": "true" }), h("span", {}, "Loading more…"));
  try {
    const result = await api.search(searchParams(state.cursor), signal);
    if (signal.aborted) return false;
    const items = result.data || [];
    state.items = state.items.concat(items);
    state.cursor = result.next_cursor || null;
    state.tookMs = result.took_ms;
    grid.append(items);
    more.hidden = true;
    $("#end").hidden = !!state.cursor;
    setStatus(resultsStatus());
    updateDetailNav();
    return true;
  } catch (error) {
    if (isAbort(error) || signal.aborted) return false;
    more.replaceChildren(
      h("span", { class: "error-text" }, `Could not load more: ${error.detail || error.message}`),
      h("button", { class: "chip-button", type: "button", onclick: () => loadMore() }, "Retry"),
    );
    return false;
  } finally {
    if (!signal.aborted) state.loadingMore = false;
    if (!signal.aborted) rearmSentinel();
  }
}

const sentinel = $("#sentinel");
const observer = new IntersectionObserver(
  (entries) => {
    if (entries.some((entry) => entry.isIntersecting) && $("#more").querySelector(".error-text") === null) loadMore();
  },
  { rootMargin: "0px 0px 800px 0px" },
);

/** Observe the sentinel afresh: fires at once if it is still on screen (the page is not full yet). */
function rearmSentinel() {
  observer.unobserve(sentinel);
  if (state.cursor) observer.observe(sentinel);
}

// ---------------------------------------------------------------- search by image

async function searchByImage(file) {
  if (file.type && !file.type.startsWith("image/")) {
    showError({ detail: `“${file.name}” is not an image (${file.type}). Use a PNG, JPEG or WebP file.` });
    return;
  }
  if (account.mustSignIn) return;
  if (detail.isOpen) requestClose();
  typed.cancel();
  suggestions.cancel();
  clearImageQuery({ search: false });
  state.imageQuery = { name: file.name || "pasted image", url: URL.createObjectURL(file), file };
  $("#image-banner-thumb").src = state.imageQuery.url;
  $("#image-banner-name").textContent = state.imageQuery.name;
  $("#image-banner").hidden = false;
  document.title = "Your image · promptdex";
  const signal = beginLoading();
  try {
    const result = await api.searchByImage(file, IMAGE_SEARCH_K, safeLevel(), signal);
    if (signal.aborted) return;
    showResults(result.data || [], null, result.took_ms);
  } catch (error) {
    if (isAbort(error) || signal.aborted) return;
    clearResults();
    if ((await privateAfter(error)) || (await refusedLevel(error, signal)) || signal.aborted) return;
    // 413 (too large) and 415 (not an image) say why; retrying the same file would not help
    showError(error, { label: "Clear image search", run: () => clearImageQuery() });
  }
}

function clearImageQuery({ search = true } = {}) {
  if (state.imageQuery) URL.revokeObjectURL(state.imageQuery.url);
  state.imageQuery = null;
  $("#image-banner").hidden = true;
  $("#image-banner-thumb").removeAttribute("src");
  if (search) runSearch();
}

// ---------------------------------------------------------------- images a job made

/** A view of the newest images (no query, no filter, not an image search): new ones go first. */
function showsNewest() {
  const { q, sort } = state.options;
  return !state.imageQuery && !q.trim() && activeFilterCount(state.options) === 0 && (sort === "relevance" || sort === "newest");
}

/** A job finished: its images join the grid at once (first in a view of the newest; else the search runs again). */
async function showMadeImages(ids) {
  if (!state.started || account.mustSignIn || state.imageQuery) return;
  if (!showsNewest()) {
    runSearch();
    return;
  }
  const fresh = [...new Set(ids.map(String))].filter((id) => indexOfImage(id) < 0);
  if (!fresh.length) return;
  const found = await Promise.all(fresh.map((id) => api.image(id).catch(() => null)));
  // The worker writes no thumbnail (`promptdex index` does): a new card shows the image itself. Strict mode
  // shows no flagged image, as the search would not.
  const items = found
    .filter((item) => item && indexOfImage(item.id) < 0 && !(safeLevel() === "strict" && item.nsfw === true))
    .map((item) => ({ ...item, thumb_url: item.url }));
  if (!items.length || !showsNewest()) return;
  state.items = items.concat(state.items);
  grid.prepend(items);
  hideState();
  setStatus(resultsStatus());
  updateDetailNav();
}

onJobDone((ids) => showMadeImages(ids));

// A finished job's thumbnail in the Create panel's queue opens in the detail view (the panel stays behind it).
$("#create-root").addEventListener("click", (event) => {
  const link = event.target.closest("a.job-link");
  if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  openImage(link.dataset.id, "push");
  state.opener = link;
});

// ---------------------------------------------------------------- detail view and history

function indexOfImage(id) {
  return state.items.findIndex((item) => String(item.id) === String(id));
}

function updateDetailNav() {
  if (!detail.isOpen || detail.id === null) return;
  const index = indexOfImage(detail.id);
  detail.setNav(index > 0, index >= 0 && (index < state.items.length - 1 || !!state.cursor));
}

/** Show image `id`: "push" a new history entry, "replace" the current one, or "none" (popstate, page load). */
function openImage(id, how) {
  id = String(id);
  const search = window.location.search;
  const depth = (window.history.state && window.history.state.depth) || 0;
  if (!detail.isOpen && how !== "none") state.opener = grid.cardById(id);
  if (how === "push") window.history.pushState({ detail: id, depth: depth + 1 }, "", `/image/${encodeURIComponent(id)}${search}`);
  if (how === "replace") window.history.replaceState({ detail: id, depth }, "", `/image/${encodeURIComponent(id)}${search}`);
  suggestions.close();
  const index = indexOfImage(id);
  detail.show(id, index >= 0 ? state.items[index] : null);
  updateDetailNav();
}

/** Close the detail view: go back to the list entry when we pushed one, else rewrite the URL. */
function requestClose() {
  const depth = (window.history.state && window.history.state.depth) || 0;
  if (depth > 0 && IMAGE_PATH.test(window.location.pathname)) {
    window.history.go(-depth); // popstate closes it
    return;
  }
  window.history.replaceState(null, "", `/${window.location.search}`);
  closeDetail();
}

function closeDetail() {
  if (!detail.isOpen && detail.id === null) return;
  detail.hide();
  document.title = state.imageQuery ? "Your image · promptdex" : state.options.q.trim() ? `${state.options.q.trim()} · promptdex` : "promptdex";
  const opener = state.opener && state.opener.isConnected ? state.opener : null;
  state.opener = null;
  if (opener) opener.focus();
  const item = state.remixing;
  state.remixing = null;
  if (item) remix(item); // the Create panel opens once the modal detail view is gone
}

async function step(delta) {
  if (!detail.isOpen) return;
  let index = indexOfImage(detail.id);
  if (index < 0) return;
  let target = index + delta;
  if (target >= state.items.length && state.cursor) {
    await loadMore();
    index = indexOfImage(detail.id);
    target = index + delta;
  }
  if (target < 0 || target >= state.items.length) return;
  const id = String(state.items[target].id);
  const card = grid.cardById(id);
  if (card) card.scrollIntoView({ block: "nearest" }); // the grid behind follows, for when the view closes
  state.opener = card;
  openImage(id, "replace");
}

function route() {
  const match = IMAGE_PATH.exec(window.location.pathname);
  if (match) openImage(decodeURIComponent(match[1]), "none");
  else closeDetail();
}

window.addEventListener("popstate", () => {
  const options = readOptions();
  if (queryString(options) !== queryString(state.options)) {
    state.options = options;
    writeControls(options);
    runSearch();
  }
  route();
});

// ---------------------------------------------------------------- controls and keyboard

function clearFilters() {
  for (const field of $("#filters").querySelectorAll("select, input")) field.value = "";
  runSearch();
}

function setupControls() {
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    suggestions.cancel();
    runSearch();
  });
  input.addEventListener("input", () => {
    if (!account.mustSignIn) suggestions.update(input.value);
    typed();
  });
  input.addEventListener("keydown", (event) => {
    if (suggestions.handleKey(event)) event.preventDefault();
  });
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", () => runSearch());
  $("#sort").addEventListener("change", () => {
    if ($("#sort").value === "random") state.options = { ...state.options, random_seed: String(Math.floor(Math.random() * 1e9)) };
    runSearch();
  });
  const filters = $("#filters");
  filters.addEventListener("submit", (event) => event.preventDefault());
  filters.addEventListener("change", (event) => {
    if (event.target.tagName === "SELECT") runSearch();
  });
  filters.addEventListener("input", (event) => {
    if (event.target.tagName === "INPUT") typed();
  });
  filters.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target.tagName === "INPUT") {
      event.preventDefault();
      runSearch();
    }
  });
  $("#filters-clear").addEventListener("click", clearFilters);
  const toggle = $("#filters-toggle");
  const showFilters = (open) => {
    filters.hidden = !open;
    toggle.setAttribute("aria-expanded", String(open));
  };
  toggle.addEventListener("click", () => showFilters(filters.hidden));
  showFilters(activeFilterCount(state.options) > 0);
  $("#image-clear").addEventListener("click", () => clearImageQuery());
  setupImageSearch(searchByImage);

  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.metaKey || event.ctrlKey || event.altKey) return;
    if (detail.isOpen) {
      if (isTyping(event.target)) return;
      if (event.key === "ArrowLeft" || event.key === "ArrowRight") {
        event.preventDefault();
        step(event.key === "ArrowLeft" ? -1 : 1);
      }
      return;
    }
    if (event.key === "/" && !isTyping(event.target)) {
      event.preventDefault();
      input.focus();
      input.select();
    }
  });
}

async function loadSideInfo() {
  const [facets, health] = await Promise.allSettled([api.facets(safeLevel()), api.health()]);
  if (facets.status === "fulfilled" && facets.value) fillFacets(facets.value);
  if (health.status === "fulfilled" && health.value && health.value.models && health.value.models.tiny === true) {
    $("#tiny-banner").hidden = false;
  }
}

async function start() {
  if ("scrollRestoration" in window.history) window.history.scrollRestoration = "manual";
  if (window.matchMedia("(max-width: 640px)").matches) input.placeholder = "Search prompts…";
  writeControls(state.options);
  setupControls();
  await account.refresh(); // first: a private instance answers 401 to everything else
  state.started = true;
  if (account.mustSignIn) {
    showPrivate();
    return;
  }
  loadSideInfo();
  runSearch();
  route();
}

start();
