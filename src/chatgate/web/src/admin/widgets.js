// Small pieces the dashboard's sections share: figures and tables (text only, never HTML).
import { h } from "../lib/dom.js";

/** A row of figures: [label, value, key?] triples. */
export function tiles(items) {
  return h(
    "dl",
    { class: "tiles" },
    items.map(([label, value, key]) => h("div", { class: "tile", dataset: { tile: key ?? label } }, h("dt", {}, label), h("dd", {}, value))),
  );
}

/** A table from rows of cells; `columns`: [label, numeric?]. */
export function table(caption, columns, rows, { empty = "Nothing to show." } = {}) {
  if (!rows.length) return h("p", { class: "hint" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: "table" },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, columns.map(([label, num]) => h("th", { scope: "col", class: num ? "num" : null }, label)))),
      h(
        "tbody",
        {},
        rows.map((cells) =>
          h("tr", {}, cells.map((cell, i) => h(i === 0 ? "th" : "td", { scope: i === 0 ? "row" : null, class: columns[i]?.[1] ? "num" : null }, cell))),
        ),
      ),
    ),
  );
}
