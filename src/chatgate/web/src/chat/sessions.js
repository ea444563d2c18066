// The caller's conversations, newest activity first: open, delete, start a new one.
import { seg } from "../lib/api.js";
import { confirmingButton, h } from "../lib/dom.js";
import { formatTime } from "../lib/format.js";

const TITLES = "chatgate.titles"; // session id -> the first words asked, for sessions started in this tab

function localTitles() {
  try {
    return JSON.parse(sessionStorage.getItem(TITLES) ?? "{}");
  } catch {
    return {};
  }
}

export function rememberTitle(sessionId, text) {
  const titles = localTitles();
  titles[sessionId] = text.replace(/\s+/g, " ").trim().slice(0, 80);
  sessionStorage.setItem(TITLES, JSON.stringify(titles));
}

export class SessionList {
  constructor({ api, list, empty, onOpen, onDeleted }) {
    Object.assign(this, { api, list, empty, onOpen, onDeleted });
    this.current = null;
    this.sessions = [];
  }

  async refresh() {
    const body = await this.api.get("/api/v1/chat/sessions?limit=100");
    this.sessions = body.data ?? [];
    this.draw();
  }

  select(sessionId) {
    this.current = sessionId;
    for (const button of this.list.querySelectorAll(".session-open")) {
      if (button.dataset.session === sessionId) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  draw() {
    const titles = localTitles();
    this.empty.hidden = this.sessions.length > 0;
    this.list.replaceChildren(
      ...this.sessions.map((s) => {
        const title = s.title || titles[s.session_id] || `Conversation of ${formatTime(s.created_at)}`;
        const count = s.message_count === 1 ? "1 message" : `${s.message_count} messages`;
        const open = h(
          "button",
          {
            type: "button",
            class: "session-open",
            dataset: { session: s.session_id },
            "aria-current": s.session_id === this.current ? "true" : null,
            onclick: () => this.onOpen(s.session_id),
          },
          h("span", { class: "session-title" }, title),
          h("span", { class: "session-meta" }, `${formatTime(s.last_activity_at)} · ${count}`),
        );
        const remove = confirmingButton(
          "Delete",
          "Delete?",
          { class: "session-delete", "aria-label": `Delete the conversation “${title}”` },
          async () => {
            await this.api.delete(`/api/v1/chat/sessions/${seg(s.session_id)}`);
            await this.refresh();
            this.onDeleted(s.session_id);
          },
        );
        return h("li", { class: "session", dataset: { session: s.session_id } }, open, remove);
      }),
    );
  }
}
