// clipboard.js — copy text with navigator.clipboard, falling back to a hidden textarea + execCommand.

import { announce } from "./dom.js";

function copyWithTextarea(text) {
  // Inside a modal <dialog> the rest of the document is inert, so the textarea must live in the dialog.
  const host = document.querySelector("dialog[open]") || document.body;
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.setAttribute("aria-hidden", "true");
  Object.assign(area.style, { position: "fixed", top: "0", left: "0", opacity: "0", pointerEvents: "none" });
  host.append(area);
  area.select();
  area.setSelectionRange(0, text.length);
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } finally {
    area.remove();
  }
  if (!ok) throw new Error("copy command was refused");
}

export async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return;
    } catch {
      // permission refused or document not focused: try the old way below
    }
  }
  copyWithTextarea(text);
}

/**
 * Make `button` copy `getText()` and show "Copied!" on itself for a moment.
 * The button keeps its label in data-label; a disabled button (nothing to copy) does nothing.
 */
export function bindCopyButton(button, getText, what) {
  button.dataset.label = button.textContent;
  let timer = null;
  button.addEventListener("click", async () => {
    const text = getText();
    if (text == null || text === "") return;
    let message;
    try {
      await copyText(String(text));
      message = "Copied!";
      button.classList.add("copied");
      button.classList.remove("copy-failed");
    } catch {
      message = "Copy failed";
      button.classList.add("copy-failed");
    }
    button.textContent = message;
    announce(message === "Copied!" ? `${what} copied to the clipboard` : `Could not copy the ${what}`);
    clearTimeout(timer);
    timer = setTimeout(() => {
      button.textContent = button.dataset.label;
      button.classList.remove("copied", "copy-failed");
    }, 1600);
  });
}
