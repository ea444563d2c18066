// Operations: upstreams (circuit, calls in flight) and the write queue (/admin/metrics), requests in
// flight (/admin/connections), the response cache (stats, clear), assistants (list, create, edit, delete),
// collections and ingestion jobs (/admin/collections, /admin/jobs), and the analytics export as CSV.
import { seg } from "../lib/api.js";
import { confirmingButton, h } from "../lib/dom.js";
import { formatBytes, formatNumber, formatPercent, formatSeconds, formatTime } from "../lib/format.js";
import { editAssistant } from "./assistant_form.js";
import { currentWindow } from "./overview.js";
import { table, tiles } from "./widgets.js";

export async function renderOperations(view, api) {
  const refresh = h("button", { type: "button", onclick: () => renderAgain(view, api) }, "Refresh");
  view.append(h("div", { class: "panel-head" }, h("h2", {}, "Operations"), refresh));
  const [metrics, connections, cache, assistants, collections, jobs] = await Promise.all([
    api.get("/admin/metrics"),
    api.get("/admin/connections?limit=50"),
    api.get("/admin/cache/stats"),
    api.get("/admin/assistants").catch(missing),
    api.get("/admin/collections").catch(missing),
    api.get("/admin/jobs?limit=20").catch(missing),
  ]);
  view.append(
    upstreams(metrics),
    inFlight(connections),
    cacheSection(api, view, cache),
    assistantsSection(api, view, assistants),
    collectionsSection(collections, jobs),
    exportSection(api),
  );
}

function renderAgain(view, api) {
  view.replaceChildren();
  return renderOperations(view, api);
}

const missing = (err) => {
  if (err.status === 404) return null; // documents are not enabled on this gateway
  throw err;
};

function section(key, title, ...children) {
  return h("section", { class: "ops", dataset: { section: key } }, h("h3", {}, title), ...children);
}

function upstreams(metrics) {
  const rows = Object.entries(metrics.upstreams ?? {}).map(([name, u]) => [
    name,
    h("span", { class: `status status-${u.circuit}` }, u.circuit),
    formatNumber(u.in_flight),
  ]);
  const q = metrics.queue ?? {};
  return section(
    "upstreams",
    "Upstreams",
    table("Upstreams", [["Upstream"], ["Circuit"], ["Calls in flight", true]], rows, { empty: "No upstream configured." }),
    tiles([
      ["Write queue depth", formatNumber(q.depth)],
      ["Rows written", formatNumber(q.written)],
      ["Dropped", formatNumber(q.drops)],
      ["Worker", `pid ${metrics.pid}, up ${formatSeconds(metrics.uptime_s)}`],
    ]),
  );
}

function inFlight(c) {
  return section(
    "connections",
    "Requests in flight",
    tiles([
      ["In flight", formatNumber(c.in_flight), "in-flight"],
      ["Refused (per-user cap)", formatNumber(c.rejected)],
    ]),
    table(
      "Requests in flight, oldest first",
      [["User"], ["Conversation"], ["Seconds", true]],
      (c.requests ?? []).map((r) => [r.user_id, r.conversation_id ?? "–", r.seconds.toFixed(1)]),
      { empty: "Nothing in flight." },
    ),
  );
}

function cacheSection(api, view, cache) {
  if (!cache.enabled) return section("cache", "Response cache", h("p", { class: "hint" }, "The cache is off."));
  const clear = confirmingButton("Clear the cache", "Clear? Click again", { class: "danger" }, async () => {
    await api.delete("/admin/cache");
    await renderAgain(view, api);
  });
  return section(
    "cache",
    "Response cache",
    tiles([
      ["Backend", cache.backend],
      ["Entries", `${formatNumber(cache.valid)} valid, ${formatNumber(cache.expired)} expired`, "entries"],
      ["Hits / misses", `${formatNumber(cache.hits)} / ${formatNumber(cache.misses)}`],
      ["Hit rate", formatPercent(cache.hit_rate)],
      ["Size", formatBytes(cache.bytes)],
      ["TTL", formatSeconds(cache.ttl)],
    ]),
    clear,
  );
}

function assistantsSection(api, view, listing) {
  if (!listing) return section("assistants", "Assistants", h("p", { class: "hint" }, "Documents are not enabled."));
  const again = () => renderAgain(view, api);
  const rows = listing.data.map((a) => [
    a.name,
    a.model,
    a.collections.join(", ") || "–",
    a.retrieval,
    a.source,
    a.source === "config"
      ? h("span", { class: "hint" }, "in the config file")
      : h(
          "span",
          { class: "row-actions" },
          h("button", { type: "button", class: "small", onclick: () => editAssistant(api, a, again) }, "Edit"),
          confirmingButton("Delete", "Delete?", { class: "small", "aria-label": `Delete ${a.name}` }, async () => {
            await api.delete(`/admin/assistants/${seg(a.name)}`);
            await again();
          }),
        ),
  ]);
  return section(
    "assistants",
    "Assistants",
    h("button", { type: "button", class: "primary", onclick: () => editAssistant(api, null, again) }, "New assistant"),
    table("Assistants", [["Name"], ["Model"], ["Collections"], ["Retrieval"], ["Defined in"], ["Actions"]], rows, {
      empty: "No assistants yet.",
    }),
  );
}

function collectionsSection(collections, jobs) {
  if (!collections) return section("collections", "Collections and jobs", h("p", { class: "hint" }, "Documents are not enabled."));
  const counts = (d) => Object.entries(d).map(([status, n]) => `${n} ${status}`).join(", ") || "empty";
  return section(
    "collections",
    "Collections and jobs",
    table(
      "Collections",
      [["Collection"], ["Owner"], ["Visibility"], ["Documents"], ["Embedder"], ["Created"]],
      collections.data.map((c) => [c.name, c.owner, c.visibility, counts(c.documents), c.embedding_model, formatTime(c.created_at)]),
      { empty: "No collections yet." },
    ),
    table(
      "Recent ingestion jobs",
      [["Job"], ["Collection"], ["Status"], ["Files", true], ["Added", true], ["Failed", true], ["Created"], ["Failures"]],
      jobs.data.map((j) => [
        j.id.slice(0, 8),
        collections.data.find((c) => c.id === j.collection_id)?.name ?? j.collection_id,
        h("span", { class: `status status-${j.status}` }, j.status),
        formatNumber(j.total),
        formatNumber(j.added),
        formatNumber(j.failed),
        formatTime(j.created_at),
        Object.entries(j.failures ?? {}).map(([f, why]) => `${f}: ${why}`).join("; ") || j.error || "",
      ]),
      { empty: "No jobs yet." },
    ),
  );
}

function exportSection(api) {
  const status = h("span", { class: "hint", role: "status" });
  const download = h("button", { type: "button", class: "primary" }, "Download CSV");
  download.addEventListener("click", async () => {
    const { from, to } = currentWindow();
    const query = new URLSearchParams({ from: from.toISOString(), to: to.toISOString(), format: "csv" });
    download.disabled = true;
    status.textContent = "Preparing…";
    try {
      const resp = await api.fetch("GET", `/admin/analytics/export?${query}`);
      const url = URL.createObjectURL(await resp.blob());
      const link = h("a", { href: url, download: "chatgate-requests.csv", class: "offscreen" });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      status.textContent = "Downloaded.";
    } catch (err) {
      status.textContent = `The export failed: ${err.message}`;
    } finally {
      download.disabled = false;
    }
  });
  return section(
    "export",
    "Analytics export",
    h("p", { class: "hint" }, "Every request in the overview's range, one row each (CSV)."),
    h("div", { class: "toolbar" }, download, status),
  );
}
