// safe.js — safe mode: the level every search is sent at (strict | moderate | off), and which images the page blurs.
//
// The levels a caller may use and its default come with /api/auth/me (`safe`). The level picked in the switch is
// remembered in localStorage and clamped to what the caller may use whenever that changes (sign in, sign out): an
// "off" remembered by an admin becomes "moderate" for the anonymous page, and "off" again once signed back in.
// Flagged images (`nsfw: true`) are blurred at every level but off (strict returns none); a click reveals one for
// the rest of the page's life, or until the level changes.

import { html } from "./preact-htm.js";
import { store, update } from "./store.js";

/** Every level, from the one that shows least to the one that shows everything (the API's order). */
export const LEVELS = ["strict", "moderate", "off"];
const LABELS = { strict: "Strict", moderate: "Moderate", off: "Off" };
const HINTS = {
  strict: "Strict: flagged images are left out",
  moderate: "Moderate: flagged images are blurred until clicked",
  off: "Off: nothing is hidden or blurred",
};
const STORAGE_KEY = "promptdex.safe";

const revealed = new Set(); // ids (strings) the user chose to see at the current level

function remembered() {
  try {
    return window.localStorage.getItem(STORAGE_KEY);
  } catch {
    return null; // storage disabled: the level lasts as long as the page
  }
}

function remember(level) {
  try {
    window.localStorage.setItem(STORAGE_KEY, level);
  } catch {
    // storage disabled or full: the choice still holds for this page
  }
}

/**
 * The level to use among `levels` (strict first): `wanted` (the remembered choice) when allowed, else the most
 * permissive allowed level that is not more permissive than it; `fallback` (the caller's default) when nothing
 * was chosen.
 */
export function clampLevel(wanted, levels, fallback) {
  if (!levels.length) return null;
  if (!LEVELS.includes(wanted)) return levels.includes(fallback) ? fallback : levels[0];
  const rank = LEVELS.indexOf(wanted);
  const within = levels.filter((level) => LEVELS.indexOf(level) <= rank);
  return within.length ? within[within.length - 1] : levels[0];
}

/** The level searches are sent at (null: the API has no safe mode, or /api/auth/me did not answer). */
export function safeLevel() {
  return store.state.safe.level;
}

function setLevel(level) {
  if (level === store.state.safe.level) return false;
  revealed.clear(); // a new level is a new decision about what to show
  update({ safe: { ...store.state.safe, level } });
  return true;
}

/** Take the caller's safe-mode access from /api/auth/me (`me.safe`); true when the level in use changed. */
export function setSafeAccess(access) {
  const levels = access && Array.isArray(access.levels) ? LEVELS.filter((level) => access.levels.includes(level)) : [];
  const defaultLevel = access && LEVELS.includes(access.default) ? access.default : null;
  const level = clampLevel(remembered(), levels, defaultLevel);
  const changed = level !== store.state.safe.level;
  if (changed) revealed.clear();
  update({ safe: { levels, defaultLevel, level } });
  return changed;
}

/** The user picked `level` in the switch: remember it; true when it changed (the search must run again). */
export function chooseSafeLevel(level) {
  if (!store.state.safe.levels.includes(level)) return false;
  remember(level);
  return setLevel(level);
}

/** Whether the page hides `item` behind a blur now: flagged (or not scored yet), not revealed, level not off. */
export function blurs(item) {
  return !!item && item.nsfw === true && store.state.safe.level !== "off" && !revealed.has(String(item.id));
}

/** The user revealed image `id`: it stays unblurred (grids and the detail view) until the level changes. */
export function rememberReveal(id) {
  revealed.add(String(id));
}

/** The switch in the toolbar: a select of exactly the caller's levels (nothing when the API offers none). */
export function SafeSwitch({ state, onChange }) {
  const { levels, level } = state.safe;
  if (!levels.length || !level) return null;
  const pick = (event) => {
    if (chooseSafeLevel(event.currentTarget.value)) onChange(event.currentTarget.value);
  };
  return html`
    <label class="sort safe-switch" title=${HINTS[level]}>
      <span class="visually-hidden">Safe mode</span>
      <select id="safe" name="safe" aria-label="Safe mode" aria-describedby="safe-hint" value=${level} onChange=${pick}>
        ${levels.map((value) => html`<option value=${value} selected=${value === level}>Safe: ${LABELS[value]}</option>`)}
      </select>
      <span id="safe-hint" class="visually-hidden">${HINTS[level]}</span>
    </label>`;
}
