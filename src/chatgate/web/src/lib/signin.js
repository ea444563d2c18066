// Signing in: a key kept in this tab (sessionStorage), or the deployer's own sign-in (a JWT cookie that
// chatgate reads with the page's header, or a proxy that adds Authorization), tried first when no key is kept.
import { credentials } from "./auth.js";
import { h } from "./dom.js";

/**
 * Resolves with `{result, how}` once `probe()` (an API call that needs a credential) succeeds: with the
 * kept key, else without one (the deployer's sign-in), else with a key pasted into the form drawn in
 * `root`. A 401 shows why in the form; any other error rejects (the caller decides: e.g. a 404 on the
 * dashboard is a key that is not an admin's). `askKey`: straight to the form.
 */
export async function signIn(root, { probe, title, hint, notice = "", askKey = false }) {
  if (credentials.key()) {
    try {
      return { result: await probe(), how: "key" };
    } catch (err) {
      if (err.status !== 401) throw err;
      credentials.clear();
      notice = `Your key is no longer accepted: ${err.message} Paste a key to sign in again.`;
    }
  } else if (!notice && !askKey) {
    try {
      return { result: await probe(), how: "deployer" };
    } catch (err) {
      if (err.status !== 401) throw err;
      // A deployer's JWT that was sent but refused (expired, bad signature) says why; no credential at all is silent.
      if (err.details?.reason) notice = `Your sign-in was refused: ${err.message} Sign in again, or paste a key.`;
    }
  }
  return form(root, { probe, title, hint, notice });
}

function form(root, { probe, title, hint, notice }) {
  return new Promise((resolve, reject) => {
    const input = h("input", {
      id: "signin-key",
      type: "password",
      autocomplete: "off",
      spellcheck: "false",
      required: true,
      "aria-describedby": "signin-hint signin-error",
    });
    const error = h("p", { id: "signin-error", class: "error", role: "alert" }, notice);
    const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
    const formEl = h(
      "form",
      { class: "signin-form", "aria-labelledby": "signin-title" },
      h("h1", { id: "signin-title" }, title),
      h("label", { for: "signin-key" }, "API key"),
      input,
      h("p", { id: "signin-hint", class: "hint" }, hint),
      submit,
      error,
    );
    formEl.addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      submit.disabled = true;
      error.textContent = "";
      credentials.set(key);
      try {
        const result = await probe();
        root.replaceChildren();
        resolve({ result, how: "key" });
      } catch (err) {
        credentials.clear();
        if (err.status === 401) {
          error.textContent = `Sign-in failed: ${err.message}`;
          input.select();
        } else if (err.code === "NETWORK") {
          error.textContent = err.message;
        } else {
          root.replaceChildren();
          reject(err);
        }
      } finally {
        submit.disabled = false;
      }
    });
    root.replaceChildren(formEl);
    root.hidden = false;
    input.focus();
    performance.mark("chatgate:sign-in"); // the form is usable (bench/web.py)
  });
}
