// The one way this page builds elements: strings only ever become text nodes or attribute
// values, never markup. Nothing here (or anywhere in the page) assigns innerHTML.

/**
 * h("button", {class: "x", type: "button", onclick: fn}, "text", childNode) → HTMLElement.
 * Attributes named on* must be functions (they become listeners, never inline handlers).
 */
export function h(tag, attributes = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${name} must be a function`);
      el.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  el.append(...children.flat().filter((c) => c !== undefined && c !== null && c !== false));
  return el;
}

export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el;
}

let uniqueCounter = 0;

/** An id unique within the page, for aria-controls and label wiring. */
export function uniqueId(prefix) {
  uniqueCounter += 1;
  return `${prefix}-${uniqueCounter}`;
}
