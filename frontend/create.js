// create.js — the Create panel's state and actions: the form's values, the model profiles (GET /api/models),
// Remix, and POST /api/generations with its warnings and errors. create-view.js draws it.

import { api } from "./api.js";
import { announce } from "./dom.js";
import { loadMyJobs, queueGeneration } from "./jobs.js";
import { store, update, whenRendered } from "./store.js";

/** Fields a model's profile fills, until the person edits them. */
const PROFILE_FIELDS = ["width", "height", "steps", "cfg", "sampler", "schedule"];
/** The request fields the API may name in errors[].loc, and the form control that shows each. */
export const FIELD_IDS = {
  prompt: "create-prompt", negative_prompt: "create-negative", model: "create-model", width: "create-width",
  height: "create-height", steps: "create-steps", cfg: "create-cfg", sampler: "create-sampler",
  schedule: "create-schedule", seed: "create-seed", count: "create-count",
  clip_skip: "create-clip-skip", init_image: "create-init", strength: "create-strength",
};
export const STRENGTH = { min: 0.05, max: 1, step: 0.05, initial: "0.6" };
const MAX_COUNT = 4;
const MAX_SEED = 2 ** 32 - 1;

function blankForm() {
  return {
    open: false,
    values: {
      prompt: "", negative_prompt: "", model: "", width: "", height: "", steps: "", cfg: "", sampler: "",
      schedule: "", seed: "", count: "1", clip_skip: "", strength: STRENGTH.initial,
    },
    edited: {}, // field -> true once the person (or Remix) set it: a new model's profile leaves it alone
    sizePicked: false, // one of the model's recommended sizes was clicked (until the model changes)
    randomSeed: true,
    init: null, // {file, url, name} for image-to-image
    busy: false,
    fieldErrors: {}, // request field -> message (a 422's errors[].loc)
    error: null, // {kind: "auth"|"role"|"quota"|"other", message}
    warnings: [], // the last 201's warnings
    notice: "", // what the last submit did ("Queued …")
    note: "", // a Remix note (the image's model is not offered here)
  };
}

update({ create: blankForm() });

function form() {
  return store.state.create;
}

function setForm(recipe) {
  update((state) => ({ create: { ...state.create, ...(typeof recipe === "function" ? recipe(state.create) : recipe) } }));
}

export function modelByName(name) {
  return store.state.catalog.models.find((m) => m.name === name) || null;
}

function defaultModel(models) {
  return models.find((m) => m.default) || models[0] || null;
}

/** The values of `model`'s profile for the fields the person has not edited. */
function profileValues(model, edited) {
  const profile = (model && model.profile) || {};
  const values = {};
  for (const field of PROFILE_FIELDS) {
    if (!edited[field] && profile[field] !== undefined && profile[field] !== null) values[field] = String(profile[field]);
  }
  return values;
}

let catalogLoad = null;

/** GET /api/models once (again after a failure); picks the default model when none is chosen yet. */
export function loadCatalog() {
  const { catalog } = store.state;
  if (catalog.status === "ready") return Promise.resolve();
  if (catalogLoad) return catalogLoad;
  update((state) => ({ catalog: { ...state.catalog, status: "loading", error: "" } }));
  catalogLoad = api.models().then(
    (body) => {
      const models = (body && body.data) || [];
      update({ catalog: { status: "ready", models, samplers: body.samplers || [], schedules: body.schedules || [],
        limits: body.limits || {}, error: "" } });
      const chosen = modelByName(form().values.model) || defaultModel(models);
      if (chosen) {
        setForm((f) => ({ values: { ...f.values, model: chosen.name, ...profileValues(chosen, f.edited) } }));
      }
    },
    (error) => {
      update((state) => ({ catalog: { ...state.catalog, status: "error", error: error.detail || error.message } }));
    },
  ).finally(() => {
    catalogLoad = null;
  });
  return catalogLoad;
}

export function countChoices() {
  const max = Number(store.state.catalog.limits.max_count) || MAX_COUNT;
  return Array.from({ length: Math.max(1, Math.min(MAX_COUNT, max)) }, (_, i) => i + 1);
}

// ---------------------------------------------------------------- opening and closing

export function openCreate({ focus = true } = {}) {
  const wasOpen = form().open;
  setForm({ open: true });
  loadCatalog();
  if (!wasOpen && store.state.account.user) loadMyJobs(); // anonymous callers have no list
  if (focus) whenRendered(() => document.getElementById("create-prompt")?.focus());
}

export function closeCreate({ focus = true } = {}) {
  if (!form().open) return;
  setForm({ open: false });
  if (focus) whenRendered(() => document.getElementById("create-toggle")?.focus());
}

export function toggleCreate() {
  if (form().open) closeCreate();
  else openCreate();
}

// ---------------------------------------------------------------- editing

function withoutError(errors, ...fields) {
  const next = { ...errors };
  for (const field of fields) delete next[field];
  return next;
}

