// upload.js — search by image: drop a file anywhere on the page, or pick one with the file button.

import { $ } from "./dom.js";

function hasFiles(event) {
  const types = event.dataTransfer && event.dataTransfer.types;
  return !!types && Array.from(types).includes("Files");
}

/** Whether the event happens over an element that takes dropped files itself (the Create panel's init image). */
function overOwnTarget(event) {
  return event.target instanceof Element && !!event.target.closest("[data-drop-target]");
}

/** Call `onFile(file)` for a dropped or picked image; shows the drop overlay while dragging. */
export function setupImageSearch(onFile) {
  const overlay = $("#drop-overlay");
  const input = $("#image-input");
  let depth = 0;

  const hide = () => {
    depth = 0;
    overlay.hidden = true;
  };

  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    if (overOwnTarget(event)) {
      hide();
      return;
    }
    event.preventDefault();
    depth += 1;
    overlay.hidden = false;
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event) || overOwnTarget(event)) return;
    event.preventDefault(); // allows the drop
    event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", (event) => {
    if (!hasFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (depth === 0) overlay.hidden = true;
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    hide();
    if (overOwnTarget(event)) return; // that element took the file
    event.preventDefault();
    const file = event.dataTransfer.files && event.dataTransfer.files[0];
    if (file) onFile(file);
  });
  window.addEventListener("blur", hide);

  $("#image-button").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    input.value = ""; // picking the same file again fires change again
    if (file) onFile(file);
  });
}
