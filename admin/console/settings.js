// The Settings tab (org admins): the team's permission set, the most its tokens can hold.

import { api, path } from "./api.js";
import { clearErrors, field, lines, showError } from "./dialogs.js";
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
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    saved.textContent = "";
    try {
      const team = await api("PUT", path("orgs", ctx.org, "teams", ctx.team, "permissions"), { body: { permissions: lines(permissions.value) } });
      permissions.value = team.permissions.join("\n");
      ctx.info.permissions = team.permissions;
      saved.textContent = "Saved.";
    } catch (error) {
      showError(form, error);
    }
  });
  fill(panel, h("h2", {}, "Permission set"), form);
}