/** The person typed into or chose `field`. */
export function setField(field, value) {
  setForm((f) => ({
    values: { ...f.values, [field]: value },
    edited: { ...f.edited, [field]: true },
    fieldErrors: withoutError(f.fieldErrors, field),
  }));
}

/** A new model: its profile refills what the person has not edited. */
export function chooseModel(name) {
  const model = modelByName(name);
  setForm((f) => ({
    values: { ...f.values, model: name, ...profileValues(model, f.edited) },
    fieldErrors: withoutError(f.fieldErrors, "model"),
    sizePicked: false,
    note: "",
  }));
}

/** One of the model's recommended sizes (not an edit of the person's own: a new model's profile still applies). */
export function chooseSize(width, height) {
  setForm((f) => ({
    values: { ...f.values, width: String(width), height: String(height) },
    edited: { ...f.edited, width: false, height: false },
    sizePicked: true,
    fieldErrors: withoutError(f.fieldErrors, "width", "height"),
  }));
}

function randomSeedValue() {
  const words = new Uint32Array(1);
  crypto.getRandomValues(words);
  return String(words[0] % MAX_SEED);
}

/** Random seed on, or locked to a number (the current one, or a fresh random one to start from). */
export function setRandomSeed(random) {
  setForm((f) => ({
    randomSeed: random,
    values: { ...f.values, seed: random || f.values.seed !== "" ? f.values.seed : randomSeedValue() },
    fieldErrors: withoutError(f.fieldErrors, "seed"),
  }));
}

export function setInitImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    setForm((f) => ({ fieldErrors: { ...f.fieldErrors, init_image: `“${file.name}” is not an image (${file.type}). Use a PNG, JPEG or WebP file.` } }));
    return;
  }
  const old = form().init;
  if (old) URL.revokeObjectURL(old.url);
  setForm((f) => ({
    init: { file, url: URL.createObjectURL(file), name: file.name || "image" },
    fieldErrors: withoutError(f.fieldErrors, "init_image", "strength"),
  }));
  announce(`Init image: ${file.name || "image"}`);
}

export function clearInitImage() {
  const old = form().init;
  if (old) URL.revokeObjectURL(old.url);
  setForm((f) => ({ init: null, fieldErrors: withoutError(f.fieldErrors, "init_image", "strength") }));
}

// ---------------------------------------------------------------- Remix

/** A model's name without folders or a checkpoint suffix: "/models/dreamshaper_8.safetensors" -> "dreamshaper_8". */
function stem(text) {
  return String(text).split(/[\\/]/).pop().replace(/\.(safetensors|ckpt|pt|pth|bin)$/i, "").toLowerCase();
}

/** The offered model an image was made with: its generation record's spec ("tiny", a hub id, a path) or name,
 * or the model name its metadata carries (A1111's "Model: ..."), matched whole, then without folders/suffix. */
function findModel(item) {
  const made = (item.generation && item.generation.model) || {};
  const wanted = [made.spec, made.name, item.model].filter(Boolean).map((w) => String(w).toLowerCase());
  const { models } = store.state.catalog;
  for (const w of wanted) {
    const found = models.find((m) => String(m.name).toLowerCase() === w);
    if (found) return found;
  }
  for (const w of wanted) {
    const found = models.find((m) => stem(m.name) === stem(w));
    if (found) return found;
  }
  return null;
}

/** Open Create with an image's settings: its prompt, negative prompt, seed (locked), steps, cfg, sampler, ... */
export async function remix(item) {
  openCreate({ focus: false });
  await loadCatalog();
  const { catalog } = store.state;
  const made = findModel(item);
  const model = made || modelByName(form().values.model) || defaultModel(catalog.models);
  const values = { prompt: item.prompt || "", negative_prompt: item.negative_prompt || "" };
  const edited = { prompt: true, negative_prompt: true };
  const take = (field, value, known = null) => {
    if (value === null || value === undefined || value === "") return;
    if (known && known.length && !known.includes(value)) return; // not offered here: the profile's stays
    values[field] = String(value);
    edited[field] = true;
  };
  take("width", item.width);
  take("height", item.height);
  take("steps", item.steps);
  take("cfg", item.cfg);
  take("sampler", item.sampler, catalog.samplers);
  // A record keeps "Automatic" as no schedule: the generation record says it, or A1111's default is meant.
  const schedulerRecord = (item.generation && item.generation.scheduler) || {};
  take("schedule", schedulerRecord.schedule || item.scheduler || "Automatic", catalog.schedules);
  values.clip_skip = item.clip_skip ? String(item.clip_skip) : "";
  const hasSeed = item.seed !== null && item.seed !== undefined;
  let note = "";
  if (item.model && model && !made) {
    note = `This image was made with “${item.model}”, which this server does not offer: ${model.label || model.name} is used instead.`;
  } else if (!item.model && model) {
    note = `The image does not record its model: ${model.label || model.name} is used.`;
  }
  if (item.init_image_sha256 || item.denoising_strength != null) {
    note = `${note} It was made from an init image, which Remix does not bring along: add one to make it again.`.trim();
  }
  setForm((f) => {
    const base = { ...f.values, ...(model ? { model: model.name, ...profileValues(model, edited) } : {}) };
    return {
      open: true,
      values: { ...base, ...values, seed: hasSeed ? String(item.seed) : f.values.seed, count: "1" },
      edited: { ...edited },
      randomSeed: !hasSeed,
      fieldErrors: {},
      error: null,
      warnings: [],
      notice: "",
      note,
    };
  });
  whenRendered(() => document.getElementById("create-prompt")?.focus());
}

