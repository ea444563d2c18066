// The dashboard, loaded once /admin/metrics answered: a header, three sections by URL fragment
// (#overview, #users and #users/<id>, #operations), each drawn from the admin API.
import "../styles/admin.css";
import { h } from "../lib/dom.js";
import { renderOperations } from "./operations.js";
import { renderOverview } from "./overview.js";
import { renderUser, renderUsers } from "./users.js";

const SECTIONS = [
  ["overview", "Overview"],
  ["users", "Users"],
  ["operations", "Operations"],
];

export function mount(root, { api, signedInByDeployer, signOut }) {
  const main = h("main", { id: "admin-main", class: "admin-main", tabindex: "-1" });
  const links = SECTIONS.map(([id, label]) => h("a", { href: `#${id}`, dataset: { section: id } }, label));
  root.replaceChildren(
    h(
      "header",
      { class: "topbar admin-top" },
      h("h1", { class: "brand" }, "chatgate admin"),
      h("nav", { class: "sections", "aria-label": "Sections" }, links),
      h(
        "div",
        { class: "topbar-actions" },
        h("a", { href: "/ui/", class: "button-like" }, "Chat"),
        signedInByDeployer ? null : h("button", { type: "button", onclick: signOut }, "Sign out"),
      ),
    ),
    main,
  );
  root.hidden = false;

  let drawn = 0;
  const route = async () => {
    const [section, ...rest] = (location.hash.slice(1) || "overview").split("/");
    const id = rest.length ? decodeURIComponent(rest.join("/")) : null;
    for (const link of links) {
      if (link.dataset.section === section) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    const turn = ++drawn;
    const view = h("div", { class: "view", dataset: { view: section } });
    main.replaceChildren(view);
    main.dataset.loading = "true";
    try {
      if (section === "users" && id) await renderUser(view, api, id);
      else if (section === "users") await renderUsers(view, api);
      else if (section === "operations") await renderOperations(view, api);
      else await renderOverview(view, api);
    } catch (err) {
      if (turn === drawn) view.append(h("p", { class: "error", role: "alert" }, err.message));
    } finally {
      if (turn === drawn) delete main.dataset.loading;
    }
  };
  window.addEventListener("hashchange", () => {
    route();
    main.focus();
  });
  route();
}
