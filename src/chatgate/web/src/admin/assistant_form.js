// Creating or editing a stored assistant (POST /admin/assistants, PUT /admin/assistants/{name}) in a dialog.
import { seg } from "../lib/api.js";
import { h } from "../lib/dom.js";

function field(id, label, control) {
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control);
}

const options = (values, selected) => values.map(([v, label]) => h("option", { value: v, selected: v === (selected ?? "") }, label));

/** Opens the form for `assistant` (null: a new one); calls `saved()` after a successful save. */
export function editAssistant(api, assistant, saved) {
  const a = assistant ?? { name: "", model: "", system_prompt: "", collections: [], retrieval: "every_turn", top_k: null, mode: null, research: false, description: "", tools: [], max_steps: null };
  const name = h("input", { required: true, value: a.name, readonly: assistant ? true : null });
  const model = h("input", { required: true, value: a.model });
  const prompt = h("textarea", { rows: 4 });
  prompt.value = a.system_prompt ?? "";
  const collections = h("input", { value: a.collections.join(", "), "aria-describedby": "asst-collections-hint" });
  const retrieval = h("select", {}, options([["every_turn", "Every turn"], ["once_per_conversation", "Once per conversation"], ["tool", "When the model asks (tool)"], ["off", "Off"]], a.retrieval));
  const tools = h("input", { value: (a.tools ?? []).join(", ") });
  const topK = h("input", { type: "number", min: 1, max: 200, value: a.top_k ?? "" });
  const mode = h("select", {}, options([["", "Default"], ["hybrid", "Hybrid"], ["dense", "Dense"], ["lexical", "Lexical"]], a.mode));
  const research = h("input", { type: "checkbox", checked: a.research });
  const description = h("input", { value: a.description ?? "" });
  const error = h("p", { class: "error", role: "alert" });
  const dialog = h("dialog", { class: "assistant-dialog", "aria-labelledby": "asst-title" });
  const form = h(
    "form",
    { class: "form-grid" },
    h("h2", { id: "asst-title" }, assistant ? `Edit ${a.name}` : "New assistant"),
    field("asst-name", "Name (the model id clients ask for)", name),
    field("asst-model", "Base model", model),
    field("asst-prompt", "System prompt", prompt),
    field("asst-collections", "Collections (names or ids, comma separated)", collections),
    h("p", { id: "asst-collections-hint", class: "hint" }, "“My documents” searches each user's own uploads."),
    field("asst-retrieval", "Retrieval", retrieval),
    field("asst-tools", "Server tools besides search (comma separated, e.g. current_time)", tools),
    field("asst-topk", "Chunks retrieved (empty: the default)", topK),
    field("asst-mode", "Search mode", mode),
    h("div", { class: "field check" }, research, h("label", { for: "asst-research" }, "Research assistant (typed research in analytics)")),
    field("asst-description", "Description (shown in the model list)", description),
    error,
    h(
      "div",
      { class: "toolbar" },
      h("button", { type: "submit", class: "primary" }, "Save"),
      h("button", { type: "button", onclick: () => dialog.close() }, "Cancel"),
    ),
  );
  research.id = "asst-research";
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {
      name: name.value.trim(),
      model: model.value.trim(),
      system_prompt: prompt.value.trim() || null,
      collections: collections.value.split(",").map((c) => c.trim()).filter(Boolean),
      retrieval: retrieval.value,
      tools: tools.value.split(",").map((t) => t.trim()).filter(Boolean),
      max_steps: a.max_steps ?? null,
      top_k: topK.value ? Number(topK.value) : null,
      mode: mode.value || null,
      research: research.checked,
      description: description.value.trim() || null,
    };
    try {
      if (assistant) await api.put(`/admin/assistants/${seg(a.name)}`, body);
      else await api.post("/admin/assistants", body);
      dialog.close();
      await saved();
    } catch (err) {
      error.textContent = err.message;
    }
  });
  dialog.append(form);
  dialog.addEventListener("close", () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}