// ---------------------------------------------------------------- submitting

function number(value) {
  const text = String(value).trim();
  if (text === "") return undefined;
  const parsed = Number(text);
  return Number.isFinite(parsed) ? parsed : text; // the API names what is wrong with a non-number
}

/** With an init image and no size set by the person, the server takes the init image's shape. */
export function sizeFollowsInit(f = form()) {
  return !!f.init && !f.edited.width && !f.edited.height && !f.sizePicked;
}

/** The request: the form's values; empty fields are left out (the profile's default applies). */
export function requestFields(f = form()) {
  const v = f.values;
  const size = !sizeFollowsInit(f);
  const fields = {
    prompt: v.prompt,
    negative_prompt: v.negative_prompt.trim() ? v.negative_prompt : undefined,
    model: v.model || undefined,
    width: size ? number(v.width) : undefined,
    height: size ? number(v.height) : undefined,
    steps: number(v.steps),
    cfg: number(v.cfg),
    sampler: v.sampler || undefined,
    schedule: v.schedule || undefined,
    seed: f.randomSeed ? undefined : number(v.seed),
    count: number(v.count),
    clip_skip: number(v.clip_skip),
    strength: f.init ? number(v.strength) : undefined,
  };
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined));
}

/** errors[].loc = ["body", FIELD, ...]: the field the message belongs to, when the form has it. */
function fieldOf(loc) {
  if (!Array.isArray(loc)) return null;
  const parts = loc.filter((p) => p !== "body" && typeof p === "string").map((p) => (p === "seeds" ? "seed" : p));
  return parts.find((p) => p in FIELD_IDS) || null;
}

function errorFor(error) {
  const message = error.detail || error.message;
  const role = store.state.account.user && store.state.account.user.role;
  switch (error.status) {
    case 401: return { kind: "auth", message: "Sign in to create images." };
    case 403: return { kind: "role", message: role ? `You are signed in as a ${role}: creating images needs the creator role. ${message}` : message };
    case 429: return { kind: "quota", message: `You have reached your quota: ${message}` };
    default: return { kind: "other", message };
  }
}

export async function submit() {
  const f = form();
  if (f.busy) return;
  const fields = requestFields(f);
  setForm({ busy: true, error: null, fieldErrors: {}, warnings: [], notice: "" });
  try {
    const created = await api.generate(fields, f.init && f.init.file);
    queueGeneration(created);
    const count = created.count || 1;
    const where = created.queue_position ? ` (#${created.queue_position} in the queue)` : "";
    const notice = `Queued ${count} ${count === 1 ? "image" : "images"}${where}.`;
    setForm({ busy: false, warnings: created.warnings || [], notice });
    announce(notice);
    whenRendered(() => {
      const row = document.querySelector(`#create-queue li[data-job-id="${CSS.escape(String(created.id))}"]`);
      row?.scrollIntoView({ block: "nearest", behavior: "smooth" }); // the queue is below the form
    });
  } catch (error) {
    const fieldErrors = {};
    const rest = [];
    if (error.status === 422 || error.status === 413 || error.status === 415) {
      for (const item of error.errors) {
        const field = fieldOf(item.loc);
        if (field) fieldErrors[field] = fieldErrors[field] ? `${fieldErrors[field]}; ${item.msg}` : item.msg;
        else rest.push(item.msg);
      }
      if ((error.status === 413 || error.status === 415) && f.init && !Object.keys(fieldErrors).length) {
        fieldErrors.init_image = error.detail || error.message;
      }
    }
    const named = Object.keys(fieldErrors).length > 0;
    const problem = named && !rest.length ? null : errorFor(error);
    if (problem && named && rest.length) problem.message = rest.join("; ");
    setForm({ busy: false, fieldErrors, error: problem });
    announce(named ? "Some settings need a change" : problem.message);
    whenRendered(() => {
      const first = Object.keys(FIELD_IDS).find((field) => fieldErrors[field]);
      if (first) document.getElementById(FIELD_IDS[first])?.focus();
    });
  }
}

/** Another user signed in, or nobody: the form keeps what was typed, not the last answer's errors. */
export function accountChanged() {
  setForm({ error: null, fieldErrors: {}, notice: "", warnings: [] });
  if (form().open && store.state.account.user) loadMyJobs();
}
