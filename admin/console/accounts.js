// The Service accounts tab: the team's accounts, create and delete, and a link to each one's tokens.

import { api, path } from "./api.js";
import { confirmDialog, dialogForm, field, openDialog } from "./dialogs.js";
import { h, fill, when } from "./dom.js";

export async function accountsTab(panel, ctx) {
  const base = path("orgs", ctx.org, "teams", ctx.team, "service-accounts");
  const holder = h("div", { class: "scroll" });
  const more = h("p");

  async function load(cursor) {
    const page = await api("GET", base, { query: { limit: 50, cursor } });
    fill(holder, h("table", {},
      h("caption", {}, "Service accounts"),
      h("thead", {}, h("tr", {}, ["Name", "Description", "Active tokens", "Created", "Actions"].map((label) => h("th", { scope: "col" }, label)))),
      h("tbody", {}, page.service_accounts.length === 0
        ? h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No service accounts yet."))
        : page.service_accounts.map((account) => h("tr", {},
          h("th", { scope: "row" }, account.name),
          h("td", {}, account.description || ""),
          h("td", { class: "num" }, account.active_tokens === undefined ? "" : `${account.active_tokens}${account.active_tokens_exact === false ? "+" : ""}`),
          h("td", {}, when(account.created_at, "")),
          h("td", { class: "row-actions" },
            h("a", { href: `#/teams/${encodeURIComponent(ctx.team)}/tokens?service_account=${encodeURIComponent(account.name)}`, "aria-label": "Tokens", title: `Tokens of ${account.name}` }, "Tokens"),
            h("button", { type: "button", "aria-label": "Delete", title: `Delete ${account.name}`, onclick: () => remove(account) }, "Delete")),
        )))));
    fill(more, page.next ? h("button", { type: "button", onclick: () => load(page.next).catch(ctx.failed) }, "Next page") : null);
  }

  function remove(account) {
    confirmDialog("Delete service account", `Delete ${account.name}? Its tokens stay and keep their scopes; they lose the account name.`,
      "Delete service account", async () => {
        await api("DELETE", path("orgs", ctx.org, "teams", ctx.team, "service-accounts", account.name));
        await load();
      });
  }

  function create() {
    const name = h("input", { type: "text", maxlength: 100, autocomplete: "off" });
    const description = h("input", { type: "text", maxlength: 1000, autocomplete: "off" });
    openDialog("Create service account", (dialogCtx) => [
      dialogForm(dialogCtx, [field("Name", name, { name: "name" }), field("Description", description, { name: "description" })], "Create", async () => {
        const body = { name: name.value.trim() };
        if (description.value.trim()) body.description = description.value.trim();
        await api("POST", base, { body });
        dialogCtx.close();
        await load();
      }),
    ]);
    name.focus();
  }

  fill(panel,
    h("div", { class: "toolbar" }, h("button", { type: "button", class: "primary", onclick: create }, "Create service account")),
    holder, more);
  await load();
}
