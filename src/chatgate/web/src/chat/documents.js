// The user's own documents: their private collection "My documents" (made on the first upload), uploads
// with the job's progress and each failed file's reason, the list, and deleting.
import { seg } from "../lib/api.js";
import { $, confirmingButton, h } from "../lib/dom.js";
import { formatBytes, formatNumber } from "../lib/format.js";

export const COLLECTION = "My documents";
const POLL_MS = 500;

export class Documents {
  constructor({ api, dialog }) {
    this.api = api;
    this.dialog = dialog;
    this.collection = null;
    this.rows = $("#document-rows", dialog);
    this.empty = $("#documents-empty", dialog);
    this.job = $("#upload-job", dialog);
    this.files = $("#upload-files", dialog);
    this.button = $("#upload-button", dialog);
    $("#close-documents", dialog).addEventListener("click", () => dialog.close());
    $("#upload-form", dialog).addEventListener("submit", (event) => {
      event.preventDefault();
      this.upload();
    });
  }

  async open() {
    this.dialog.showModal();
    try {
      this.collection = await this.find();
      await this.refresh();
    } catch (err) {
      this.message(err.status === 404 ? "Documents are not enabled on this gateway." : err.message, true);
    }
  }

  /** The caller's private "My documents" (only its owner, or an admin, can see a private collection). */
  async find() {
    const body = await this.api.get("/api/v1/collections");
    const own = (body.data ?? []).filter((c) => c.visibility === "private" && c.name === COLLECTION);
    return own[0] ?? null;
  }

  async ensure() {
    if (this.collection) return this.collection;
    try {
      this.collection = await this.api.post("/api/v1/collections", { name: COLLECTION, visibility: "private" });
    } catch (err) {
      if (err.status !== 409) throw err;
      this.collection = await this.find(); // made meanwhile (another tab)
    }
    return this.collection;
  }

  async refresh() {
    if (!this.collection) {
      this.draw([]);
      return;
    }
    const body = await this.api.get(`/api/v1/collections/${seg(this.collection.id)}/documents`);
    this.draw(body.data ?? []);
  }

  draw(documents) {
    this.empty.hidden = documents.length > 0;
    this.rows.replaceChildren(
      ...documents.map((d) =>
        h(
          "tr",
          { dataset: { document: d.id, status: d.status } },
          h("th", { scope: "row" }, d.title && d.title !== d.source ? `${d.title} (${d.source})` : d.source),
          h("td", {}, h("span", { class: `status status-${d.status}` }, d.status), d.error ? h("span", { class: "reason" }, ` ${d.error}`) : null),
          h("td", {}, formatNumber(d.chunks)),
          h("td", {}, formatBytes(d.size_bytes)),
          h(
            "td",
            {},
            confirmingButton("Delete", "Delete?", { class: "small", "aria-label": `Delete ${d.source}` }, async () => {
              await this.api.delete(`/api/v1/collections/${seg(this.collection.id)}/documents/${seg(d.id)}`);
              await this.refresh();
            }),
          ),
        ),
      ),
    );
  }

  message(text, error = false) {
    this.job.replaceChildren(h("p", { class: error ? "error" : "hint" }, text));
  }

  async upload() {
    const files = [...this.files.files];
    if (!files.length) {
      this.message("Choose one or more files first.", true);
      this.files.focus();
      return;
    }
    this.button.disabled = true;
    try {
      const collection = await this.ensure();
      const form = new FormData();
      for (const file of files) form.append("files", file, file.name);
      const queued = await this.api.json("POST", `/api/v1/collections/${seg(collection.id)}/documents`, { body: form });
      this.files.value = "";
      await this.follow(queued.job_id);
    } catch (err) {
      this.message(`The upload failed: ${err.message}`, true);
    } finally {
      this.button.disabled = false;
    }
  }

  /** Polls the job until it is done or failed, drawing its progress. */
  async follow(jobId) {
    for (;;) {
      const job = await this.api.get(`/api/v1/jobs/${seg(jobId)}`);
      this.drawJob(job);
      if (job.status === "done" || job.status === "failed") break;
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
    await this.refresh();
  }

  drawJob(job) {
    const processed = job.added + job.unchanged + job.updated + job.failed;
    const words = { queued: "Queued", processing: "Indexing", done: "Done", failed: "Failed" };
    const counts = `${processed} of ${job.total} files: ${job.added} added, ${job.updated} updated, ${job.unchanged} unchanged, ${job.failed} failed`;
    const failures = Object.entries(job.failures ?? {});
    this.job.replaceChildren(
      h(
        "div",
        { class: "job-status", dataset: { status: job.status } },
        h("strong", {}, `${words[job.status] ?? job.status}. `),
        counts,
        job.error ? h("span", { class: "error" }, ` ${job.error}`) : null,
      ),
      h("progress", { max: Math.max(job.total, 1), value: processed, "aria-label": "Upload progress" }),
      failures.length
        ? h(
            "ul",
            { class: "failures", "aria-label": "Files that could not be indexed" },
            failures.map(([file, reason]) => h("li", {}, h("strong", {}, file), `: ${reason}`)),
          )
        : null,
    );
  }
}
