// The caller's own usage against their limits, from the x-ratelimit-* headers of each chat answer, and the
// 429 countdown (Retry-After) before the user may retry.
import { h } from "../lib/dom.js";
import { formatCompact, formatSeconds, parseDuration } from "../lib/format.js";

const UNITS = { requests: "requests", tokens: "tokens" };

export class UsageMeter {
  constructor(el) {
    this.el = el;
  }

  update(headers) {
    const items = [];
    for (const [unit, label] of Object.entries(UNITS)) {
      const limit = headers.get(`x-ratelimit-limit-${unit}`);
      const remaining = headers.get(`x-ratelimit-remaining-${unit}`);
      if (limit == null || remaining == null) continue;
      const reset = parseDuration(headers.get(`x-ratelimit-reset-${unit}`));
      const low = Number(remaining) <= Number(limit) * 0.1;
      items.push(
        h(
          "span",
          {
            class: `usage-item${low ? " low" : ""}`,
            dataset: { unit, limit, remaining },
            title: reset != null ? `Resets in ${formatSeconds(reset)}` : null,
          },
          `${formatCompact(Number(remaining))}/${formatCompact(Number(limit))} ${label} left`,
        ),
      );
    }
    if (items.length) this.el.replaceChildren(...items);
  }
}

/**
 * Shows `message` and counts `seconds` down in `el`; then offers a Retry button calling `onRetry`.
 * Returns a function that cancels the countdown.
 */
export function countdown(el, { message, seconds, onRetry }) {
  const left = h("span", { class: "countdown", "aria-live": "off" });
  const retry = h("button", { type: "button", class: "primary", disabled: true }, "Retry");
  el.replaceChildren(h("span", {}, message, " "), left, " ", retry);
  el.hidden = false;
  el.dataset.kind = "rate-limit";
  const until = performance.now() + Math.max(0, seconds) * 1000;
  let timer = null;
  const tick = () => {
    const remaining = (until - performance.now()) / 1000;
    if (remaining <= 0) {
      left.textContent = "You can try again now.";
      retry.disabled = false;
      el.dataset.ready = "true";
      return;
    }
    left.textContent = `Try again in ${formatSeconds(remaining)}.`;
    timer = setTimeout(tick, Math.min(1000, (remaining % 1) * 1000 || 1000));
  };
  retry.addEventListener("click", () => {
    cancel();
    onRetry();
  });
  const cancel = () => {
    clearTimeout(timer);
    el.hidden = true;
    delete el.dataset.kind;
    delete el.dataset.ready;
    el.replaceChildren();
  };
  tick();
  return cancel;
}
