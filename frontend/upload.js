// upload.js — search by image: drop a file anywhere on the page, or pick one with the file button.

import { $ } from "./dom.js";

function hasFiles(event) {
  const types = event.dataTransfer && event.dataTransfer.types;
  return !!types && Array.from(types).includes("Files");
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
    event.preventDefault();
    depth += 1;
    overlay.hidden = false;
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
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
    event.preventDefault();
    hide();
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
