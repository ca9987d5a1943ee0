// jobs.js — the caller's job queue in the store: queue (Create, Reproduce, Variations), follow, cancel.
//
// A job is followed over server-sent events (GET /api/jobs/{id}/events, one `job` message per change, the session
// cookie goes along); the EventSource closes when the job ends or leaves the queue. A server without the event
// stream (its jobs carry no `progress` field) is polled every 2 s instead.

import { api } from "./api.js";
import { announce, isAbort } from "./dom.js";
import { store, update } from "./store.js";

const POLL_MS = 2000;
export const TERMINAL = new Set(["done", "failed", "cancelled"]);

const followers = new Map(); // job id -> {events: EventSource | null, timer, controller}
const doneHooks = new Set();
let live = null; // whether the server streams job events (null: not known yet)
let listController = null;

/** Call `fn(imageIds, job)` each time a followed job finishes with images. */
export function onJobDone(fn) {
  doneHooks.add(fn);
}

function setRecord(id, recipe) {
  update((state) => {
    const old = state.jobs.byId[id];
    if (!old) return null;
    const next = { ...old, ...(typeof recipe === "function" ? recipe(old) : recipe) };
    return { jobs: { ...state.jobs, byId: { ...state.jobs.byId, [id]: next } } };
  });
}

/** Add a record (newest first) unless there is one; `origin`: {source, imageId?}; `extra`: seeds, warnings. */
function addRecord(id, origin, extra = {}, job = null) {
  update((state) => {
    if (state.jobs.byId[id]) return null;
    const record = { id, origin, job, seeds: [], warnings: [], error: "", cancelling: false, finished: false, ...extra };
    return { jobs: { ...state.jobs, order: [id, ...state.jobs.order], byId: { ...state.jobs.byId, [id]: record } } };
  });
}

function stopFollowing(id) {
  const follower = followers.get(id);
  if (!follower) return;
  follower.events?.close();
  clearTimeout(follower.timer);
  follower.controller.abort();
  followers.delete(id);
}

/** A new state of job `id` from the server (a GET, an event, a DELETE). */
function apply(id, job) {
  const before = store.state.jobs.byId[id];
  if (!before) return;
  const finishedNow = job.status === "done" && !before.finished;
  setRecord(id, { job, error: "", finished: before.finished || job.status === "done",
    cancelling: before.cancelling && !TERMINAL.has(job.status) && !job.cancel_requested });
  if (TERMINAL.has(job.status)) stopFollowing(id);
  if (before.job && before.job.status !== job.status) {
    const images = (job.image_ids || []).length;
    if (job.status === "done") announce(`Job finished: ${images} ${images === 1 ? "image" : "images"}`);
    else if (job.status === "failed") announce("A job failed");
    else if (job.status === "cancelled") announce("Job cancelled");
  }
  if (finishedNow && (job.image_ids || []).length) for (const hook of doneHooks) hook(job.image_ids, job);
}

function poll(id) {
  const follower = followers.get(id);
  if (!follower) return;
  follower.timer = setTimeout(async () => {
    try {
      const job = await api.job(id, follower.controller.signal);
      if (!followers.has(id)) return;
      apply(id, job);
      if (!TERMINAL.has(job.status)) poll(id);
    } catch (error) {
      if (isAbort(error) || !followers.has(id)) return;
      setRecord(id, { error: error.detail || error.message });
      stopFollowing(id);
    }
  }, POLL_MS);
}

function stream(id) {
  const follower = followers.get(id);
  if (!follower) return;
  const events = new EventSource(api.jobEventsUrl(id));
  follower.events = events;
  events.addEventListener("job", (event) => {
    let job;
    try {
      job = JSON.parse(event.data);
    } catch {
      return;
    }
    if (followers.get(id) === follower) apply(id, job);
  });
  events.addEventListener("error", () => {
    // CONNECTING: the browser reconnects by itself. CLOSED: the stream was refused; poll instead.
    if (events.readyState !== EventSource.CLOSED || followers.get(id) !== follower) return;
    follower.events = null;
    poll(id);
  });
}

