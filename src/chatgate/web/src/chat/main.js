// The chat page (/ui/): sign in, pick a model or assistant, converse, read sources, manage documents.
import "../styles/base.css";
import "../styles/chat.css";
import { Api } from "../lib/api.js";
import { credentials } from "../lib/auth.js";
import { $, h } from "../lib/dom.js";
import { signIn } from "../lib/signin.js";
import { Conversation } from "./conversation.js";
import { Documents } from "./documents.js";
import { SessionList, rememberTitle } from "./sessions.js";
import { SourcesPanel } from "./sources.js";
import { UsageMeter } from "./usage.js";

const MODEL = "chatgate.model";
const api = new Api();

async function start(notice = "") {
  $("#loading").hidden = true;
  $("#chat").hidden = true;
  let signedIn;
  try {
    signedIn = await signIn($("#signin"), {
      probe: () => api.get("/api/v1/chat/sessions?limit=100"),
      title: "Sign in to chatgate",
      hint: "Paste the API key you were given. It is kept in this tab only, until you sign out or close it.",
      notice,
    });
  } catch (err) {
    fatal(err.message);
    return;
  }
  $("#signin").hidden = true;
  await open(signedIn);
}

function fatal(message) {
  $("#fatal").replaceChildren(
    h("h1", {}, "chatgate could not start"),
    h("p", { class: "error", role: "alert" }, message),
    h("button", { type: "button", class: "primary", onclick: () => location.reload() }, "Try again"),
  );
  $("#fatal").hidden = false;
}

let wired = null;

async function open({ result: firstSessions, how }) {
  const chat = $("#chat");
  chat.hidden = false;
  $("#sign-out").hidden = how === "deployer"; // signed in by the deployer: nothing kept here to forget
  if (!wired) wired = wire();
  const { sessions, conversation } = wired;
  sessions.sessions = firstSessions.data ?? [];
  sessions.draw();
  await loadModels();
  document.body.dataset.ready = "true";
  performance.mark("chatgate:interactive");
  conversation.input.focus();
}

function wire() {
  const meter = new UsageMeter($("#usage"));
  api.headerListeners.push((headers) => meter.update(headers));
  api.onUnauthorized = (err) => {
    credentials.clear();
    start(`You were signed out: ${err.message}`);
  };
  const sources = new SourcesPanel({ api, panel: $("#sources"), list: $("#source-list"), close: $("#close-sources") });
  const sessionsNav = $("#sessions");
  const toggle = $("#toggle-sessions");
  const setNav = (open) => {
    sessionsNav.classList.toggle("open", open);
    toggle.setAttribute("aria-expanded", String(open));
  };
  toggle.addEventListener("click", () => setNav(!sessionsNav.classList.contains("open")));
  sessionsNav.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && sessionsNav.classList.contains("open")) {
      setNav(false);
      toggle.focus();
    }
  });

  const conversation = new Conversation({
    api,
    messages: $("#messages"),
    notice: $("#notice"),
    composer: $("#composer"),
    input: $("#composer-input"),
    send: $("#send"),
    stop: $("#stop"),
    model: $("#model"),
    onCite: (answer, n) => sources.show(answer, n),
    onSession: (sessionId, firstText) => {
      if (firstText) rememberTitle(sessionId, firstText);
      sessions.select(sessionId);
      sessions.refresh().then(() => sessions.select(sessionId)).catch(() => {});
    },
  });
  const sessions = new SessionList({
    api,
    list: $("#session-list"),
    empty: $("#sessions-empty"),
    onOpen: async (sessionId) => {
      setNav(false);
      try {
        await conversation.open(sessionId);
        sessions.select(sessionId);
        conversation.input.focus();
      } catch (err) {
        conversation.showError(`The conversation could not be opened: ${err.message}`);
      }
    },
    onDeleted: (sessionId) => {
      if (conversation.sessionId === sessionId) conversation.reset();
    },
  });
  $("#new-chat").addEventListener("click", () => {
    conversation.reset();
    sessions.select(null);
    setNav(false);
    conversation.input.focus();
  });
  const documents = new Documents({ api, dialog: $("#documents") });
  $("#open-documents").addEventListener("click", () => documents.open());
  $("#sign-out").addEventListener("click", () => {
    credentials.clear();
    conversation.reset();
    start();
  });
  $("#model").addEventListener("change", (event) => sessionStorage.setItem(MODEL, event.target.value));
  return { sessions, conversation };
}

async function loadModels() {
  const select = $("#model");
  let models = [];
  try {
    models = (await api.get("/v1/models")).data ?? [];
  } catch (err) {
    $("#notice").textContent = `The models could not be listed: ${err.message}`;
    $("#notice").hidden = false;
  }
  const assistants = models.filter((m) => m.owned_by === "chatgate" && m.root);
  const served = models.filter((m) => !assistants.includes(m));
  const option = (m) => h("option", { value: m.id, title: m.description ?? null }, m.description ? `${m.id} — ${m.description}` : m.id);
  select.replaceChildren(
    ...(assistants.length ? [h("optgroup", { label: "Assistants" }, assistants.map(option))] : []),
    ...(served.length ? [h("optgroup", { label: "Models" }, served.map(option))] : []),
  );
  const kept = sessionStorage.getItem(MODEL);
  if (kept && models.some((m) => m.id === kept)) select.value = kept;
}

start();
