// One answer as it streams in: the chat API's events applied one by one (apply), so the renderer can be
// driven by a real stream or by any list of events. Events: {type: "tool", step, name, arguments} (a
// tool-loop step, shown as a "searched: ..." line), {type: "tool_result", step, name, sources, outcome,
// reason} (that step done: how many sources it found, or why it failed), {type: "delta", content}, {type: "done", response,
// session_id, cached, sources, usage}.
import { h } from "../lib/dom.js";
import { formatNumber } from "../lib/format.js";
import { renderMarkdown } from "../lib/markdown.js";

let firstDelta = true; // the page's first streamed character is marked for the benchmark (bench/web.py)

/** A tool step as a person reads it: `searched: "query" in collection`, else `name: arguments`. */
export function describeStep(event) {
  const args = event.arguments && typeof event.arguments === "object" ? event.arguments : {};
  if (event.name === "search_documents") {
    const where = args.collection ? ` in ${Array.isArray(args.collection) ? args.collection.join(", ") : args.collection}` : "";
    return `searched: “${args.query ?? ""}”${where}`;
  }
  return `${event.name ?? "tool"}: ${JSON.stringify(args)}`;
}

export class AnswerView {
  constructor({ question = "", onCite = () => {}, text = "" } = {}) {
    this.question = question;
    this.onCite = onCite;
    this.text = text;
    this.sources = [];
    this.pending = false;
    this.steps = h("ul", { class: "steps", "aria-label": "Steps" });
    this.steps.hidden = true;
    this.body = h("div", { class: "msg-body markdown" });
    this.meta = h("div", { class: "msg-meta" });
    this.status = h("p", { class: "msg-status", role: "status" });
    this.status.hidden = true;
    this.el = h(
      "article",
      { class: "msg assistant", "aria-label": "Answer", dataset: { state: text ? "done" : "streaming" } },
      this.steps,
      this.body,
      this.status,
      this.meta,
    );
    if (text) this.render();
  }

  apply(event) {
    switch (event?.type) {
      case "tool":
        this.steps.hidden = false;
        this.steps.append(
          h("li", { class: "step", dataset: { step: event.step ?? "", name: event.name ?? "", state: "running" } }, describeStep(event)),
        );
        break;
      case "tool_result": {
        // the first of this step's calls to that tool still running
        const item = [...this.steps.children].find(
          (li) => li.dataset.state === "running" && li.dataset.step === String(event.step ?? "") && li.dataset.name === (event.name ?? ""),
        );
        if (!item) break;
        const failed = event.outcome === "error";
        item.dataset.state = failed ? "failed" : "done";
        const found = typeof event.sources === "number" && event.name === "search_documents" ? ` · ${event.sources} found` : "";
        item.append(failed ? ` · failed (${event.reason ?? "error"})` : found);
        break;
      }
      case "delta":
        if (typeof event.content !== "string" || !event.content) break;
        if (firstDelta) {
          firstDelta = false;
          performance.mark("chatgate:first-delta");
        }
        this.text += event.content;
        this.schedule();
        break;
      case "done":
        if (typeof event.response === "string") this.text = event.response;
        this.sources = Array.isArray(event.sources) ? event.sources : [];
        this.finish(event);
        break;
      default:
        break; // an event this page does not know yet: ignored
    }
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  render() {
    this.body.replaceChildren(renderMarkdown(this.text, { sources: this.sources, onCite: (n) => this.onCite(this, n) }));
  }

  finish(event) {
    this.render();
    this.el.dataset.state = "done";
    const parts = [];
    if (event.cached) parts.push(h("span", { class: "badge" }, "cached"));
    const usage = event.usage;
    if (usage && Number.isFinite(usage.total_tokens)) {
      parts.push(h("span", {}, `${formatNumber(usage.prompt_tokens)} + ${formatNumber(usage.completion_tokens)} tokens`));
    }
    if (this.sources.length) {
      const label = this.sources.length === 1 ? "1 source" : `${this.sources.length} sources`;
      parts.push(h("button", { type: "button", class: "link sources-button", onclick: () => this.onCite(this, null) }, label));
    }
    this.meta.replaceChildren(...parts);
  }

  end(state, message) {
    this.render();
    this.el.dataset.state = state;
    this.status.hidden = false;
    this.status.textContent = message;
    this.status.classList.toggle("error", state === "error");
  }
}

export function userMessage(text) {
  return h("article", { class: "msg user", "aria-label": "You" }, h("div", { class: "msg-body" }, text));
}
