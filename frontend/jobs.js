// jobs.js — "Reproduce" and "Variations": POST /api/jobs, then poll each job every 2 s until it ends.

import { api } from "./api.js";
import { h, isAbort } from "./dom.js";
import { imageHref } from "./grid.js";

const POLL_MS = 2000;
const TERMINAL = new Set(["done", "failed", "cancelled"]);
const LABELS = { queued: "Queued", running: "Running…", done: "Done", failed: "Failed", cancelled: "Cancelled" };

export class JobPanel {
  /**
   * @param {HTMLElement} list the <ul> that shows the jobs
   * @param {() => boolean} canQueue whether the job buttons may be enabled again after a request
   */
  constructor(list, canQueue) {
    this.list = list;
    this.canQueue = canQueue;
    this.timers = new Set();
    this.controller = new AbortController();
  }

  /** Stop polling and forget the jobs (the detail view closed or moved to another image). */
  reset() {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.controller.abort();
    this.controller = new AbortController();
    this.list.replaceChildren();
  }

  async create(kind, imageId, count, button) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    const signal = this.controller.signal;
    try {
      const created = await api.createJobs(kind, imageId, count);
      if (signal.aborted) return;
      for (const id of created.job_ids || []) this.track(id, kind, signal);
    } catch (error) {
      if (signal.aborted || isAbort(error)) return;
      this.list.prepend(
        h("li", { class: "job job-failed" }, h("span", { class: "job-title" }, `Could not start ${kind}`),
          h("span", { class: "job-error" }, error.detail || error.message)),
      );
    } finally {
      button.disabled = !this.canQueue();
      button.removeAttribute("aria-busy");
    }
  }

  track(id, kind, signal) {
    const status = h("span", { class: "job-status pill", "data-status": "queued" }, LABELS.queued);
    const body = h("span", { class: "job-body" });
    const row = h(
      "li",
      { class: "job", dataset: { jobId: String(id) } },
      // ids are long opaque strings: the first 8 characters tell a few jobs apart
      h("span", { class: "job-title", title: String(id) }, `${kind === "variations" ? "Variation" : "Reproduce"} job ${String(id).slice(0, 8)}`),
      status,
      body,
    );
    this.list.prepend(row);
    const poll = async () => {
      if (signal.aborted) return;
      let job;
      try {
        job = await api.job(id, signal);
      } catch (error) {
        if (signal.aborted || isAbort(error)) return;
        status.dataset.status = "failed";
        status.textContent = "Unknown";
        body.replaceChildren(h("span", { class: "job-error" }, error.detail || error.message));
        return;
      }
      this.render(job, status, body);
      if (!TERMINAL.has(job.status)) this.schedule(poll);
    };
    poll();
  }

  schedule(fn) {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, POLL_MS);
    this.timers.add(timer);
  }

  render(job, status, body) {
    status.dataset.status = job.status;
    status.textContent = LABELS[job.status] || job.status;
    if (job.status === "failed") {
      body.replaceChildren(h("span", { class: "job-error" }, job.error || "The job failed without a message."));
    } else if (job.status === "done") {
      const ids = job.image_ids || [];
      body.replaceChildren(
        ids.length
          ? h("span", { class: "job-links" }, ...ids.map((iid) => h("a", { href: imageHref(iid), class: "job-link", dataset: { id: String(iid) } }, `Image #${iid}`)))
          : h("span", { class: "muted" }, "No images were made."),
      );
    } else if (job.attempts > 1) {
      body.replaceChildren(h("span", { class: "muted" }, `attempt ${job.attempts}`));
    }
  }
}
