// Users: the table with search (GET /admin/users), and a user's page (GET /admin/users/{id}): sessions,
// analytics, requests in flight, limit lines with used and remaining, and resetting them.
import { seg } from "../lib/api.js";
import { confirmingButton, h } from "../lib/dom.js";
import { formatMs, formatNumber, formatPercent, formatSeconds, formatTime } from "../lib/format.js";
import { table, tiles } from "./widgets.js";

const PAGE = 50;
let search = { query: "", offset: 0 };

export async function renderUsers(view, api) {
  const input = h("input", { id: "user-search", type: "search", value: search.query, placeholder: "id, name or e-mail" });
  const results = h("div", { class: "users-results", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "toolbar", role: "search" },
    h("label", { for: "user-search" }, "Search users"),
    input,
    h("button", { type: "submit", class: "primary" }, "Search"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search = { query: input.value.trim(), offset: 0 };
    list(results, api);
  });
  view.append(h("h2", {}, "Users"), form, results);
  await list(results, api);
}

async function list(results, api) {
  const query = new URLSearchParams({ query: search.query, limit: PAGE, offset: search.offset });
  const page = await api.get(`/admin/users?${query}`);
  const rows = page.data.map((u) => [
    h("a", { href: `#users/${encodeURIComponent(u.user_id)}` }, u.user_id),
    u.name ?? "",
    u.email ?? "",
    u.role ?? "",
    formatTime(u.last_seen_at),
    u.disabled ? "disabled" : "active",
  ]);
  const first = page.total ? page.offset + 1 : 0;
  const last = page.offset + page.data.length;
  const pager = h(
    "div",
    { class: "pager" },
    h("span", {}, `${first}–${last} of ${formatNumber(page.total)}`),
    h("button", { type: "button", disabled: page.offset === 0, onclick: () => move(-PAGE) }, "Previous"),
    h("button", { type: "button", disabled: last >= page.total, onclick: () => move(PAGE) }, "Next"),
  );
  const move = (delta) => {
    search.offset = Math.max(0, search.offset + delta);
    list(results, api);
  };
  results.replaceChildren(
    table("Users", [["User"], ["Name"], ["E-mail"], ["Role"], ["Last seen"], ["Status"]], rows, {
      empty: search.query ? `No user matches “${search.query}”.` : "No users yet.",
    }),
    pager,
  );
}

export async function renderUser(view, api, userId) {
  const user = await api.get(`/admin/users/${seg(userId)}`);
  const who = user.user;
  const limits = h("div", { class: "limits" });
  const reset = confirmingButton("Reset limits", "Reset? Click again", { class: "danger" }, async () => {
    await api.post(`/admin/users/${seg(userId)}/limits/reset`, {});
    const fresh = await api.get(`/admin/users/${seg(userId)}/limits`);
    drawLimits(limits, fresh.limits);
  });
  drawLimits(limits, user.limits);
  const a = user.analytics ?? {};
  const sessions = user.sessions ?? {};
  view.append(
    h("p", {}, h("a", { href: "#users" }, "← All users")),
    h("h2", {}, who?.name && who.name !== userId ? `${who.name} (${userId})` : userId),
    tiles([
      ["E-mail", who?.email ?? "–"],
      ["Role", who?.role ?? "–"],
      ["Status", who ? (who.disabled ? "disabled" : "active") : "never stored"],
      ["First seen", formatTime(who?.created_at)],
      ["Last seen", formatTime(who?.last_seen_at)],
      ["Requests in flight", formatNumber(user.in_flight), "in-flight"],
    ]),
    h("section", {}, h("div", { class: "panel-head" }, h("h3", {}, "Limits"), reset), limits),
    h(
      "section",
      {},
      h("h3", {}, "Last 24 hours"),
      tiles([
        ["Requests", formatNumber(a.requests), "requests"],
        ["Errors", `${formatNumber(a.errors)} (${formatPercent(a.error_rate)})`],
        ["Tokens in / out", `${formatNumber(a.tokens_in)} / ${formatNumber(a.tokens_out)}`],
        ["Latency p50 / p95", `${formatMs(a.latency_ms?.p50)} / ${formatMs(a.latency_ms?.p95)}`],
        ["Cache hit rate", formatPercent(a.cache_hit_rate)],
      ]),
    ),
    h(
      "section",
      {},
      h("h3", {}, `Sessions (${formatNumber(sessions.conversations ?? 0)})`),
      table(
        "Recent sessions",
        [["Session"], ["Started"], ["Last activity"], ["Messages", true], ["Tokens in", true], ["Tokens out", true]],
        (sessions.recent ?? []).map((s) => [
          s.title || s.session_id,
          formatTime(s.created_at),
          formatTime(s.last_activity_at),
          formatNumber(s.message_count),
          formatNumber(s.tokens_in),
          formatNumber(s.tokens_out),
        ]),
        { empty: "No sessions." },
      ),
    ),
  );
}

function drawLimits(el, lines) {
  el.replaceChildren(
    table(
      "Limit lines",
      [["Limit"], ["Used", true], ["Limit", true], ["Remaining", true], ["Resets in", true]],
      (lines ?? []).map((l) => [
        l.key_ids?.length ? `${l.scope} (key ${l.key_ids.join(", ")})` : l.scope,
        formatNumber(l.used),
        formatNumber(l.limit),
        formatNumber(l.remaining),
        l.used ? formatSeconds(l.reset_in_seconds) : "–",
      ]),
      { empty: "No limits apply." },
    ),
  );
}
