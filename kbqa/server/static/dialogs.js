// Modal dialogs on the native <dialog> element: showModal() traps focus, makes the rest of the
// page inert and closes on Escape; focus returns to where it was when the dialog closes.

import { byId } from "./dom.js";
import { setText } from "./i18n.js";

/**
 * Ask the user to confirm a destructive action; resolves true only for the confirm button.
 * Focus starts on Cancel, so Enter alone never deletes anything.
 */
export function confirmDialog(message, confirmKey = "manage.delete") {
  const dialog = byId("confirm-dialog");
  byId("confirm-message").textContent = message;
  setText(byId("confirm-ok"), confirmKey);
  return openModal(dialog, byId("confirm-cancel")).then((value) => value === "ok");
}

/** Ask for the API key; resolves with it, or null when the user cancels. */
export function promptApiKey(refused) {
  const dialog = byId("key-dialog");
  const input = byId("key-input");
  const error = byId("key-error");
  input.value = "";
  if (refused) setText(error, "key.refused");
  else error.textContent = "";
  input.setAttribute("aria-invalid", refused ? "true" : "false");
  return openModal(dialog, input).then((value) => {
    const key = input.value.trim();
    input.value = "";
    return value === "ok" && key ? key : null;
  });
}

// Cancel buttons are type="button": a submit button first in its form would be the one that
// Enter in the key field presses.
for (const button of document.querySelectorAll("dialog [data-dismiss]")) {
  button.addEventListener("click", () => button.closest("dialog").close("cancel"));
}

/** Show `dialog` modally with focus on `initialFocus`; resolves with its returnValue on close. */
export function openModal(dialog, initialFocus) {
  return new Promise((resolve) => {
    const restore = document.activeElement;
    dialog.returnValue = "";
    dialog.addEventListener(
      "close",
      () => {
        if (restore instanceof HTMLElement && restore.isConnected) restore.focus();
        resolve(dialog.returnValue);
      },
      { once: true },
    );
    dialog.showModal();
    initialFocus.focus();
  });
}

