// The Audit tab: the team's audit events, newest first, filtered by token, action and time.
// Refusals name the token they were attributed to.

import { api } from "./api.js";
import { field, select } from "./dialogs.js";
import { h, fill, when } from "./dom.js";
import { newest, pager } from "./pages.js";

// The actions tokenward records (README "Audit").
const ACTIONS = [
  "request.allowed", "request.denied", "token.created", "token.revoked", "token.restored", "token.rotated", "token.updated",
  "token.deleted", "token.imported", "token.leaked", "token.leak_reported", "service_account.created", "service_account.updated",
  "service_account.renamed", "service_account.deleted", "team.created", "team.permissions_changed",
];

const SHOWN = new Set(["id", "time", "ts", "action", "event", "token_id", "token_name", "name", "actor_id", "actor_name", "org", "team",
  "method", "path", "status", "step", "reason"]);

function rest(event) {
  return Object.entries(event).filter(([key, value]) => !SHOWN.has(key) && value !== null && value !== undefined && value !== "")
    .map(([key, value]) => `${key}=${typeof value === "object" ? JSON.stringify(value) : value}`).join("  ");
}

export async function auditTab(panel, ctx) {
  const inputs = {
    token_id: h("input", { type: "text", autocomplete: "off", value: ctx.query.get("token_id") || "" }),
    action: select([["", "Any"], ...ACTIONS.map((name) => [name, name])], ""),
    since: h("input", { type: "datetime-local" }),
    until: h("input", { type: "datetime-local" }),
  };
  const holder = h("div", { class: "scroll" });
  const problem = h("p", { class: "error", role: "alert", hidden: true });

  const iso = (value) => (value ? new Date(value).toISOString() : undefined);

  const fresh = newest();
  const pages = pager(async (cursor) => {
    problem.hidden = true;
    let page;
    try {
      page = await fresh(api("GET", "v1/audit", {
        query: {
          team: ctx.team,
          token_id: inputs.token_id.value.trim(),
          action: inputs.action.value.trim(),
          since: iso(inputs.since.value),
          until: iso(inputs.until.value),
          limit: 50,
          cursor,
        },
      }));
    } catch (error) {
      problem.textContent = error.message;
      problem.hidden = false;
      return { next: null };
    }
    if (page === undefined) return undefined;
    fill(holder, h("table", { class: "audit" },
      h("caption", {}, "Audit events"),
      h("thead", {}, h("tr", {}, ["Time", "Action", "Token", "By", "Request and outcome", "Details"].map((label) => h("th", { scope: "col" }, label)))),
      h("tbody", {}, page.events.length === 0
        ? h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No events match."))
        : page.events.map((event) => h("tr", {},
          h("td", {}, when(event.time, "")),
          h("td", {}, h("code", {}, event.action)),
          h("td", {}, [event.token_name || event.name || "", event.token_id ? h("code", { class: "id" }, event.token_id) : null]),
          h("td", {}, event.actor_name || event.actor_id || ""),
          h("td", {},
            event.method ? [h("code", {}, `${event.method} ${event.path}`), h("span", { class: "id" }, `→ ${event.status}`)] : null,
            event.step ? [h("span", { class: `badge ${String(event.action).endsWith("denied") ? "revoked" : "active"}` }, event.step),
              event.reason ? h("span", { class: "reason" }, event.reason) : null] : null),
          h("td", { class: "rest" }, rest(event)),
        )))));
    return page;
  });

  const form = h("form", { class: "filters", novalidate: true },
    field("Token ID", inputs.token_id), field("Action", inputs.action), field("Since", inputs.since), field("Until", inputs.until),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Apply")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    pages.first();
  });
  fill(panel, form, problem, holder, pages.el);
  await pages.first();
}
