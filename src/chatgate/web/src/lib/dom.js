// Small DOM helpers. Text always goes in as text (textContent), never as HTML: the only HTML the pages
// insert is DOMPurify's output (lib/markdown.js). No style attributes either: the CSP forbids them.

/** An element: h("button", {type: "button", class: "x", onclick: fn}, "Label", child, ...). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value == null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child != null && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** A button that asks once more before it acts ("Delete" -> "Delete? Click again"), without a dialog. */
export function confirmingButton(label, confirmLabel, props, action) {
  let armed = null;
  const button = h("button", { type: "button", ...props }, label);
  const disarm = () => {
    clearTimeout(armed);
    armed = null;
    button.textContent = label;
    button.classList.remove("armed");
  };
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    if (!armed) {
      button.textContent = confirmLabel;
      button.classList.add("armed");
      armed = setTimeout(disarm, 5000);
      return;
    }
    disarm();
    button.disabled = true;
    try {
      await action();
    } finally {
      button.disabled = false;
    }
  });
  button.addEventListener("blur", () => armed && disarm());
  return button;
}

/** Shows `el` (removes `hidden`) or hides it. */
export function show(el, visible = true) {
  el.hidden = !visible;
  return el;
}
