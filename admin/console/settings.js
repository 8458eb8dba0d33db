// The Settings tab (org admins): the team's permission set, the most its tokens can hold.

import { api, path } from "./api.js";
import { clearErrors, confirmDialog, field, lines, showError } from "./dialogs.js";
import { h, fill } from "./dom.js";

export async function settingsTab(panel, ctx) {
  const permissions = h("textarea", { rows: 8, spellcheck: "false" });
  permissions.value = (ctx.info.permissions || []).join("\n");
  const saved = h("p", { class: "notice", role: "status" });
  const form = h("form", { class: "form", novalidate: true },
    h("p", { class: "error", role: "alert", hidden: true }),
    field("Permissions", permissions, {
      name: "permissions",
      hint: "one scope per line (read:apis, write:specs, admin:team, ...): the most this team's tokens can hold. " +
        "Removing one takes it from every token of the team at once.",
    }),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Save")),
    saved);

  async function save(wanted) {
    const team = await api("PUT", path("orgs", ctx.org, "teams", ctx.team, "permissions"), { body: { permissions: wanted } });
    permissions.value = team.permissions.join("\n");
    ctx.info.permissions = team.permissions;
    saved.textContent = "Saved.";
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    saved.textContent = "";
    const wanted = lines(permissions.value);
    const removed = (ctx.info.permissions || []).filter((scope) => !wanted.includes(scope));
    if (removed.length) {
      // taking a scope away acts on every token of the team at once: say so first
      confirmDialog("Remove scopes",
        `Remove ${removed.join(", ")} from ${ctx.team}? Every token of the team loses ${removed.length === 1 ? "it" : "them"} at once` +
        `${wanted.length ? "" : ", and with an empty set its tokens can do nothing"}.`,
        "Remove scopes", () => save(wanted));
      return;
    }
    try {
      await save(wanted);
    } catch (error) {
      showError(form, error);
    }
  });
  fill(panel, h("h2", {}, "Permission set"), form);
}
