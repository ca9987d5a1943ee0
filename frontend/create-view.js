// create-view.js — the Create button in the top bar and the Create panel (form + queue), drawn from the store.

import {
  FIELD_IDS, STRENGTH, chooseModel, chooseSize, clearInitImage, closeCreate, countChoices, modelByName,
  setField, setInitImage, setRandomSeed, sizeFollowsInit, submit, toggleCreate,
} from "./create.js";
import { TERMINAL } from "./jobs.js";
import { html } from "./preact-htm.js";
import { JobList } from "./queue.js";

function activeJobs(state) {
  return state.jobs.order.filter((id) => {
    const job = state.jobs.byId[id] && state.jobs.byId[id].job;
    return !job || !TERMINAL.has(job.status);
  }).length;
}

/** The top bar: "Create" (disabled with a "Sign in to create" link for those who may not create). */
export function CreateBar({ state, onSignIn }) {
  const { account } = state;
  if (!account.known) return null;
  const open = state.create.open;
  const active = activeJobs(state);
  const locked = !account.canCreate;
  const signIn = (event) => {
    event.preventDefault();
    event.stopPropagation(); // the sign-in panel closes on clicks outside it
    onSignIn();
  };
  return html`
    <button id="create-toggle" class="create-button" type="button" aria-expanded=${String(open)}
        aria-controls="create-panel" disabled=${locked && !open}
        aria-describedby=${locked ? (account.user ? "create-locked" : "create-signin") : undefined}
        onClick=${() => toggleCreate()}>
      <svg viewBox="0 0 24 24" aria-hidden="true"><path d="M12 5v14M5 12h14"/></svg>
      <span class="create-label">Create</span>
      ${active ? html`<span class="badge" aria-label=${`${active} unfinished ${active === 1 ? "job" : "jobs"}`}>${active}</span>` : null}
    </button>
    ${locked ? (account.user
      ? html`<span id="create-locked" class="create-locked muted">Creators only</span>`
      : html`<a id="create-signin" class="create-signin" href="#signin-panel" onClick=${signIn}>Sign in to create</a>`)
      : null}`;
}

function describe(state, field, ...more) {
  const error = state.create.fieldErrors[field];
  const ids = [error ? `${FIELD_IDS[field]}-error` : null, ...more].filter(Boolean).join(" ");
  return { "aria-invalid": error ? "true" : undefined, "aria-describedby": ids || undefined };
}

function FieldError({ state, field }) {
  const error = state.create.fieldErrors[field];
  return error ? html`<p id=${`${FIELD_IDS[field]}-error`} class="field-error" role="alert">${error}</p>` : null;
}

function rangeHint(range) {
  return Array.isArray(range) && range.length === 2 ? `recommended ${range[0]}–${range[1]}` : "";
}

function outside(value, range) {
  const n = Number(value);
  return Array.isArray(range) && value !== "" && Number.isFinite(n) && (n < range[0] || n > range[1]);
}

function NumberField({ state, field, label, hint, range, ...attrs }) {
  const value = state.create.values[field];
  const id = FIELD_IDS[field];
  const hintId = hint ? `${id}-hint` : null;
  return html`<div class="field">
    <label for=${id}>${label}</label>
    <input id=${id} name=${field} type="number" inputmode="decimal" value=${value}
      onInput=${(e) => setField(field, e.currentTarget.value)} ...${describe(state, field, hintId)} ...${attrs} />
    ${hint ? html`<small id=${hintId} class=${`field-hint${outside(value, range) ? " warn" : ""}`}>${hint}</small>` : null}
    <${FieldError} state=${state} field=${field} />
  </div>`;
}

function Select({ state, field, label, options, onChange }) {
  const value = state.create.values[field];
  const id = FIELD_IDS[field];
  const all = value && !options.some((o) => o.value === value) ? [{ value, label: value }, ...options] : options;
  return html`<div class="field">
    <label for=${id}>${label}</label>
    <select id=${id} name=${field} value=${value} onChange=${(e) => (onChange || ((v) => setField(field, v)))(e.currentTarget.value)}
        ...${describe(state, field)}>
      ${all.map((o) => html`<option key=${o.value} value=${o.value}>${o.label}</option>`)}
    </select>
    <${FieldError} state=${state} field=${field} />
  </div>`;
}

function Sizes({ state, profile }) {
  const { width, height } = state.create.values;
  const sizes = (profile && profile.sizes) || [];
  if (!sizes.length) return null;
  return html`<div class="size-chips" role="group" aria-label="Recommended sizes">
    ${sizes.map(([w, h]) => html`<button key=${`${w}x${h}`} type="button" class="chip-button size-chip"
        aria-pressed=${String(String(w) === width && String(h) === height)} onClick=${() => chooseSize(w, h)}>${w}×${h}</button>`)}
  </div>`;
}

