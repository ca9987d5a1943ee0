// grid.js — a masonry grid of thumbnails: CSS grid rows of ROW px, each card spanning its height.
//
// Cards stay in result order in the DOM (so Tab and screen readers follow the ranking); the grid's
// sparse auto-placement puts each card in the first column with room, which fills the shortest column.
// A flagged card (safe mode) is drawn blurred with a label; the first click, Enter or Space reveals it and
// the next one opens it.

import { h, truncate } from "./dom.js";

const ROW = 4; // px; must match grid-auto-rows in app.css
const MIN_RATIO = 0.45; // height / width limits: extreme panoramas or strips are cropped a little
const MAX_RATIO = 2.2;
export const REVEAL_LABEL = "Flagged — click to reveal";

export function imageHref(id) {
  return `/image/${encodeURIComponent(id)}`;
}

function ratioOf(item) {
  const w = Number(item.width) || 1;
  const hgt = Number(item.height) || 1;
  return Math.min(MAX_RATIO, Math.max(MIN_RATIO, hgt / w));
}

function sizeAttrs(item) {
  // width/height attributes reserve the right box before the thumbnail arrives (no layout shift).
  const w = Number(item.width) || 512;
  const hgt = Number(item.height) || 512;
  return { width: w, height: hgt };
}

/** A missing thumbnail falls back to the full image once, then to a plain "no preview" card. */
function thumbFailed(event) {
  const img = event.currentTarget;
  if (img.dataset.full && img.getAttribute("src") !== img.dataset.full) {
    img.src = img.dataset.full;
    return;
  }
  img.closest(".card")?.classList.add("broken");
}

/** A card for `item`; `blurred`: hidden behind a blur and a label until revealed (the prompt too). */
export function cardFor(item, { caption = true, blurred = false } = {}) {
  const { width, height } = sizeAttrs(item);
  const alt = item.prompt ? truncate(item.prompt, 160) : `Image ${item.id}`;
  const meta = [item.model, item.sampler, item.width && item.height ? `${item.width}×${item.height}` : null]
    .filter(Boolean)
    .join(" · ");
  return h(
    "a",
    {
      class: blurred ? "card nsfw-blur" : "card",
      href: imageHref(item.id),
      "aria-label": blurred ? "Flagged image, blurred. Press Enter to reveal it." : null,
      dataset: { id: String(item.id), ...(item.nsfw === true ? { nsfw: "1" } : {}) },
      style: { "--ratio": String(ratioOf(item)) },
    },
    h("img", {
      src: item.thumb_url || `/thumbs/${item.id}`,
      alt: blurred ? "" : alt,
      loading: "lazy",
      decoding: "async",
      width,
      height,
      draggable: "false",
      onload: (event) => event.currentTarget.classList.add("loaded"),
      onerror: thumbFailed,
      dataset: { full: item.url || "", alt },
    }),
    blurred ? h("span", { class: "nsfw-label", "aria-hidden": "true" }, REVEAL_LABEL) : null,
    caption
      ? h(
          "span",
          { class: "card-caption", "aria-hidden": "true" },
          h("span", { class: "card-prompt" }, truncate(item.prompt || "(no prompt)", 140)),
          meta ? h("span", { class: "card-meta" }, meta) : null,
        )
      : null,
  );
}

/** Take the blur off a card drawn blurred: the image, its description and its caption show. */
export function revealCard(card) {
  if (!card.classList.contains("nsfw-blur")) return false;
  card.classList.remove("nsfw-blur");
  card.removeAttribute("aria-label");
  card.querySelector(".nsfw-label")?.remove();
  const img = card.querySelector("img");
  if (img) img.alt = img.dataset.alt || "";
  return true;
}

