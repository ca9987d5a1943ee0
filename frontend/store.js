// store.js — the page's one state object for what Preact renders (account, safe mode, Create form, job queue).
//
// `update(recipe)` replaces parts of the state (recipe: a patch object, or a function of the state returning one)
// and re-renders every mounted view once, on the next microtask. Views are functions of the state: they read it,
// and change it only through the actions modules export. The search grid keeps its own DOM (grid.js).

import { html, render } from "./preact-htm.js";

const listeners = new Set();
const afterRender = [];
let scheduled = false;

export const store = {
  state: {
    /** /api/auth/me, digested: who is signed in and what they may do. */
    account: { known: false, user: null, anonymous: "read", canCreate: false },
    /** GET /api/models: {status: idle|loading|ready|error, models, samplers, schedules, limits, error}. */
    catalog: { status: "idle", models: [], samplers: [], schedules: [], limits: {}, error: "" },
    /** The Create panel (create.js owns it). */
    create: null,
    /** The job queue (jobs.js owns it): ids newest first, records by id. */
    jobs: { order: [], byId: {}, listed: false, listError: "" },
    /** Safe mode (safe.js owns it): the levels this caller may use (strict first), its default, the one in use. */
    safe: { levels: [], defaultLevel: null, level: null },
  },
};

function flush() {
  scheduled = false;
  for (const listener of listeners) listener(store.state);
  for (const fn of afterRender.splice(0)) fn();
}

/** Merge `recipe` (an object, or state => object) into the state and schedule one render. */
export function update(recipe) {
  const patch = typeof recipe === "function" ? recipe(store.state) : recipe;
  if (patch) store.state = { ...store.state, ...patch };
  if (!scheduled) {
    scheduled = true;
    queueMicrotask(flush);
  }
}

/** Run `fn` once the pending render has reached the DOM (to move the focus into what it drew). */
export function whenRendered(fn) {
  afterRender.push(fn);
  if (!scheduled) {
    scheduled = true;
    queueMicrotask(flush);
  }
}

/** Render `Component` into `element` now and after every update; `props` are passed beside `state`. */
export function mount(element, Component, props = {}) {
  const draw = (state) => render(html`<${Component} state=${state} ...${props} />`, element);
  listeners.add(draw);
  draw(store.state);
  return () => {
    listeners.delete(draw);
    render(null, element);
  };
}

/** Re-render the views now (for props that live outside the state, such as the detail view's image id). */
export function refresh() {
  update(null);
}
