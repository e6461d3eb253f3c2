// keyledger dashboard: copy buttons, and revealed values that hide themselves.
// No inline scripts anywhere (the Content-Security-Policy allows only files from this server).
"use strict";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  if (!field) return;
  const status = button.parentElement.querySelector("[data-copy-status]");
  try {
    await navigator.clipboard.writeText(field.value);
    if (status) status.textContent = "Copied.";
  } catch (err) {
    field.select(); // the clipboard is off (not HTTPS, or no permission): select it for Ctrl+C
    if (status) status.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
  }
});

// A revealed value counts down, then is removed from the page (not only hidden).
function armReveals(root) {
  root.querySelectorAll("[data-hide-after]:not([data-armed])").forEach((box) => {
    box.dataset.armed = "1";
    let left = parseInt(box.dataset.hideAfter, 10);
    const counter = box.querySelector("[data-countdown]");
    const timer = setInterval(() => {
      left -= 1;
      if (counter) counter.textContent = String(Math.max(left, 0));
      if (left > 0) return;
      clearInterval(timer);
      const done = document.createElement("p");
      done.className = "hidden-note";
      done.textContent = "The value is hidden again. Reveal it again to see it (each reveal is recorded).";
      box.replaceChildren(done);
      box.removeAttribute("data-hide-after");
      box.dataset.hidden = "1";
    }, 1000);
  });
}

document.addEventListener("DOMContentLoaded", () => armReveals(document));
document.addEventListener("htmx:afterSettle", (event) => armReveals(event.target));