function Seed({ state }) {
  const { randomSeed, values } = state.create;
  return html`<div class="field seed-field">
    <label for="create-seed">Seed</label>
    <div class="seed-row">
      <input id="create-seed" name="seed" type="number" inputmode="numeric" min="0" step="1"
        value=${randomSeed ? "" : values.seed} placeholder=${randomSeed ? "random" : ""} disabled=${randomSeed}
        onInput=${(e) => setField("seed", e.currentTarget.value)} ...${describe(state, "seed")} />
      <label class="check">
        <input id="create-seed-random" type="checkbox" checked=${randomSeed}
          onChange=${(e) => setRandomSeed(e.currentTarget.checked)} />
        <span>Random</span>
      </label>
    </div>
    <${FieldError} state=${state} field="seed" />
  </div>`;
}

function InitImage({ state }) {
  const { init, values } = state.create;
  const pick = () => document.getElementById("create-init-file")?.click();
  return html`<div class="field init-field">
    <span class="field-label" id="create-init-label">Init image (image to image)</span>
    <div class="init-zone" data-has-image=${init ? "true" : "false"}>
      ${init
        ? html`<img id="create-init-preview" class="init-preview" src=${init.url} alt=${`Init image: ${init.name}`} />
          <span class="init-name">${init.name}</span>
          <button type="button" class="text-button" id="create-init-clear" onClick=${() => clearInitImage()}>Remove</button>`
        : html`<span class="muted">Drop an image here, or</span>`}
      <button type="button" class="chip-button" id="create-init" onClick=${pick} aria-labelledby="create-init-label create-init"
          ...${describe(state, "init_image")}>${init ? "Change…" : "Pick an image…"}</button>
      <input id="create-init-file" type="file" accept="image/png,image/jpeg,image/webp,image/*" hidden
        aria-label="Init image file" onChange=${(e) => {
          const file = e.currentTarget.files && e.currentTarget.files[0];
          e.currentTarget.value = "";
          setInitImage(file);
        }} />
    </div>
    <${FieldError} state=${state} field="init_image" />
    ${init ? html`<div class="field">
      <label for="create-strength">Strength <output for="create-strength">${Number(values.strength).toFixed(2)}</output></label>
      <input id="create-strength" name="strength" type="range" min=${STRENGTH.min} max=${STRENGTH.max} step=${STRENGTH.step}
        value=${values.strength} onInput=${(e) => setField("strength", e.currentTarget.value)} ...${describe(state, "strength", "create-strength-hint")} />
      <small id="create-strength-hint" class="field-hint">How far from the init image: low keeps it, 1.0 ignores it.</small>
      <${FieldError} state=${state} field="strength" />
    </div>` : null}
  </div>`;
}

function Problem({ state, onSignIn }) {
  const { error } = state.create;
  if (!error) return null;
  const signIn = (event) => {
    event.preventDefault();
    event.stopPropagation();
    onSignIn();
  };
  return html`<p id="create-error" class="create-error" role="alert" data-kind=${error.kind}>
    ${error.message} ${error.kind === "auth" ? html`<a href="#signin-panel" onClick=${signIn}>Sign in</a>` : null}
  </p>`;
}

function keyDown(event) {
  if (event.key === "Escape" && !event.defaultPrevented) {
    event.preventDefault();
    closeCreate();
  } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.tagName === "TEXTAREA") {
    event.preventDefault();
    submit();
  }
}

function dragOver(event) {
  if (![...(event.dataTransfer?.types || [])].includes("Files")) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
}

function drop(event) {
  const file = event.dataTransfer?.files && event.dataTransfer.files[0];
  if (!file) return;
  event.preventDefault();
  setInitImage(file);
}

