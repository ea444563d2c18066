// Markdown from the model, rendered and sanitised: marked turns it into HTML, highlight.js colours code
// blocks, DOMPurify removes everything that could run (scripts, event handlers, javascript: links, forms,
// styles) before it reaches the page. The CSP (no inline script) is the second wall behind it.
import DOMPurify from "dompurify";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import css from "highlight.js/lib/languages/css";
import diff from "highlight.js/lib/languages/diff";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import python from "highlight.js/lib/languages/python";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";
import { Marked } from "marked";
import { h } from "./dom.js";

for (const [name, language] of Object.entries({ bash, css, diff, javascript, json, python, sql, typescript, xml, yaml })) {
  hljs.registerLanguage(name, language);
}
hljs.registerAliases(["shell", "console", "zsh"], { languageName: "bash" });

const escapeHtml = (text) =>
  text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const marked = new Marked({
  gfm: true,
  renderer: {
    code({ text, lang }) {
      const language = (lang ?? "").trim().split(/\s+/)[0].toLowerCase();
      const known = language && hljs.getLanguage(language) ? language : "";
      const body = known ? hljs.highlight(text, { language: known, ignoreIllegals: true }).value : escapeHtml(text);
      const label = escapeHtml(language || "text");
      return `<pre data-language="${label}"><code class="hljs${known ? ` language-${known}` : ""}">${body}</code></pre>\n`;
    },
  },
});

const purify = DOMPurify(window);
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});
const POLICY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "iframe", "object", "embed"],
  FORBID_ATTR: ["style", "id", "name", "srcset", "action", "formaction"],
  RETURN_DOM_FRAGMENT: true,
};

/** `markdown` as a sanitised DocumentFragment, with copy buttons on code blocks and, when `sources` are
 * given, each `[n]` that names one of them as a button calling `onCite(n)`. */
export function renderMarkdown(markdown, { sources = null, onCite = null } = {}) {
  const fragment = purify.sanitize(marked.parse(markdown ?? "", { async: false }), POLICY);
  for (const pre of fragment.querySelectorAll("pre")) addCopyButton(pre);
  if (sources?.length && onCite) linkCitations(fragment, new Map(sources.map((s) => [Number(s.index), s])), onCite);
  return fragment;
}

function addCopyButton(pre) {
  const code = pre.querySelector("code") ?? pre;
  const button = h("button", { type: "button", class: "copy", "aria-label": "Copy the code" }, "Copy");
  button.addEventListener("click", async () => {
    const ok = await copyText(code.textContent);
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
  const bar = h("div", { class: "code-bar" }, h("span", { class: "code-lang" }, pre.dataset.language ?? ""), button);
  const block = h("div", { class: "code-block" }, bar);
  pre.before(block);
  block.append(pre);
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = h("textarea", { class: "offscreen", readonly: true, "aria-hidden": "true" });
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

const CITATION = /\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]/g;

function linkCitations(root, sources, onCite) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) =>
      node.parentElement?.closest("code, pre, a, button") ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT,
  });
  const nodes = [];
  while (walker.nextNode()) if (/\[\d/.test(walker.currentNode.data)) nodes.push(walker.currentNode);
  for (const node of nodes) {
    const parts = [];
    let last = 0;
    for (const match of node.data.matchAll(CITATION)) {
      const numbers = match[1].split(",").map((n) => Number(n.trim()));
      if (!numbers.every((n) => sources.has(n))) continue;
      parts.push(node.data.slice(last, match.index));
      for (const n of numbers) {
        const source = sources.get(n);
        const title = source.title || source.document || `source ${n}`;
        parts.push(
          h(
            "button",
            { type: "button", class: "cite", "aria-label": `Source ${n}: ${title}`, onclick: () => onCite(n) },
            `[${n}]`,
          ),
        );
      }
      last = match.index + match[0].length;
    }
    if (!parts.length) continue;
    parts.push(node.data.slice(last));
    node.replaceWith(...parts);
  }
}
