// controls.js — the search options (mode, sort, filters): read from and written to the page URL and the form.

import { $, h } from "./dom.js";

export const MODES = ["hybrid", "keyword", "semantic"];
export const SORTS = ["relevance", "newest", "oldest", "random"];
export const FILTERS = ["model", "sampler", "size", "min_steps", "max_steps", "min_cfg", "max_cfg"];
export const DEFAULT_LIMIT = 24;
const MAX_LIMIT = 200;

/** The search options in the page URL (`?q=…&mode=…&limit=…`); unknown values fall back to defaults. */
export function readOptions(search = window.location.search) {
  const params = new URLSearchParams(search);
  const pick = (key, allowed, fallback) => (allowed.includes(params.get(key)) ? params.get(key) : fallback);
  const filters = {};
  for (const key of FILTERS) filters[key] = (params.get(key) || "").trim();
  const rawLimit = Number.parseInt(params.get("limit") || "", 10);
  return {
    q: params.get("q") || "",
    mode: pick("mode", MODES, "hybrid"),
    sort: pick("sort", SORTS, "relevance"),
    random_seed: params.get("random_seed") || "",
    filters,
    // ?limit= sets the page size (tests use a small one); it stays in the URL once given.
    limit: Number.isFinite(rawLimit) && rawLimit > 0 ? Math.min(rawLimit, MAX_LIMIT) : null,
  };
}

/** `?q=…` for the options (defaults left out) — the shareable form of a search. */
export function queryString(options) {
  const params = new URLSearchParams();
  if (options.q) params.set("q", options.q);
  if (options.mode !== "hybrid") params.set("mode", options.mode);
  for (const key of FILTERS) if (options.filters[key]) params.set(key, options.filters[key]);
  if (options.sort !== "relevance") params.set("sort", options.sort);
  if (options.sort === "random" && options.random_seed) params.set("random_seed", options.random_seed);
  if (options.limit) params.set("limit", String(options.limit));
  const text = params.toString();
  return text ? `?${text}` : "";
}

/** The query parameters of GET /api/search for the options. */
export function apiParams(options, cursor) {
  const { size, ...rest } = options.filters;
  const params = { q: options.q.trim(), mode: options.mode, sort: options.sort, ...rest };
  const match = /^(\d+)x(\d+)$/.exec(size || "");
  if (match) {
    params.width = match[1];
    params.height = match[2];
  }
  if (options.sort === "random" && options.random_seed) params.random_seed = options.random_seed;
  params.limit = options.limit || DEFAULT_LIMIT;
  if (cursor) params.cursor = cursor;
  return params;
}

export function activeFilterCount(options) {
  return FILTERS.filter((key) => options.filters[key]).length;
}

const fields = () => ({
  model: $("#f-model"),
  sampler: $("#f-sampler"),
  size: $("#f-size"),
  min_steps: $("#f-min-steps"),
  max_steps: $("#f-max-steps"),
  min_cfg: $("#f-min-cfg"),
  max_cfg: $("#f-max-cfg"),
});

function ensureOption(select, value, label = value) {
  if (!value) return;
  if (![...select.options].some((option) => option.value === value)) select.append(h("option", { value }, label));
}

/** Put the options into the form controls. */
export function writeControls(options) {
  $("#q").value = options.q;
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.checked = radio.value === options.mode;
  $("#sort").value = options.sort;
  const f = fields();
  for (const key of FILTERS) {
    if (f[key].tagName === "SELECT") ensureOption(f[key], options.filters[key], sizeLabel(key, options.filters[key]));
    f[key].value = options.filters[key];
  }
  renderFilterBadge(options);
}

/** Read the form controls into `options` (q, mode, sort, filters; limit and random seed are kept). */
export function readControls(options) {
  const f = fields();
  const filters = {};
  for (const key of FILTERS) filters[key] = String(f[key].value || "").trim();
  const mode = document.querySelector('input[name="mode"]:checked');
  return { ...options, q: $("#q").value, mode: mode ? mode.value : "hybrid", sort: $("#sort").value, filters };
}

export function renderFilterBadge(options) {
  const count = activeFilterCount(options);
  const badge = $("#filter-count");
  badge.hidden = count === 0;
  badge.textContent = String(count);
  $("#filters-toggle").setAttribute("aria-label", count ? `Filters (${count} active)` : "Filters");
}

function sizeLabel(key, value) {
  return key === "size" && value ? value.replace("x", " × ") : value;
}

/** Fill the model, sampler and size lists from GET /api/facets, keeping what is selected. */
export function fillFacets(facets) {
  const f = fields();
  const fill = (select, values, anyLabel, label = (v) => v) => {
    const selected = select.value;
    select.replaceChildren(h("option", { value: "" }, anyLabel));
    for (const value of values) select.append(h("option", { value }, label(value)));
    ensureOption(select, selected, label(selected));
    select.value = selected;
  };
  fill(f.model, (facets.models || []).filter(Boolean), "Any model");
  fill(f.sampler, (facets.samplers || []).filter(Boolean), "Any sampler");
  const sizes = (facets.sizes || []).filter((s) => Array.isArray(s) && s.length === 2).map(([w, hgt]) => `${w}x${hgt}`);
  fill(f.size, sizes, "Any size", (v) => sizeLabel("size", v));
}
