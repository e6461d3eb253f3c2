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

// Take a revealed value out of the page (not only out of sight), and keep the keyboard focus in place.
function hideValue(box) {
  const hadFocus = box.contains(document.activeElement);
  const done = document.createElement("p");
  done.className = "hidden-note";
  done.tabIndex = -1;
  done.setAttribute("role", "status");
  done.textContent = "The value is hidden again. Reveal it again to see it (each reveal is recorded).";
  box.replaceChildren(done);
  box.removeAttribute("data-hide-after");
  box.dataset.hidden = "1";
  if (hadFocus) done.focus();
}

// A revealed value counts down, can be given 30 s more or hidden at once, then is removed.
function armReveals(root) {
  root.querySelectorAll("[data-hide-after]:not([data-armed])").forEach((box) => {
    box.dataset.armed = "1";
    const seconds = parseInt(box.dataset.hideAfter, 10);
    let left = seconds;
    const counter = box.querySelector("[data-countdown]");
    const timer = setInterval(() => {
      left -= 1;
      if (counter) counter.textContent = String(Math.max(left, 0));
      if (left > 0) return;
      clearInterval(timer);
      hideValue(box);
    }, 1000);
    box.querySelector("[data-extend]")?.addEventListener("click", () => {
      left += seconds;
      if (counter) counter.textContent = String(left);
    });
    box.querySelector("[data-hide-now]")?.addEventListener("click", () => {
      clearInterval(timer);
      hideValue(box);
    });
  });
}

document.addEventListener("DOMContentLoaded", () => armReveals(document));
document.addEventListener("htmx:afterSettle", (event) => armReveals(event.target));

// "Connect an app": choosing a provider fills in its URLs and default scopes. Only fields that are empty or
// still hold another provider's values change: never what someone typed.
document.addEventListener("change", (event) => {
  const select = event.target.closest("select[data-presets]");
  if (!select || !select.form) return;
  const chosen = select.selectedOptions[0];
  const fields = [["authorization_url", "authorizationUrl"], ["token_url", "tokenUrl"], ["scopes", "scopes"]];
  for (const [name, key] of fields) {
    const input = select.form.elements.namedItem(name);
    if (!input) continue;
    const presetValues = [...select.options].map((option) => option.dataset[key]).filter(Boolean);
    if (input.value === "" || presetValues.includes(input.value)) {
      input.value = (chosen && chosen.dataset[key]) || "";
    }
  }
});
