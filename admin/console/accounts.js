// The Service accounts tab: the team's accounts, create and delete, and a link to each one's tokens.

import { api, path } from "./api.js";
import { confirmDialog, dialogForm, field, openDialog } from "./dialogs.js";
import { h, fill, when } from "./dom.js";
import { keepFocus, newest, pager } from "./pages.js";

export async function accountsTab(panel, ctx) {
  const base = path("orgs", ctx.org, "teams", ctx.team, "service-accounts");
  const holder = h("div", { class: "scroll" });
  const fresh = newest();
  const pages = pager(async (cursor) => {
    const page = await fresh(api("GET", base, { query: { limit: 50, cursor } }));
    if (page === undefined) return undefined;
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
    keepFocus(holder.querySelector("table"));
    return page;
  }, ctx.failed);

  function remove(account) {
    confirmDialog("Delete service account",
      `Delete ${account.name} from ${ctx.team}? An account with active tokens here cannot be deleted: revoke them first.`,
      "Delete service account", async () => {
        await api("DELETE", path("orgs", ctx.org, "teams", ctx.team, "service-accounts", account.name));
        await pages.again();
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
        await pages.again();
      }),
    ]);
    name.focus();
  }

  fill(panel,
    h("div", { class: "toolbar" }, h("button", { type: "button", class: "primary", onclick: create }, "Create service account")),
    holder, pages.el);
  await pages.first();
}
