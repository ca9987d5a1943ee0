// dom.js — tiny DOM helpers shared by the page's modules.

/**
 * Create an element: h("a", {href: "/x", class: "card", onclick: fn}, "text", child).
 * `style` takes an object ({"--ratio": "1.5"}), set through the CSSOM: the page's Content-Security-Policy
 * (style-src 'self') refuses style="" attributes.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style" && typeof value === "object") {
      for (const [prop, v] of Object.entries(value)) el.style.setProperty(prop, v);
    } else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** Debounce `fn` by `ms`; the returned function has .cancel() and .flush(). */
export function debounce(fn, ms) {
  let timer = null;
  let lastArgs = [];
  const wrapped = (...args) => {
    lastArgs = args;
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      fn(...lastArgs);
    }, ms);
  };
  wrapped.cancel = () => {
    clearTimeout(timer);
    timer = null;
  };
  wrapped.flush = () => {
    if (timer !== null) {
      wrapped.cancel();
      fn(...lastArgs);
    }
  };
  return wrapped;
}

/** Say something to screen readers through the page's polite live region. */
export function announce(text) {
  const region = document.getElementById("announcer");
  if (!region) return;
  region.textContent = "";
  // A fresh text node on the next frame makes repeated messages ("Copied!") be read again.
  requestAnimationFrame(() => {
    region.textContent = text;
  });
}

/** True when the keyboard focus is somewhere the user types (so single-key shortcuts stay out). */
export function isTyping(target = document.activeElement) {
  if (!target) return false;
  if (target.isContentEditable) return true;
  const tag = target.tagName;
  if (tag === "TEXTAREA" || tag === "SELECT") return true;
  if (tag !== "INPUT") return false;
  return !["button", "checkbox", "radio", "file", "submit", "reset", "range", "color"].includes(target.type);
}

export function isAbort(error) {
  return error && error.name === "AbortError";
}

/** "a long prompt…" cut at a word boundary near `max` characters. */
export function truncate(text, max) {
  if (!text || text.length <= max) return text || "";
  const cut = text.slice(0, max);
  const space = cut.lastIndexOf(" ");
  return (space > max * 0.6 ? cut.slice(0, space) : cut).trimEnd() + "…";
}
