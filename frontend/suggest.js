// suggest.js — the search box's suggestion list (ARIA combobox + listbox) fed by /api/suggest.

import { api } from "./api.js";
import { debounce, h, isAbort } from "./dom.js";
import { safeLevel } from "./safe.js";

const SUGGEST_MS = 150;
const MAX_SUGGESTIONS = 8;

function highlighted(text, typed) {
  const at = typed ? text.toLowerCase().indexOf(typed.toLowerCase()) : -1;
  if (at < 0) return [text];
  return [text.slice(0, at), h("mark", {}, text.slice(at, at + typed.length)), text.slice(at + typed.length)];
}

const SVG = "http://www.w3.org/2000/svg";

/**
 * The whole query a suggestion stands for: a suggestion may be a full prompt ("cyberpunk city rain") or just
 * the completion of the word being typed ("city" for "cyberpunk ci"), which replaces that last word.
 */
export function completion(typed, text) {
  const query = typed.replace(/\s+$/, "");
  const suggestion = text.trim();
  if (!suggestion || suggestion.toLowerCase().startsWith(query.trim().toLowerCase())) return suggestion;
  const match = /^(.*\s)(\S+)$/.exec(query);
  if (match && suggestion.toLowerCase().startsWith(match[2].toLowerCase())) return match[1].trimStart() + suggestion;
  return suggestion;
}

function searchIcon() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "suggestion-icon");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const circle = document.createElementNS(SVG, "circle");
  for (const [k, v] of Object.entries({ cx: "11", cy: "11", r: "6" })) circle.setAttribute(k, v);
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", "M20 20l-4.5-4.5");
  svg.append(circle, path);
  return svg;
}

export class Suggestions {
  /**
   * @param {HTMLInputElement} input the combobox
   * @param {HTMLUListElement} list the listbox
   * @param {(text: string) => void} onPick
   */
  constructor(input, list, onPick) {
    this.input = input;
    this.list = list;
    this.onPick = onPick;
    this.items = [];
    this.active = -1;
    this.controller = null;
    this.fetch = debounce((text) => this.load(text), SUGGEST_MS);

    list.addEventListener("mousedown", (event) => event.preventDefault()); // keep focus in the input
    list.addEventListener("click", (event) => {
      const option = event.target.closest("[role=option]");
      if (option) this.pick(Number(option.dataset.index));
    });
    input.addEventListener("blur", () => this.close());
  }

  get isOpen() {
    return !this.list.hidden;
  }

  /** The user typed: fetch suggestions for the new text (debounced). */
  update(text) {
    if (!text.trim()) {
      this.fetch.cancel();
      this.controller?.abort();
      this.close();
      return;
    }
    this.fetch(text);
  }

  async load(text) {
    this.controller?.abort();
    this.controller = new AbortController();
    const { signal } = this.controller;
    try {
      const result = await api.suggest(text, safeLevel(), signal);
      if (signal.aborted || this.input.value !== text || document.activeElement !== this.input) return;
      this.render((result.data || []).slice(0, MAX_SUGGESTIONS), text);
    } catch (error) {
      if (!isAbort(error)) this.close(); // suggestions are a convenience: fail quietly
    }
  }

  render(items, typed) {
    const current = typed.trim().toLowerCase();
    const seen = new Set([current]);
    this.items = [];
    for (const item of items) {
      const text = completion(typed, item.text || "");
      if (!text || seen.has(text.toLowerCase())) continue;
      seen.add(text.toLowerCase());
      this.items.push({ ...item, text });
    }
    this.active = -1;
    this.input.removeAttribute("aria-activedescendant");
    if (!this.items.length) {
      this.close();
      return;
    }
    this.list.replaceChildren(
      ...this.items.map((item, index) =>
        h(
          "li",
          { id: `suggestion-${index}`, role: "option", "aria-selected": "false", dataset: { index: String(index) } },
          searchIcon(),
          h("span", { class: "suggestion-text" }, ...highlighted(item.text, typed.trim())),
        ),
      ),
    );
    this.list.hidden = false;
    this.input.setAttribute("aria-expanded", "true");
  }

  close() {
    this.list.hidden = true;
    this.active = -1;
    this.input.setAttribute("aria-expanded", "false");
    this.input.removeAttribute("aria-activedescendant");
  }

  /** Clear any pending request (a search was submitted). */
  cancel() {
    this.fetch.cancel();
    this.controller?.abort();
    this.close();
  }

  move(delta) {
    if (!this.isOpen || !this.items.length) return false;
    const count = this.items.length;
    this.active = this.active < 0 ? (delta > 0 ? 0 : count - 1) : (this.active + delta + count) % count;
    for (const option of this.list.children) {
      const on = Number(option.dataset.index) === this.active;
      option.setAttribute("aria-selected", String(on));
      if (on) option.scrollIntoView({ block: "nearest" });
    }
    this.input.setAttribute("aria-activedescendant", `suggestion-${this.active}`);
    return true;
  }

  pick(index = this.active) {
    const item = this.items[index];
    if (!item) return false;
    this.input.value = item.text;
    this.cancel();
    this.onPick(item.text);
    return true;
  }

  /** Keyboard handling for the input; returns true when the key was used. */
  handleKey(event) {
    if (event.key === "ArrowDown") return this.move(1);
    if (event.key === "ArrowUp") return this.move(-1);
    if (event.key === "Enter" && this.active >= 0) return this.pick();
    if (event.key === "Escape" && this.isOpen) {
      this.close();
      return true;
    }
    return false;
  }
}
