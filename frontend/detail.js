// detail.js — the detail view: full image, every parameter, copy buttons, similar images, jobs, Remix.
//
// In safe mode a flagged image shows blurred until clicked; admins see its NSFW scores (the record's `safety`).

import { api } from "./api.js";
import { bindCopyButton } from "./clipboard.js";
import { $, announce, h, isAbort, truncate } from "./dom.js";
import { Masonry } from "./grid.js";
import { queueImageJobs } from "./jobs.js";
import { JobList } from "./queue.js";
import { blurs, rememberReveal, safeLevel } from "./safe.js";
import { mount, refresh } from "./store.js";

const SIMILAR_K = 24;
const VARIATIONS = 4;
const DASH = "—";

function text(value) {
  return value === null || value === undefined || value === "" ? DASH : String(value);
}

function formatDate(value) {
  if (!value) return DASH;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function shortHash(hash) {
  return hash && hash.length > 12 ? hash.slice(0, 10) : hash;
}

function score(value) {
  return Number(value).toFixed(2);
}

/** "NSFW score 0.93 (nudenet)" for an admin's `safety` record ({score, classifier, scores, pending}). */
export function safetySummary(safety) {
  if (safety.score === null || safety.score === undefined) return "NSFW score: not scored yet";
  const by = safety.classifier ? ` (${safety.classifier})` : "";
  return `NSFW score ${score(safety.score)}${by}${safety.pending ? " · not scored yet by every classifier" : ""}`;
}

/** "ChatGPT (OpenAI) · AI-generated · signature valid, untrusted signer" for the record's C2PA `provenance`. */
export function provenanceSummary(provenance) {
  const who = provenance.label || provenance.claim_generator || "unknown generator";
  const problems = provenance.validation_problems || [];
  let check = `signature ${provenance.validation}`;
  if (provenance.validation === "invalid") check = `invalid signature (${problems.join(", ")})`;
  else if (problems.some((code) => code.startsWith("signingCredential.untrusted"))) check += ", untrusted signer";
  const ai = provenance.ai_generated ? ["AI-generated"] : [];
  return [who, ...ai, check].join(" · ");
}

export class DetailView {
  /**
   * @param {{onOpenImage: (id: string) => void, onClose: () => void, onStep: (delta: number) => void,
   *          onRemix: (item: object) => void, onReveal: (id: string) => void}} hooks `onReveal`: the user revealed
   *          a flagged image here (the grid behind reveals it too)
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.dialog = $("#detail");
    this.figure = $("#detail-figure");
    this.image = $("#detail-image");
    this.status = $("#detail-status");
    const revealed = (id) => {
      rememberReveal(id);
      hooks.onReveal(id);
    };
    this.similarGrid = new Masonry($("#similar-grid"), {
      onOpen: (id) => hooks.onOpenImage(id), caption: false, blur: blurs, onReveal: revealed,
    });
    this.similarState = $("#similar-state");
    this.jobAccess = { allowed: false, hint: "" };
    this.current = null; // the record shown (list item, then the full detail)
    this.controller = null;
    this.similarController = null;
    this.id = null;
    // The jobs queued from this view (for this image), from the page's one job queue.
    mount($("#job-list"), JobList, { filter: (record) => this.id !== null && record.origin.imageId === this.id
      && (record.origin.source === "reproduce" || record.origin.source === "variations") });

    const copies = [
      ["#copy-prompt", () => this.current?.prompt, "prompt"],
      ["#copy-negative", () => this.current?.negative_prompt, "negative prompt"],
      ["#copy-seed", () => (this.current?.seed ?? "") === "" ? "" : String(this.current.seed), "seed"],
      ["#copy-a1111", () => this.current?.reproduce?.a1111, "A1111 settings"],
      ["#copy-diffusers", () => this.current?.reproduce?.diffusers, "diffusers snippet"],
      ["#copy-command", () => this.current?.reproduce?.command, "promptdex command"],
    ];
    for (const [selector, getText, what] of copies) bindCopyButton($(selector), getText, what);

    // A blurred image: a click on it (or on its label, a button) takes the blur off.
    this.figure.addEventListener("click", () => {
      if (!this.figure.classList.contains("nsfw-blur") || !this.current) return;
      revealed(this.current.id);
      this.applyBlur(this.current);
      announce("Image revealed");
    });
    $("#detail-close").addEventListener("click", () => hooks.onClose());
    $("#detail-prev").addEventListener("click", () => hooks.onStep(-1));
    $("#detail-next").addEventListener("click", () => hooks.onStep(1));
    $("#job-reproduce").addEventListener("click", (e) => this.queueJobs("reproduce", 1, e.currentTarget));
    $("#job-variations").addEventListener("click", (e) => this.queueJobs("variations", VARIATIONS, e.currentTarget));
    $("#job-remix").addEventListener("click", () => {
      if (this.current) hooks.onRemix(this.current);
    });
    $("#job-list").addEventListener("click", (event) => {
      const link = event.target.closest("a.job-link");
      if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
      event.preventDefault();
      hooks.onOpenImage(link.dataset.id);
    });
    // Esc: the dialog's cancel event; we close through the router so the URL follows.
    this.dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      hooks.onClose();
    });
    // The browser may still close it on its own (repeated Esc); keep the page in step.
    this.dialog.addEventListener("close", () => {
      if (this.id !== null) hooks.onClose();
    });
    this.dialog.addEventListener("click", (event) => {
      if (event.target === this.dialog) hooks.onClose(); // a click on the backdrop
    });
  }

  get isOpen() {
    return this.dialog.open;
  }

  /** Show image `id`; `hint` is its list item (shown at once while the full record loads). */
  async show(id, hint) {
    id = String(id);
    const sameImage = this.id === id && this.isOpen;
    this.id = id;
    if (!this.isOpen) {
      document.body.classList.add("modal-open");
      this.dialog.showModal();
      $("#detail-close").focus({ preventScroll: true });
    }
    if (sameImage) return;
    this.controller?.abort();
    this.controller = new AbortController();
    const { signal } = this.controller;
    this.setJobError("");
    refresh(); // the job list follows this.id
    this.dialog.querySelector(".detail-scroll").scrollTop = 0;
    this.setStatus("");
    this.render(hint || { id }, { partial: true });
    this.loadSimilar(id, signal);
    try {
      const full = await api.image(id, signal);
      if (signal.aborted) return;
      this.render(full, { partial: false });
    } catch (error) {
      if (isAbort(error) || signal.aborted) return;
      this.setStatus(error.detail || error.message, "error");
      if (!hint) this.renderMissing(id);
    }
  }

  hide() {
    this.id = null;
    this.controller?.abort();
    this.controller = null;
    this.setJobError("");
    refresh();
    this.similarGrid.clear();
    if (this.isOpen) this.dialog.close();
    document.body.classList.remove("modal-open");
  }

  /** Whether the caller may queue jobs, and the hint that says why not (shown under the disabled buttons). */
  setJobAccess(allowed, hint) {
    this.jobAccess = { allowed, hint: allowed ? "" : hint };
    const element = $("#job-hint");
    element.textContent = this.jobAccess.hint;
    element.hidden = !this.jobAccess.hint;
    this.updateJobButtons();
  }

  jobButtonsEnabled() {
    return !!this.current?.reproduce && this.jobAccess.allowed;
  }

  setJobError(message) {
    const element = $("#job-error");
    element.textContent = message;
    element.hidden = !message;
  }

  /** POST /api/jobs for this image; the jobs show below the buttons and in the Create panel's queue. */
  async queueJobs(kind, count, button) {
    const id = this.id;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    this.setJobError("");
    try {
      await queueImageJobs(kind, id, count);
    } catch (error) {
      if (this.id === id) this.setJobError(`Could not start ${kind}: ${error.detail || error.message}`);
    } finally {
      button.removeAttribute("aria-busy");
      button.disabled = !this.jobButtonsEnabled();
    }
  }

  updateJobButtons() {
    for (const selector of ["#job-reproduce", "#job-variations", "#job-remix"]) {
      const button = $(selector);
      if (!button.hasAttribute("aria-busy")) button.disabled = !this.jobButtonsEnabled();
    }
  }

  setNav(hasPrev, hasNext) {
    $("#detail-prev").disabled = !hasPrev;
    $("#detail-next").disabled = !hasNext;
  }

  setStatus(message, kind = "info") {
    this.status.hidden = !message;
    this.status.textContent = message;
    this.status.dataset.kind = kind;
  }

  renderMissing(id) {
    $("#detail-title").textContent = `Image #${id}`;
    this.image.removeAttribute("src");
    this.image.hidden = true;
    this.dialog.dataset.loaded = "error";
  }

  /** Blur the large image when safe mode hides `item` (set before its src, so it never shows unblurred). */
  applyBlur(item) {
    const blurred = blurs(item);
    const hadFocus = document.activeElement === $("#detail-reveal");
    this.figure.classList.toggle("nsfw-blur", blurred);
    if (item.nsfw === true) this.figure.dataset.nsfw = "1";
    else delete this.figure.dataset.nsfw;
    $("#detail-reveal").hidden = !blurred;
    if (hadFocus && !blurred) $("#detail-close").focus({ preventScroll: true });
  }

  /** The level changed: blur (or not) the image shown, and find its similar images at the new level. */
  safeChanged() {
    if (this.id === null || !this.current || !this.controller) return;
    this.applyBlur(this.current);
    this.loadSimilar(this.id, this.controller.signal);
  }

  /** An admin's view of the NSFW scores (`safety` is null for everyone else: the block stays hidden). */
  renderSafety(item) {
    const block = $("#detail-safety");
    const safety = item.safety;
    block.hidden = !safety;
    if (!safety) return;
    const flagged = item.nsfw === true ? " · flagged" : "";
    $("#detail-safety-score").textContent = `${safetySummary(safety)}${flagged}`;
    const scores = Object.entries(safety.scores || {}).sort(([a], [b]) => a.localeCompare(b));
    $("#detail-safety-scores").replaceChildren(
      ...scores.map(([name, value]) =>
        h("div", { class: "param", dataset: { classifier: name } }, h("dt", {}, name), h("dd", {}, score(value)))),
    );
  }

  render(item, { partial }) {
    this.current = item;
    this.dialog.dataset.loaded = partial ? "partial" : "full";
    this.dialog.dataset.imageId = String(item.id);
    const prompt = item.prompt || "";
    $("#detail-title").textContent = prompt ? truncate(prompt, 80) : `Image #${item.id}`;
    document.title = `${prompt ? truncate(prompt, 60) : `Image #${item.id}`} · promptdex`;

    const fig = this.image;
    fig.hidden = false;
    this.applyBlur(item);
    if (item.url && fig.getAttribute("src") !== item.url) {
      fig.classList.remove("loaded");
      // The cached thumbnail shows (blurred) until the full image arrives.
      fig.style.backgroundImage = item.thumb_url ? `url("${item.thumb_url}")` : "";
      if (item.width && item.height) {
        fig.width = item.width;
        fig.height = item.height;
        fig.style.setProperty("--ar", String(item.width / item.height));
      }
      fig.alt = prompt ? truncate(prompt, 200) : `Image ${item.id}`;
      fig.onload = () => fig.classList.add("loaded");
      fig.src = item.url;
    }
    $("#detail-open").href = item.url || "#";
    if (!partial) this.renderSafety(item);
    else $("#detail-safety").hidden = true;

    $("#detail-prompt").textContent = prompt || "(no prompt recorded)";
    $("#detail-prompt").classList.toggle("muted", !prompt);
    const negative = item.negative_prompt || "";
    $("#detail-negative").textContent = negative || "(none)";
    $("#detail-negative").classList.toggle("muted", !negative);
    $("#copy-prompt").disabled = !prompt;
    $("#copy-negative").disabled = !negative;
    $("#copy-seed").disabled = item.seed === null || item.seed === undefined;

    const params = $("#detail-params");
    const rows = [
      ["Seed", text(item.seed), "seed"],
      ["Steps", text(item.steps)],
      ["CFG scale", text(item.cfg)],
      ["Sampler", text(item.sampler)],
      ["Schedule", text(item.scheduler)],
      ["Size", item.width && item.height ? `${item.width} × ${item.height}` : DASH],
      ["Model", text(item.model), "wide"],
      ["Model hash", text(shortHash(item.model_hash)), "mono", item.model_hash],
      ["Source", text(item.source)],
      ["Created", formatDate(item.created_at)],
    ];
    if (!partial) {
      if (item.sampler_class) rows.push(["Diffusers scheduler", item.sampler_class, "mono wide"]);
      if (item.clip_skip) rows.push(["Clip skip", String(item.clip_skip)]);
      if (item.denoising_strength !== null && item.denoising_strength !== undefined) {
        rows.push(["Denoising strength", String(item.denoising_strength)]);
      }
      if (item.hires) rows.push(["Hires fix", Object.entries(item.hires).map(([k, v]) => `${k}: ${v}`).join(", "), "wide"]);
      if (item.format) rows.push(["Format", String(item.format).toUpperCase()]);
      if (item.sha256) rows.push(["SHA-256", shortHash(item.sha256), "mono", item.sha256]);
      const paths = item.paths || [];
      if (paths.length) {
        rows.push([paths.length > 1 ? `Files (${paths.length})` : "File",
          h("ul", { class: "paths" }, ...paths.map((path) => h("li", {}, path))), "wide files mono"]);
      }
      const c2pa = item.provenance;
      if (c2pa) {
        const by = [c2pa.claim_generator, c2pa.claim_generator_version].filter(Boolean).join(" ");
        rows.push(["Content credentials", provenanceSummary(c2pa), "wide provenance",
          [by && `claim generator: ${by}`, c2pa.issuer && `issued by ${c2pa.issuer}`].filter(Boolean).join(", ")]);
      }
    }
    params.replaceChildren(
      ...rows.map(([label, value, cls = "", title]) =>
        h("div", { class: `param ${cls}`.trim() }, h("dt", {}, label), h("dd", { title: title || null }, value)),
      ),
    );

    const reproduce = item.reproduce;
    for (const [key, selector] of [["a1111", "#code-a1111"], ["diffusers", "#code-diffusers"], ["command", "#code-command"]]) {
      $(selector).textContent = reproduce ? reproduce[key] : "Loading…";
    }
    for (const selector of ["#copy-a1111", "#copy-diffusers", "#copy-command"]) $(selector).disabled = !reproduce;
    const workflow = $("#download-workflow");
    workflow.hidden = partial || !item.has_workflow;
    workflow.href = workflow.hidden ? "#" : `/api/images/${encodeURIComponent(item.id)}/workflow`;
    workflow.download = `promptdex-${item.id}-workflow.json`;
    const model = item.generation && item.generation.model;
    $("#detail-tiny-note").hidden = partial || !(model && model.source === "tiny");
    this.updateJobButtons();
  }

  /** Fill the similar grid at the current safe level (a new call replaces a pending one; `imageSignal`: the image's). */
  async loadSimilar(id, imageSignal) {
    this.similarController?.abort();
    const controller = new AbortController();
    this.similarController = controller;
    imageSignal.addEventListener("abort", () => controller.abort(), { once: true });
    const { signal } = controller;
    this.similarGrid.clear();
    this.similarState.hidden = false;
    this.similarState.dataset.kind = "loading";
    this.similarState.textContent = "Finding similar images…";
    try {
      const result = await api.similar(id, SIMILAR_K, safeLevel(), signal);
      if (signal.aborted) return;
      const items = (result.data || []).filter((item) => String(item.id) !== String(id));
      this.similarGrid.append(items);
      if (items.length) {
        this.similarState.hidden = true;
      } else {
        this.similarState.dataset.kind = "empty";
        this.similarState.textContent = "No similar images yet (is the image index built?).";
      }
      announce(`${items.length} similar images`);
    } catch (error) {
      if (isAbort(error) || signal.aborted) return;
      this.similarState.dataset.kind = "error";
      this.similarState.textContent = `Similar images are unavailable: ${error.detail || error.message}`;
    }
  }
}
