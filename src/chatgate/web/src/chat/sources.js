// The sources panel: a grounded answer's citations (title, page, score) and each chunk's text. The chat
// API's sources do not carry the text; it is read from the collection's search (filtered to the document)
// with the question the answer was given, and matched by chunk id.
import { seg } from "../lib/api.js";
import { h } from "../lib/dom.js";

export class SourcesPanel {
  constructor({ api, panel, list, close }) {
    Object.assign(this, { api, panel, list });
    close.addEventListener("click", () => this.hide());
    panel.addEventListener("keydown", (event) => event.key === "Escape" && this.hide());
    this.opener = null;
  }

  hide() {
    this.panel.hidden = true;
    this.opener?.focus();
  }

  /** Shows `answer`'s sources and moves the focus to source `n` (or to the first). */
  show(answer, n) {
    this.opener = document.activeElement;
    this.list.replaceChildren(...answer.sources.map((s) => this.item(answer, s)));
    this.panel.hidden = false;
    const target = this.list.querySelector(`[data-index="${Number(n ?? answer.sources[0]?.index)}"]`);
    target?.focus();
    target?.scrollIntoView({ block: "nearest" });
  }

  item(answer, source) {
    const text = h("blockquote", { class: "source-text" });
    const facts = [
      source.document && source.title && source.document !== source.title ? source.document : null,
      source.page != null ? `page ${source.page}` : null,
      Number.isFinite(source.score) ? `score ${source.score.toFixed(3)}` : null,
    ].filter(Boolean);
    const item = h(
      "li",
      { class: "source", tabindex: "-1", value: source.index, dataset: { index: source.index } },
      h("h3", { class: "source-title" }, `[${source.index}] ${source.title || source.document || "Untitled"}`),
      source.headings?.length ? h("p", { class: "source-headings" }, source.headings.join(" › ")) : null,
      h("p", { class: "source-facts" }, facts.join(" · ")),
      text,
    );
    this.fill(text, answer, source);
    return item;
  }

  async fill(el, answer, source) {
    if (typeof source.text !== "string") {
      el.textContent = "Loading the passage…";
      source.text = await this.passage(answer.question, source).catch(() => null);
    }
    el.textContent = source.text ?? "The passage's text is not available (the document may have changed).";
  }

  async passage(question, source) {
    if (!source.collection_id || !source.document_id || !question) return null;
    const found = await this.api.post(`/api/v1/collections/${seg(source.collection_id)}/search`, {
      query: question,
      top_k: 50,
      filters: { documents: [source.document_id] },
    });
    return found.data?.find((hit) => hit.chunk_id === source.chunk_id)?.text ?? null;
  }
}
