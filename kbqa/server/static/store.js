// The list of knowledge bases, shared by the chat and manage views: whoever changes it reloads
// it here, and both views hear about the new list.

import { api } from "./api.js";

const listeners = [];
let latest = null; // null until the first load

/** Call fn(kbs) with every new list (and now, if one was loaded already). */
export function onKbs(fn) {
  listeners.push(fn);
  if (latest) fn(latest);
}

/** Fetch the list again and tell every view; rejects with the ApiError on failure. */
export async function reloadKbs() {
  const { kbs } = await api.listKbs();
  latest = kbs;
  for (const fn of listeners) fn(latest);
  return latest;
}