/** Follow job `id` until it ends: one GET for its state now, then its event stream (or polling). */
export async function follow(id, origin, extra = {}) {
  addRecord(id, origin, extra);
  if (followers.has(id)) return;
  const follower = { events: null, timer: null, controller: new AbortController() };
  followers.set(id, follower);
  let job;
  try {
    job = await api.job(id, follower.controller.signal);
  } catch (error) {
    if (isAbort(error) || followers.get(id) !== follower) return;
    setRecord(id, { error: error.detail || error.message });
    stopFollowing(id);
    return;
  }
  if (followers.get(id) !== follower) return;
  apply(id, job);
  if (TERMINAL.has(job.status)) return;
  if (live === null) live = "progress" in job; // the streaming API sends progress (null while queued)
  if (live) stream(id);
  else poll(id);
}

/** POST /api/jobs: Reproduce or Variations of image `imageId`; their jobs join the queue. Throws ApiError. */
export async function queueImageJobs(kind, imageId, count) {
  const created = await api.createJobs(kind, imageId, count);
  for (const id of created.job_ids || []) follow(id, { source: kind, imageId: String(imageId) });
  return created;
}

/** A job POST /api/generations made (its 201 body): it joins the queue and is followed. */
export function queueGeneration(created) {
  follow(created.id, { source: "generate" }, {
    seeds: created.seeds || [], warnings: created.warnings || [],
  });
}

/** GET /api/jobs?mine=1: the caller's jobs join the queue (newest first); unfinished ones are followed. */
export async function loadMyJobs() {
  listController?.abort();
  listController = new AbortController();
  const { signal } = listController;
  let listed;
  try {
    listed = await api.myJobs(signal);
  } catch (error) {
    if (isAbort(error) || signal.aborted) return;
    update((state) => ({ jobs: { ...state.jobs, listError: error.detail || error.message } }));
    return;
  }
  if (signal.aborted) return;
  const jobs = listed.data || [];
  update((state) => {
    const byId = { ...state.jobs.byId };
    for (const job of jobs) {
      const payload = job.payload || {};
      const origin = { source: job.kind, imageId: payload.image_id != null ? String(payload.image_id) : null };
      byId[job.id] = byId[job.id] || { id: job.id, origin, job, seeds: payload.seeds || [], warnings: [], error: "",
        cancelling: false, finished: job.status === "done" };
    }
    const known = new Set(state.jobs.order);
    const order = [...state.jobs.order, ...jobs.map((j) => j.id).filter((id) => !known.has(id))];
    const when = (id) => Date.parse(byId[id].job?.created_at || "") || Number.MAX_SAFE_INTEGER; // unknown: newest
    order.sort((a, b) => when(b) - when(a));
    return { jobs: { ...state.jobs, order, byId, listed: true, listError: "" } };
  });
  for (const job of jobs) if (!TERMINAL.has(job.status)) follow(job.id, store.state.jobs.byId[job.id].origin);
}

/** DELETE /api/jobs/{id}: cancelled at once when queued, at the worker's next step when running. */
export async function cancelJob(id) {
  setRecord(id, { cancelling: true, error: "" });
  try {
    apply(id, await api.cancelJob(id));
  } catch (error) {
    setRecord(id, { cancelling: false, error: error.status === 409 ? "" : error.detail || error.message });
    if (error.status === 409) {
      try {
        apply(id, await api.job(id)); // it had ended already: show how
      } catch {
        // keep what we have
      }
    }
  }
}

/** Take job `id` off the page's queue (the job itself is not touched). */
export function dismissJob(id) {
  stopFollowing(id);
  update((state) => {
    const byId = { ...state.jobs.byId };
    delete byId[id];
    return { jobs: { ...state.jobs, order: state.jobs.order.filter((j) => j !== id), byId } };
  });
}

/** Forget every job and stop following them (another user signed in, or nobody). */
export function resetJobs() {
  listController?.abort();
  for (const id of [...followers.keys()]) stopFollowing(id);
  update({ jobs: { order: [], byId: {}, listed: false, listError: "" } });
}