function Form({ state, onSignIn }) {
  const { create, catalog, account } = state;
  const model = modelByName(create.values.model);
  const profile = (model && model.profile) || {};
  const limits = catalog.limits || {};
  const locked = !account.canCreate;
  const options = (names) => names.map((n) => ({ value: n, label: n }));
  return html`<form id="create-form" class="create-form" novalidate aria-busy=${create.busy ? "true" : undefined}
      onSubmit=${(e) => { e.preventDefault(); submit(); }}>
    ${locked ? html`<p class="create-locked-note" id="create-locked-note">
        ${account.user ? `You are signed in as a ${account.user.role}: creating images needs the creator role.`
          : html`<a href="#signin-panel" onClick=${(e) => { e.preventDefault(); e.stopPropagation(); onSignIn(); }}>Sign in to create</a> images.`}
      </p>` : null}
    <fieldset class="create-fields" disabled=${locked}>
      <legend class="visually-hidden">Image settings</legend>
      <div class="field">
        <label for="create-prompt">Prompt</label>
        <textarea id="create-prompt" name="prompt" rows="3" required maxlength=${limits.max_prompt_chars || undefined}
          placeholder="a lighthouse on a stormy cliff, oil painting" value=${create.values.prompt}
          onInput=${(e) => setField("prompt", e.currentTarget.value)} ...${describe(state, "prompt")}></textarea>
        <${FieldError} state=${state} field="prompt" />
      </div>
      <div class="field">
        <label for="create-negative">Negative prompt</label>
        <textarea id="create-negative" name="negative_prompt" rows="2" value=${create.values.negative_prompt}
          onInput=${(e) => setField("negative_prompt", e.currentTarget.value)} ...${describe(state, "negative_prompt")}></textarea>
        <${FieldError} state=${state} field="negative_prompt" />
      </div>
      ${catalog.status === "error" ? html`<p class="create-error" role="alert">Models are unavailable: ${catalog.error}</p>` : null}
      <${Select} state=${state} field="model" label="Model" onChange=${chooseModel}
        options=${catalog.models.map((m) => ({ value: m.name, label: `${m.label || m.name}${m.default ? " (default)" : ""}` }))} />
      ${profile.notes ? html`<p class="model-notes muted" id="create-model-notes">${profile.notes}</p>` : null}
      ${create.note ? html`<p class="create-note" id="create-note" role="note">${create.note}</p>` : null}
      <div class="field-row">
        <${NumberField} state=${state} field="width" label="Width" min=${limits.min_size} max=${limits.max_size} step="8" />
        <${NumberField} state=${state} field="height" label="Height" min=${limits.min_size} max=${limits.max_size} step="8" />
      </div>
      <${Sizes} state=${state} profile=${profile} />
      ${sizeFollowsInit(create) ? html`<small class="field-hint" id="create-size-hint">With an init image the size
        follows its shape (about this model's pixel count); pick or type a size to set it.</small>` : null}
      <div class="field-row">
        <${NumberField} state=${state} field="steps" label="Steps" min="1" max=${limits.max_steps} step="1"
          hint=${rangeHint(profile.steps_range)} range=${profile.steps_range} />
        <${NumberField} state=${state} field="cfg" label="CFG (guidance)" min="0" max=${limits.max_cfg} step="0.5"
          hint=${rangeHint(profile.cfg_range)} range=${profile.cfg_range} />
      </div>
      <div class="field-row">
        <${Select} state=${state} field="sampler" label="Sampler" options=${options(catalog.samplers)} />
        <${Select} state=${state} field="schedule" label="Schedule" options=${options(catalog.schedules)} />
      </div>
      <div class="field-row">
        <${Seed} state=${state} />
        <${Select} state=${state} field="count" label="Images"
          options=${countChoices().map((n) => ({ value: String(n), label: String(n) }))} />
      </div>
      <${InitImage} state=${state} />
      <details class="create-advanced">
        <summary>Advanced</summary>
        <${NumberField} state=${state} field="clip_skip" label="Clip skip" min="1" max="12" step="1"
          placeholder="model default" />
      </details>
      ${create.warnings.length ? html`<ul id="create-warnings" class="create-warnings" aria-label="Warnings">
          ${create.warnings.map((w) => html`<li>${w}</li>`)}</ul>` : null}
      <${Problem} state=${state} onSignIn=${onSignIn} />
      ${create.notice ? html`<p id="create-notice" class="create-notice" role="status">${create.notice}</p>` : null}
      <button id="create-submit" class="primary-button" type="submit" disabled=${create.busy || catalog.status !== "ready"}
          aria-busy=${create.busy ? "true" : undefined}>${create.busy ? "Queuing…" : "Create"}</button>
    </fieldset>
  </form>`;
}

/** The drawer: the form, then the caller's queue with live progress. */
export function CreatePanel({ state, onSignIn }) {
  const { create, jobs } = state;
  return html`<section id="create-panel" class="create-panel" role="dialog" aria-modal="false"
      aria-labelledby="create-title" hidden=${!create.open} data-drop-target="init-image"
      onKeyDown=${keyDown} onDragOver=${dragOver} onDrop=${drop}>
    <div class="create-head">
      <h2 id="create-title" class="create-title">Create</h2>
      <button id="create-close" class="icon-button" type="button" aria-label="Close Create (Esc)" title="Close (Esc)"
          onClick=${() => closeCreate()}>
        <svg viewBox="0 0 24 24" aria-hidden="true"><path d="M6 6l12 12M18 6L6 18"/></svg>
      </button>
    </div>
    <div class="create-scroll">
      <${Form} state=${state} onSignIn=${onSignIn} />
      <section class="create-queue" aria-labelledby="create-queue-title">
        <h3 id="create-queue-title">Your queue</h3>
        ${jobs.listError ? html`<p class="create-error">Could not list your jobs: ${jobs.listError}</p>` : null}
        ${jobs.order.length ? null : html`<p class="muted" id="create-queue-empty">No jobs yet.</p>`}
        <ul id="create-queue" class="job-list" aria-label="Your jobs">
          <${JobList} state=${state} dismissible=${true} />
        </ul>
      </section>
    </div>
  </section>`;
}
