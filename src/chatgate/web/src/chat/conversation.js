// The conversation: sending a message and streaming its answer (POST /api/v1/chat, stream: true), stopping
// it (aborting the fetch: chatgate cancels the upstream call when the client leaves), errors in words, a
// 429's countdown, and reading a stored session back.
import { seg } from "../lib/api.js";
import { sseData } from "../lib/sse.js";
import { AnswerView, userMessage } from "./answer.js";
import { countdown } from "./usage.js";

const textOf = (content) =>
  typeof content === "string"
    ? content
    : Array.isArray(content)
      ? content.map((p) => (p?.type === "text" ? p.text : p?.type ? `[${p.type}]` : "")).join(" ")
      : "";

export class Conversation {
  constructor({ api, messages, notice, composer, input, send, stop, model, onSession, onCite }) {
    Object.assign(this, { api, messages, notice, composer, input, sendButton: send, stopButton: stop, model });
    this.onSession = onSession;
    this.onCite = onCite;
    this.sessionId = null;
    this.controller = null;
    this.cancelCountdown = null;
    composer.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      } else if (event.key === "Escape" && this.controller) {
        this.stop();
      }
    });
    stop.addEventListener("click", () => this.stop());
  }

  get busy() {
    return this.controller !== null;
  }

  submit() {
    const text = this.input.value.trim();
    if (!text || this.busy || this.cancelCountdown) return;
    this.input.value = "";
    this.send(text);
  }

  stop() {
    this.controller?.abort();
  }

  setBusy(busy) {
    this.sendButton.hidden = busy;
    this.stopButton.hidden = !busy;
    if (busy) this.stopButton.focus();
    else if (document.activeElement === this.stopButton || document.activeElement === document.body) this.input.focus();
  }

  clear() {
    this.messages.querySelector("#welcome")?.remove();
  }

  scroll() {
    this.messages.scrollTop = this.messages.scrollHeight;
  }

  async send(text) {
    this.clear();
    this.hideNotice();
    const asked = userMessage(text);
    const answer = new AnswerView({ question: text, onCite: this.onCite });
    this.messages.append(asked, answer.el);
    this.scroll();
    this.controller = new AbortController();
    this.setBusy(true);
    const body = { message: text, model: this.model.value || undefined, stream: true };
    if (this.sessionId) body.session_id = this.sessionId;
    try {
      const resp = await this.api.fetch("POST", "/api/v1/chat", { json: body, signal: this.controller.signal });
      let ended = false;
      for await (const data of sseData(resp.body)) {
        if (data === "[DONE]") break;
        const event = JSON.parse(data);
        if (event.error && !event.type) {  // the stream's failure (typed events are the answer's own)
          answer.end("error", event.error.message ?? "The answer failed.");
          ended = true;
          break;
        }
        answer.apply(event);
        if (event.type === "done") {
          ended = true;
          const isNew = event.session_id && event.session_id !== this.sessionId;
          this.sessionId = event.session_id ?? this.sessionId;
          this.onSession(this.sessionId, isNew ? text : null);
        }
        this.scroll();
      }
      if (!ended) answer.end("error", "The answer ended before it was complete.");
    } catch (err) {
      if (err.name === "AbortError") {
        answer.end("stopped", "Stopped.");
      } else if (err.status === 429) {
        answer.el.remove();
        asked.dataset.state = "not-sent";
        this.rateLimited(err, () => {
          asked.remove();
          this.send(text);
        });
      } else {
        answer.end("error", err.message);
      }
    } finally {
      this.controller = null;
      this.setBusy(false);
    }
  }

  rateLimited(err, retry) {
    const seconds = Number.isFinite(err.retryAfter) ? err.retryAfter : 5;
    this.sendButton.disabled = true;
    this.cancelCountdown = countdown(this.notice, {
      message: err.message,
      seconds,
      onRetry: () => {
        this.cancelCountdown = null;
        this.sendButton.disabled = false;
        retry();
      },
    });
  }

  hideNotice() {
    this.cancelCountdown?.();
    this.cancelCountdown = null;
    this.sendButton.disabled = false;
    this.notice.hidden = true;
  }

  showError(message) {
    this.notice.textContent = message;
    this.notice.dataset.kind = "error";
    this.notice.hidden = false;
  }

  reset() {
    this.stop();
    this.hideNotice();
    this.sessionId = null;
    this.messages.replaceChildren();
  }

  /** A stored session's messages (oldest first). */
  async open(sessionId) {
    const session = await this.api.get(`/api/v1/chat/sessions/${seg(sessionId)}?limit=500`);
    this.reset();
    this.sessionId = sessionId;
    let question = "";
    for (const m of session.messages ?? []) {
      const text = textOf(m.content);
      if (m.role === "user") {
        question = text;
        this.messages.append(userMessage(text));
      } else if (m.role === "assistant") {
        this.messages.append(new AnswerView({ question, text, onCite: this.onCite }).el);
      }
    }
    this.scroll();
  }
}
