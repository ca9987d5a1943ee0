// api.js — the search API's endpoints as functions; errors carry the server's `detail` text.
//
// Every search-type call takes the safe-mode level (`safe`: strict | moderate | off; null leaves it to the caller's
// default). A signed-in browser sends the CSRF token (the readable promptdex_csrf cookie) with every state-changing
// request. A 401 from anything but the sign-in endpoints fires "promptdex:unauthorized" on window, so the
// page can check whether its session ended or the instance is private.

const CSRF_COOKIE = "promptdex_csrf";
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);
let csrfFallback = null; // the csrf_token of /api/auth/me or login, for when the cookie cannot be read

export class ApiError extends Error {
  constructor(status, detail, body = null) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.body = body;
  }

  /** The validation errors ({loc, msg, type}): the body's `errors`, or FastAPI's own list in `detail`. */
  get errors() {
    const body = this.body || {};
    if (Array.isArray(body.errors)) return body.errors;
    return Array.isArray(body.detail) ? body.detail : [];
  }
}

/** FastAPI's `detail` is a string, or a list of validation errors ({loc, msg}) for 422. */
function detailText(body, response) {
  const detail = body && body.detail;
  if (typeof detail === "string" && detail) return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail
      .map((d) => {
        const loc = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "query" && p !== "body").join(".") : "";
        return loc ? `${loc}: ${d.msg}` : d.msg;
      })
      .join("; ");
  }
  return `${response.status} ${response.statusText || "error"}`.trim();
}

function readCookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

/** The token for X-CSRF-Token: the cookie when there is one (it follows sign-in and sign-out in other tabs). */
function csrfToken() {
  return readCookie(CSRF_COOKIE) || csrfFallback;
}

export function setCsrfToken(token) {
  csrfFallback = token || null;
}

async function request(path, { params, method = "GET", json, form, signal, quiet401 = false } = {}) {
  const url = new URL(path, window.location.origin);
  if (params) {
    for (const [key, value] of Object.entries(params)) {
      if (value !== "" && value != null) url.searchParams.set(key, String(value));
    }
  }
  const init = { method, signal, headers: { Accept: "application/json" }, credentials: "same-origin" };
  const csrf = SAFE_METHODS.has(method) ? null : csrfToken();
  if (csrf) init.headers["X-CSRF-Token"] = csrf;
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (form !== undefined) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "Cannot reach the promptdex server. Is `promptdex serve` running?");
  }
  const text = await response.text();
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, detailText(body, response), body);
    if (response.status === 401 && !quiet401) window.dispatchEvent(new CustomEvent("promptdex:unauthorized", { detail: error }));
    throw error;
  }
  return body;
}

export const api = {
  search: (params, signal) => request("/api/search", { params, signal }), // `params` carries `safe`
  suggest: (q, safe, signal) => request("/api/suggest", { params: { q, safe }, signal }),
  image: (id, signal) => request(`/api/images/${encodeURIComponent(id)}`, { signal }),
  similar: (id, k, safe, signal) =>
    request(`/api/images/${encodeURIComponent(id)}/similar`, { params: { k, safe }, signal }),
  searchByImage(file, k, safe, signal) {
    const form = new FormData();
    form.append("file", file, file.name || "image");
    if (safe) form.append("safe", safe);
    return request("/api/search/image", { method: "POST", form, params: { k }, signal });
  },
  createJobs: (kind, imageId, count) =>
    request("/api/jobs", { method: "POST", json: { kind, image_id: Number(imageId), count } }),
  job: (id, signal) => request(`/api/jobs/${encodeURIComponent(String(id))}`, { signal }), // ids are opaque strings
  myJobs: (signal) => request("/api/jobs", { params: { mine: 1 }, signal }),
  cancelJob: (id) => request(`/api/jobs/${encodeURIComponent(String(id))}`, { method: "DELETE" }),
  jobEventsUrl: (id) => `/api/jobs/${encodeURIComponent(String(id))}/events`,
  models: () => request("/api/models"),
  /** POST /api/generations: JSON `fields`, or multipart when there is an init image (with `strength`). */
  generate(fields, initImage) {
    if (!initImage) return request("/api/generations", { method: "POST", json: fields });
    const form = new FormData();
    for (const [key, value] of Object.entries(fields)) {
      if (value !== undefined && value !== null) form.append(key, String(value));
    }
    form.append("init_image", initImage, initImage.name || "init.png");
    return request("/api/generations", { method: "POST", form });
  },
  me: () => request("/api/auth/me", { quiet401: true }),
  login: (name, password) => request("/api/auth/login", { method: "POST", json: { name, password }, quiet401: true }),
  logout: () => request("/api/auth/logout", { method: "POST", quiet401: true }),
  facets: (safe) => request("/api/facets", { params: { safe } }),
  health: () => request("/api/health"),
};
