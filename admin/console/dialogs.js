// Modal dialogs (<dialog> with showModal: focus stays inside, Escape closes) and the form
// pieces they hold. A dialog is removed from the page when it closes, with what it showed.

import { ApiError } from "./api.js";
import { append, h, fill, uid } from "./dom.js";

/** Open a modal dialog named by `title`; `build(dialog)` returns its body. */
export function openDialog(title, build, { className = "", onClose } = {}) {
  const titleId = uid("dialog-title");
  const dialog = h("dialog", { class: `dialog ${className}`, "aria-labelledby": titleId });
  const close = () => dialog.close();
  append(dialog, [h("h2", { id: titleId }, title), build({ dialog, close })]);
  dialog.addEventListener("close", () => {
    dialog.remove();
    if (onClose) onClose();
  });
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, close };
}

/** A labelled field: its input, a hint, and a place for the error the API names it in. */
export function field(label, input, { hint, name } = {}) {
  input.id ||= uid("field");
  const errorId = `${input.id}-error`;
  const hintId = hint ? `${input.id}-hint` : null;
  if (hintId) input.setAttribute("aria-describedby", hintId);
  return h(
    "div",
    { class: "field", "data-field": name || "" },
    h("label", { for: input.id }, label),
    input,
    hint ? h("p", { class: "hint", id: hintId }, hint) : null,
    h("p", { class: "error", id: errorId, role: "alert", hidden: true }),
  );
}

/** A group of checkboxes, one per value, under one legend. */
export function checkboxes(legend, values, { name, describe = () => null, checked = () => false } = {}) {
  return h(
    "fieldset",
    { class: "field checks", "data-field": name || "" },
    h("legend", {}, legend),
    values.map((value) => {
      const id = uid("check");
      const note = describe(value);
      return h(
        "div",
        { class: "check" },
        h("input", { type: "checkbox", id, value, checked: checked(value) }),
        h("label", { for: id }, value),
        note ? h("span", { class: `hint ${note.warn ? "warn" : ""}` }, note.text) : null,
      );
    }),
    h("p", { class: "error", role: "alert", hidden: true }),
  );
}

export function select(options, selected) {
  return h(
    "select",
    {},
    options.map(([value, label]) => h("option", { value, selected: value === selected }, label)),
  );
}

/** Clear the errors shown in `form`. */
export function clearErrors(form) {
  for (const el of form.querySelectorAll(".error")) {
    el.hidden = true;
    el.textContent = "";
  }
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

/** Show an API error beside the field it names (`scopes[0]` is the scopes field), else at the top. */
export function showError(form, error) {
  const message = error instanceof ApiError ? error.message : String(error.message || error);
  const name = error instanceof ApiError && error.field ? error.field.split(/[[.]/)[0] : null;
  const holder = name ? form.querySelector(`[data-field="${CSS.escape(name)}"]`) : null;
  const target = (holder || form).querySelector(".error");
  if (holder) {
    const input = holder.querySelector("input, select, textarea");
    if (input) input.setAttribute("aria-invalid", "true");
  }
  target.textContent = message;
  target.hidden = false;
}

/** A form in a dialog: fields, then a Cancel and a submit button; `submit()` may throw ApiError. */
export function dialogForm({ close }, fields, submitLabel, submit, { danger = false } = {}) {
  const form = h("form", { novalidate: true, class: "form" });
  const button = h("button", { type: "submit", class: danger ? "danger" : "primary" }, submitLabel);
  fill(
    form,
    h("p", { class: "error", role: "alert", hidden: true }),
    fields,
    h("div", { class: "actions" }, h("button", { type: "button", onclick: close }, "Cancel"), button),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    button.disabled = true;
    try {
      await submit(form);
    } catch (error) {
      showError(form, error);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

/** "a=b" lines into an object (blank lines skipped); a line without "=" is an error. */
export function keyValues(text, fieldName) {
  const result = Object.create(null);
  for (const [index, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (!line) continue;
    const at = line.indexOf("=");
    if (at <= 0) {
      throw new ApiError(400, { error: "invalid_request", message: `${fieldName}: line ${index + 1} is not key=value`, field: fieldName });
    }
    const key = line.slice(0, at).trim();
    if (Object.hasOwn(result, key)) {
      throw new ApiError(400, { error: "invalid_request", message: `${fieldName}: ${key} is given twice (lines ${index + 1} and before)`, field: fieldName });
    }
    result[key] = line.slice(at + 1).trim();
  }
  return result;
}

export function lines(text) {
  return text.split("\n").map((line) => line.trim()).filter(Boolean);
}

/** A confirmation: `run()` does the change; its API error stays in the dialog. */
export function confirmDialog(title, message, actionLabel, run, { extra = [] } = {}) {
  return openDialog(title, (ctx) => [
    h("p", {}, message),
    dialogForm(ctx, extra, actionLabel, async (form) => {
      await run(form);
      ctx.close();
    }, { danger: true }),
  ]);
}
