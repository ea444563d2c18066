// The admin dashboard's shell (/ui/admin). The HTML and this code are the same for everyone and hold no
// data: nothing is shown until an admin route answers with the key given. To any other key those routes
// are a 404, and so is this page: it shows the same "not found" as an unknown address, and never loads
// the dashboard's own code (admin/dashboard.js, fetched only after /admin/metrics answered).
import "../styles/base.css";
import { Api } from "../lib/api.js";
import { credentials } from "../lib/auth.js";
import { $, h } from "../lib/dom.js";
import { signIn } from "../lib/signin.js";

const api = new Api();

async function start(notice = "", askKey = false) {
  for (const id of ["#loading", "#admin", "#not-found", "#fatal"]) $(id).hidden = true;
  try {
    const { result: metrics, how } = await signIn($("#signin"), {
      probe: () => api.get("/admin/metrics"),
      title: "Sign in to chatgate",
      hint: "Paste your API key. It is kept in this tab only, until you sign out or close it.",
      notice,
      askKey,
    });
    $("#signin").hidden = true;
    const { mount } = await import("./dashboard.js");
    api.onUnauthorized = (err) => {
      credentials.clear();
      start(`You were signed out: ${err.message}`);
    };
    mount($("#admin"), { api, metrics, signedInByDeployer: how === "deployer", signOut });
  } catch (err) {
    $("#signin").hidden = true;
    if (err.status === 404) notFound();
    else fatal(err.message);
  }
}

function notFound() {
  document.title = "Not found";
  $("#not-found").hidden = false;
  $("#other-key").focus();
}

function fatal(message) {
  $("#fatal").replaceChildren(
    h("h1", {}, "The dashboard could not start"),
    h("p", { class: "error", role: "alert" }, message),
    h("button", { type: "button", class: "primary", onclick: () => location.reload() }, "Try again"),
  );
  $("#fatal").hidden = false;
}

function signOut() {
  credentials.clear();
  $("#admin").replaceChildren();
  start();
}

$("#other-key").addEventListener("click", () => {
  credentials.clear();
  start("", true); // straight to the form, not the deployer's sign-in again
});

start();
