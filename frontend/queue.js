// queue.js — how a job looks (status, step i of N, progress bar, ETA, queue position, preview, images, Cancel),
// in the Create panel's queue and under the detail view's Reproduce / Variations buttons.

import { imageHref } from "./grid.js";
import { TERMINAL, cancelJob, dismissJob } from "./jobs.js";
import { truncate } from "./dom.js";
import { html } from "./preact-htm.js";

const LABELS = { pending: "Queued", queued: "Queued", running: "Running…", done: "Done", failed: "Failed", cancelled: "Cancelled" };

export function formatEta(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "";
  if (seconds < 1) return "less than a second left";
  if (seconds < 90) return `about ${Math.round(seconds)} s left`;
  return `about ${Math.round(seconds / 60)} min left`;
}

function title(record) {
  const job = record.job || {};
  const kind = job.kind || record.origin.source;
  const id = String(record.id);
  if (kind === "variations") return `Variation job ${id.slice(0, 8)}`; // ids are long: 8 characters tell apart
  if (kind === "reproduce") return `Reproduce job ${id.slice(0, 8)}`;
  const prompt = job.payload && job.payload.prompt;
  return prompt ? truncate(prompt, 70) : `Job ${id.slice(0, 8)}`;
}

function Progress({ job }) {
  const progress = job.progress;
  if (job.status === "queued") {
    return html`<div class="job-progress">
      <span class="job-position">${job.queue_position != null ? `#${job.queue_position} in the queue` : "Waiting for a worker"}</span>
      <progress class="job-bar" aria-label="Waiting"></progress>
    </div>`;
  }
  const images = progress && progress.images > 1 ? ` · image ${Math.min(progress.images_done + 1, progress.images)} of ${progress.images}` : "";
  const eta = formatEta(job.eta_seconds);
  return html`<div class="job-progress">
    <span class="job-step">${progress && progress.steps ? `step ${progress.step} of ${progress.steps}${images}` : "Starting…"}</span>
    ${eta ? html`<span class="job-eta">${eta}</span>` : null}
    ${progress
      ? html`<progress key="steps" class="job-bar" max="1" value=${progress.fraction} aria-label="Progress"></progress>`
      : html`<progress key="wait" class="job-bar" aria-label="Progress"></progress>`}
  </div>`;
}

function Images({ ids }) {
  if (!ids.length) return html`<span class="muted">No images were made.</span>`;
  return html`<span class="job-links">${ids.map((id) => html`
    <a key=${id} href=${imageHref(id)} class="job-link" data-id=${String(id)} title=${`Image #${id}`}>
      <img src=${`/images/${id}`} alt="" width="56" height="56" loading="lazy" decoding="async" />
      <span class="visually-hidden">Image #${id}</span>
    </a>`)}</span>`;
}

export function JobItem({ record, dismissible = false }) {
  const job = record.job;
  const status = job ? job.status : "pending"; // until the first answer about it
  const ended = TERMINAL.has(status);
  const stopping = record.cancelling || (job && job.cancel_requested && !ended);
  const seeds = record.seeds && record.seeds.length ? record.seeds : (job && job.payload && job.payload.seeds) || [];
  return html`<li class="job" data-job-id=${String(record.id)} data-status=${status}>
    <div class="job-head">
      <span class="job-title" title=${String(record.id)}>${title(record)}</span>
      <span class="job-status pill" data-status=${status}>${stopping ? "Cancelling…" : LABELS[status] || status}</span>
    </div>
    ${job && !ended ? html`<${Progress} job=${job} />` : null}
    ${job && status === "running" && job.preview
      ? html`<img class="job-preview" src=${job.preview} alt=${`Preview at step ${job.progress ? job.progress.step : ""}`} />`
      : null}
    ${seeds.length && record.origin.source === "generate"
      ? html`<span class="job-seeds muted">${seeds.length === 1 ? `seed ${seeds[0]}` : `seeds ${seeds.join(", ")}`}</span>` : null}
    ${record.warnings.length ? html`<ul class="job-warnings">${record.warnings.map((w) => html`<li>${w}</li>`)}</ul>` : null}
    ${status === "failed" ? html`<span class="job-error">${job.error || "The job failed without a message."}</span>` : null}
    ${status === "done" ? html`<${Images} ids=${job.image_ids || []} />` : null}
    ${job && !ended && job.attempts > 1 ? html`<span class="muted">attempt ${job.attempts}</span>` : null}
    ${record.error ? html`<span class="job-error">${record.error}</span>` : null}
    <div class="job-actions">
      ${!ended ? html`<button class="chip-button job-cancel" type="button" disabled=${stopping || !job}
          onClick=${() => cancelJob(record.id)} aria-label=${`Cancel ${title(record)}`}>Cancel</button>` : null}
      ${ended && dismissible ? html`<button class="text-button job-dismiss" type="button"
          onClick=${() => dismissJob(record.id)} aria-label=${`Remove ${title(record)} from the list`}>Remove</button>` : null}
    </div>
  </li>`;
}

/** The jobs of the store, newest first, that `filter` keeps. */
export function JobList({ state, filter = () => true, dismissible = false }) {
  const records = state.jobs.order.map((id) => state.jobs.byId[id]).filter((r) => r && filter(r));
  return records.map((record) => html`<${JobItem} key=${record.id} record=${record} dismissible=${dismissible} />`);
}