export class Masonry {
  /**
   * @param {HTMLElement} root the grid element (class "grid")
   * @param {{onOpen: (id: string, event: MouseEvent) => void, caption?: boolean, blur?: (item: object) => boolean,
   *          onReveal?: (id: string) => void}} options `blur`: whether a card is drawn blurred (safe mode);
   *          `onReveal`: the user revealed one
   */
  constructor(root, { onOpen, caption = true, blur = () => false, onReveal = () => {} }) {
    this.root = root;
    this.caption = caption;
    this.blur = blur;
    this.column = 0;
    this.gap = 0;
    const reveal = (card) => {
      revealCard(card);
      onReveal(card.dataset.id);
    };
    root.addEventListener("click", (event) => {
      const card = event.target.closest("a.card");
      if (!card || !root.contains(card)) return;
      if (card.classList.contains("nsfw-blur") && !event.defaultPrevented) {
        event.preventDefault(); // any click (a new tab too) only reveals a blurred card
        reveal(card);
        return;
      }
      if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) {
        return; // let the browser open a new tab or window
      }
      event.preventDefault();
      onOpen(card.dataset.id, event);
    });
    // Space reveals a blurred card too (Enter already clicks a link).
    root.addEventListener("keydown", (event) => {
      const card = event.target.closest && event.target.closest("a.card.nsfw-blur");
      if (!card || !root.contains(card) || event.key !== " " || event.metaKey || event.ctrlKey || event.altKey) return;
      event.preventDefault();
      reveal(card);
    });
    // A blurred card's middle click would open a new tab: it reveals instead.
    root.addEventListener("auxclick", (event) => {
      const card = event.target.closest("a.card.nsfw-blur");
      if (!card || !root.contains(card) || event.button !== 1) return;
      event.preventDefault();
      reveal(card);
    });
    // Column widths change only with the window (a ResizeObserver on the grid would also see its own
    // height change as cards are placed, and loop).
    let frame = 0;
    window.addEventListener("resize", () => {
      cancelAnimationFrame(frame);
      frame = requestAnimationFrame(() => this.layout());
    });
  }

  get count() {
    return this.root.childElementCount;
  }

  clear() {
    this.root.replaceChildren();
  }

  append(items) {
    const fragment = document.createDocumentFragment();
    const cards = items.map((item) => cardFor(item, { caption: this.caption, blurred: this.blur(item) }));
    fragment.append(...cards);
    this.root.append(fragment);
    this.measure();
    for (const card of cards) this.place(card);
    // Appending may add the page's scrollbar, which narrows the columns: place again if it did.
    requestAnimationFrame(() => this.layout());
    return cards;
  }

  /** Put `items` first (images just made, in a view of the newest). */
  prepend(items) {
    const cards = items.map((item) => cardFor(item, { caption: this.caption, blurred: this.blur(item) }));
    this.root.prepend(...cards);
    this.measure();
    for (const card of cards) this.place(card);
    requestAnimationFrame(() => this.layout());
    return cards;
  }

  cardById(id) {
    return this.root.querySelector(`a.card[data-id="${CSS.escape(String(id))}"]`);
  }

  /** Reveal the card of image `id`, if it is here and blurred (it was revealed elsewhere). */
  reveal(id) {
    const card = this.cardById(id);
    return card ? revealCard(card) : false;
  }

  measure() {
    const style = getComputedStyle(this.root);
    const first = style.gridTemplateColumns.split(" ")[0];
    this.column = parseFloat(first) || this.root.clientWidth;
    this.gap = parseFloat(style.columnGap) || 0;
  }

  place(card) {
    const ratio = parseFloat(card.style.getPropertyValue("--ratio")) || 1;
    const span = Math.max(1, Math.ceil((this.column * ratio + this.gap) / ROW));
    card.style.gridRowEnd = `span ${span}`;
  }

  layout() {
    if (!this.root.isConnected || this.root.clientWidth === 0) return;
    const before = this.column;
    this.measure();
    if (this.column === before) return;
    for (const card of this.root.children) this.place(card);
  }
}
