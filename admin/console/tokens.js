// The Tokens tab: the table with its filters and pages, Create token, the copy-once dialog,
// and per row Revoke, Restore, Rotate, Delete and Details.

import { api, ApiError, path } from "./api.js";
import { checkboxes, confirmDialog, dialogForm, field, keyValues, lines, openDialog, select } from "./dialogs.js";
import { h, fill, relative, when } from "./dom.js";
import { keepFocus, newest, pager } from "./pages.js";

const PAGE = 25;
const STATUSES = [["", "All"], ["active", "Active"], ["grace", "Grace"], ["revoked", "Revoked"], ["expired", "Expired"]];
const EXPIRING = [["", "Any time"], ["7d", "7 days"], ["30d", "30 days"], ["90d", "90 days"]];
const EXPIRY = [["7d", "7 days"], ["30d", "30 days"], ["90d", "90 days"], ["365d", "1 year"], ["date", "Custom date"], ["never", "Never"]];

/** One line on what a scope lets a token do (the create form's multi-select). */
export function scopeMeaning(scope) {
  if (scope === "admin:team") return { text: "manages this team's tokens and service accounts: an admin token", warn: true };
  if (scope === "admin:org") return { text: "administers the whole org", warn: true };
  const [level, resource] = scope.includes(":") ? scope.split(":", 2) : [scope, null];
  const on = resource === "*" ? "every API resource" : resource;
  if (resource === null) return { text: `the ${scope} capability (routes that require it by name)` };
  if (level === "read") return { text: `reads ${on}` };
  if (level === "write") return { text: `reads and writes ${on}` };
  if (level === "admin") return { text: `reads, writes and administers ${on}` };
  return null;
}

const LEVELS = ["read", "write", "admin"];
const RESERVED = new Set(["org", "team"]); // admin-plane resources: no wildcard covers them

/** Whether scope `held` covers `wanted` (gateway/scopes.py: read < write < admin on one
 * resource; `*` any resource but org and team; a capability only itself). */
export function covers(held, wanted) {
  if (held === wanted) return true;
  if (!held.includes(":") || !wanted.includes(":")) return false;
  const [hl, hr] = held.split(":", 2);
  const [wl, wr] = wanted.split(":", 2);
  const resourceOk = hr === wr || (hr === "*" && !RESERVED.has(wr));
  return resourceOk && LEVELS.indexOf(hl) >= LEVELS.indexOf(wl) && LEVELS.indexOf(wl) >= 0;
}

/** Whether the signed-in token may grant `scope` (an org admin grants within the team's set;
 * a team admin only what it holds itself). */
function canGrant(ctx, scope) {
  if (ctx.orgAdmin) return true;
  return (ctx.me.effective_scopes || []).some((held) => covers(held, scope));
}

function tokensPath(ctx, ...rest) {
  return path("orgs", ctx.org, "teams", ctx.team, "tokens", ...rest);
}

export async function tokensTab(panel, ctx) {
  const accounts = await api("GET", path("orgs", ctx.org, "teams", ctx.team, "service-accounts"), { query: { limit: 200 } })
    .then((page) => page.service_accounts.map((account) => account.name))
    .catch(() => []);
  const filters = {
    status: select(STATUSES, ctx.query.get("status") || ""),
    expiring: select(EXPIRING, ctx.query.get("expiring_within") || ""),
    account: select([["", "Any"], ...accounts.map((name) => [name, name])], ctx.query.get("service_account") || ""),
    search: h("input", { type: "search", autocomplete: "off" }),
  };
  const tableHolder = h("div", { class: "scroll" });
  const fresh = newest();
  let rows = [];

  function draw() {
    const needle = filters.search.value.trim().toLowerCase();
    const shown = needle
      ? rows.filter((token) => [token.name, token.description, token.display_prefix, token.id, token.service_account, ...(token.scopes || [])]
        .some((text) => text && text.toLowerCase().includes(needle)))
      : rows;
    fill(tableHolder, tokenTable(shown, ctx, reload));
    keepFocus(tableHolder.querySelector("table"));
  }

  const pages = pager(async (cursor) => {
    const page = await fresh(api("GET", tokensPath(ctx), {
      query: {
        limit: PAGE,
        cursor,
        status: filters.status.value,
        expiring_within: filters.expiring.value,
        service_account: filters.account.value,
      },
    }));
    if (page === undefined) return undefined;
    rows = page.tokens;
    draw();
    return page;
  }, ctx.failed);

  function reload() {
    pages.again().catch(ctx.failed);
  }

  for (const control of [filters.status, filters.expiring, filters.account]) {
    control.addEventListener("change", () => pages.first().catch(ctx.failed));
  }
  filters.search.addEventListener("input", draw);

  const notice = h("p", { class: "notice", role: "status" });
  ctx.notice = (text, bad = false) => {
    notice.textContent = text;
    notice.className = bad ? "notice error" : "notice";
  };
  fill(
    panel,
    notice,
    h("div", { class: "toolbar" },
      h("button", { type: "button", class: "primary", onclick: () => createDialog(ctx, accounts, reload) }, "Create token")),
    h("div", { class: "filters" },
      field("Status", filters.status),
      field("Expiring within", filters.expiring),
      field("Service account", filters.account),
      field("Search", filters.search, { hint: "name, prefix, id or scope, on this page" })),
    tableHolder,
    pages.el,
  );
  await pages.first();
}

function statusCell(token) {
  const badge = h("span", { class: `badge ${token.status}` }, token.status);
  if (token.status === "revoked") {
    const why = [token.revoke_reason, token.revoked_by ? `by ${token.revoked_by}` : null, token.revoked_at ? relative(token.revoked_at) : null]
      .filter(Boolean).join(", ");
    return [badge, why ? h("span", { class: "reason" }, why) : null];
  }
  if (token.status === "grace") {
    return [badge, h("span", { class: "reason" }, "rotated; works until ", when(token.grace_until))];
  }
  if (token.status === "expired") return [badge, h("span", { class: "reason" }, "expired ", when(token.expires_at))];
  return badge;
}

function scopesCell(token) {
  const ineffective = new Set(token.ineffective_scopes || []);
  return token.scopes.map((scope) => ineffective.has(scope)
    ? h("code", { class: "scope ineffective", title: "the team no longer grants this scope" }, scope, h("span", { class: "sr" }, " (not granted by the team)"))
    : h("code", { class: "scope" }, scope));
}

function tokenTable(tokens, ctx, reload) {
  const head = ["Name", "Prefix", "Scopes", "Service account", "Last used", "Expires", "Status", "Actions"];
  return h(
    "table",
    { class: "tokens" },
    h("caption", {}, "Tokens"),
    h("thead", {}, h("tr", {}, head.map((label) => h("th", { scope: "col" }, label)))),
    h("tbody", {}, tokens.length === 0
      ? h("tr", {}, h("td", { colspan: head.length, class: "muted" }, "No tokens match."))
      : tokens.map((token) => h("tr", { "data-token-id": token.id },
        h("th", { scope: "row" }, h("span", { class: "name" }, token.name), token.description ? h("span", { class: "hint" }, token.description) : null),
        h("td", {}, h("code", { class: "prefix" }, token.display_prefix)),
        h("td", {}, scopesCell(token)),
        h("td", {}, token.service_account || h("span", { class: "muted" }, "—")),
        h("td", {}, when(token.last_used_at)),
        h("td", {}, when(token.expires_at)),
        h("td", {}, statusCell(token)),
        h("td", { class: "row-actions" }, rowActions(token, ctx, reload)),
      ))),
  );
}

function rowActions(token, ctx, reload) {
  const live = token.status === "active" || token.status === "grace";
  const label = (verb) => ({ "aria-label": verb, title: `${verb} ${token.name}` });
  return [
    live ? h("button", { type: "button", ...label("Revoke"), onclick: () => revokeDialog(token, ctx, reload) }, "Revoke") : null,
    token.status === "revoked" ? h("button", { type: "button", ...label("Restore"), onclick: () => restore(token, ctx, reload) }, "Restore") : null,
    token.status === "active" && token.scopes.every((scope) => canGrant(ctx, scope))
      ? h("button", { type: "button", ...label("Rotate"), onclick: () => rotateDialog(token, ctx, reload) }, "Rotate") : null,
    token.status === "revoked" || token.status === "expired"
      ? h("button", { type: "button", ...label("Delete"), onclick: () => deleteDialog(token, ctx, reload) }, "Delete") : null,
    h("button", { type: "button", ...label("Details"), onclick: () => detailsDrawer(token, ctx) }, "Details"),
  ];
}

function revokeDialog(token, ctx, reload) {
  const reason = h("input", { type: "text", maxlength: 200, autocomplete: "off" });
  confirmDialog("Revoke token", `Revoke ${token.name}? Requests with it are refused at once, on every gateway.`, "Revoke token",
    async () => {
      const body = reason.value.trim() ? { reason: reason.value.trim() } : {};
      await api("POST", tokensPath(ctx, token.id, "revoke"), { body });
      reload();
    }, { extra: [field("Reason", reason, { name: "reason", hint: "optional: recorded with the revocation" })] });
}

async function restore(token, ctx, reload) {
  try {
    await api("POST", tokensPath(ctx, token.id, "restore"), { body: {} });
    ctx.notice(`Restored ${token.name}.`);
  } catch (error) {
    ctx.notice(`Could not restore ${token.name}: ${error.message}`, true);
  }
  reload();
}

function deleteDialog(token, ctx, reload) {
  confirmDialog("Delete token", `Delete ${token.name} for good? Its record and its place in the lists go; audit events stay.`, "Delete token",
    async () => {
      await api("DELETE", tokensPath(ctx, token.id));
      reload();
    });
}

function rotateDialog(token, ctx, reload) {
  const grace = h("input", { type: "text", value: "24h", autocomplete: "off" });
  openDialog("Rotate token", (dialogCtx) => [
    h("p", {}, `Rotate ${token.name}: a new token with the same scopes, name and lifetime; the old one keeps working for the grace period.`),
    token.id === ctx.me.id
      ? h("p", { class: "warn" }, "This is the token you are signed in with: once its grace period ends, sign in again with the new one.")
      : null,
    dialogForm(dialogCtx, [field("Grace period", grace, { name: "grace_period", hint: "e.g. 24h, 7d, or 0s to stop the old token at once" })],
      "Rotate token", async () => {
        const rotated = await api("POST", tokensPath(ctx, token.id, "rotate"), { body: { grace_period: grace.value.trim() } });
        dialogCtx.close();
        reload();
        copyOnceDialog(rotated, "Copy the rotated token");
      }),
  ]);
}

function createDialog(ctx, accounts, reload) {
  const permissions = ctx.info.permissions || [];
  const name = h("input", { type: "text", maxlength: 100, required: true, autocomplete: "off" });
  const description = h("input", { type: "text", maxlength: 1000, autocomplete: "off" });
  const scopes = checkboxes("Scopes", permissions, {
    name: "scopes",
    describe: (scope) => (canGrant(ctx, scope) ? scopeMeaning(scope) : { text: "your token cannot grant this: it does not hold it", warn: true }),
  });
  for (const box of scopes.querySelectorAll("input[type=checkbox]")) box.disabled = !canGrant(ctx, box.value);
  const expiry = select(EXPIRY, "90d");
  const date = h("input", { type: "date", hidden: true, "aria-label": "Expiry date" });
  const account = select([["", "(none)"], ...accounts.map((one) => [one, one])], ctx.query.get("service_account") || "");
  const constraints = h("textarea", { rows: 2, placeholder: "api=pets" });
  const cidrs = h("textarea", { rows: 2, placeholder: "10.0.0.0/8" });
  const metadata = h("textarea", { rows: 2, placeholder: "ticket=OPS-123" });
  expiry.addEventListener("change", () => {
    date.hidden = expiry.value !== "date";
  });
  const expiryField = field("Expires", expiry, { name: "expires_in", hint: "Never only where the server's policy allows it (tokens.default_ttl: never)" });
  expiryField.insertBefore(date, expiryField.querySelector(".hint"));
  const expiresAtHolder = h("div", { "data-field": "expires_at" }, h("p", { class: "error", role: "alert", hidden: true }));

  openDialog("Create token", (dialogCtx) => [
    dialogForm(dialogCtx, [
      field("Name", name, { name: "name" }),
      field("Description", description, { name: "description" }),
      permissions.length ? scopes : h("p", { class: "warn" }, "This team's permission set is empty: its tokens can do nothing."),
      expiryField,
      expiresAtHolder,
      field("Service account", account, { name: "service_account" }),
      field("Constraints", constraints, { name: "constraints", hint: "claims the token is bound to, key=value per line" }),
      field("Allowed CIDRs", cidrs, { name: "allowed_cidrs", hint: "client networks it may be used from, one per line (empty: any)" }),
      field("Metadata", metadata, { name: "metadata", hint: "key=value per line, for your own records" }),
    ], "Create", async () => {
      if (!name.value.trim()) {
        throw new ApiError(400, { error: "invalid_request", message: "name: give the token a name", field: "name" });
      }
      const body = {
        name: name.value.trim(),
        scopes: [...scopes.querySelectorAll("input:checked")].map((box) => box.value),
      };
      if (description.value.trim()) body.description = description.value.trim();
      if (expiry.value === "date") {
        if (!date.value) throw new ApiError(400, { error: "invalid_request", message: "expires_at: pick a date", field: "expires_at" });
        body.expires_at = date.value;
      }
      else if (expiry.value !== "never") body.expires_in = expiry.value;
      if (account.value) body.service_account = account.value;
      const bound = keyValues(constraints.value, "constraints");
      if (Object.keys(bound).length) body.constraints = bound;
      const networks = lines(cidrs.value);
      if (networks.length) body.allowed_cidrs = networks;
      const meta = keyValues(metadata.value, "metadata");
      if (Object.keys(meta).length) body.metadata = meta;
      const created = await api("POST", tokensPath(ctx), { body });
      dialogCtx.close();
      reload();
      copyOnceDialog(created, "Copy your new token", expiry.value === "never" && created.expires_at
        ? `The server's policy gave it an expiry: ${created.expires_at}.` : null);
    }),
  ], { className: "wide" });
  name.focus();
}

/** The plaintext token, once: Copy, the warning, example lines. Closing forgets it; closing
 * before Copy was pressed asks first (Escape included). */
export function copyOnceDialog(created, title, note) {
  const secret = h("input", { type: "text", readOnly: true, value: created.token, class: "secret", spellcheck: "false", "aria-label": "New token" });
  const copied = h("span", { class: "copied", role: "status" });
  const examples = h("pre", { class: "examples" },
    `export SERVICE_TOKEN='${created.token}'\n`,
    "curl -H \"Authorization: Bearer $SERVICE_TOKEN\" https://<gateway>/<path>");
  const state = { copied: false };
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(secret.value);
    } catch {
      secret.select();
      document.execCommand("copy");
    }
    state.copied = true;
    copied.textContent = "Copied";
  };
  const unsure = h("p", { class: "warn", role: "alert", hidden: true });
  openDialog(title, ({ dialog, close }) => {
    const done = () => {
      if (state.copied || !unsure.hidden) {
        close();
        return;
      }
      fill(unsure, "You have not pressed Copy: the token will not be shown again. ",
        h("button", { type: "button", onclick: close }, "Close anyway"));
      unsure.hidden = false;
    };
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      done();
    });
    return [
      h("p", { class: "warn" }, "Copy it now. It will not be shown again: tokenward keeps only its hash."),
      h("div", { class: "copyline" }, secret, h("button", { type: "button", class: "primary", onclick: copy }, "Copy"), copied),
      h("p", { class: "muted" }, `${created.name} · ${created.display_prefix} · `, created.expires_at ? `expires ${created.expires_at}` : "never expires"),
      note ? h("p", { class: "warn" }, note) : null,
      (created.warnings || []).map((warning) => h("p", { class: "warn" }, warning)),
      h("p", {}, "Use it:"),
      examples,
      unsure,
      h("div", { class: "actions" }, h("button", { type: "button", onclick: done }, "Done")),
    ];
  }, {
    className: "wide keep",
    onClose: () => {
      secret.value = "";
      examples.textContent = "";
      delete created.token;
    },
  });
  secret.select();
}

async function detailsDrawer(token, ctx) {
  const body = h("div", { class: "details" }, h("p", { class: "muted" }, "Loading…"));
  openDialog("Token details", ({ close }) => [body, h("div", { class: "actions" }, h("button", { type: "button", onclick: close }, "Close"))],
    { className: "drawer" });
  try {
    const [full, usage] = await Promise.all([
      api("GET", tokensPath(ctx, token.id)),
      api("GET", tokensPath(ctx, token.id, "usage"), { query: { days: 30 } }).catch((error) => ({ error })),
    ]);
    fill(body, tokenFacts(full), usageReport(usage));
  } catch (error) {
    fill(body, h("p", { class: "error", role: "alert" }, error.message));
  }
}

const SHOWN = [
  ["id", "ID"], ["name", "Name"], ["description", "Description"], ["display_prefix", "Prefix"], ["org", "Org"], ["team", "Team"],
  ["service_account", "Service account"], ["environment", "Environment"], ["scopes", "Scopes"], ["effective_scopes", "Effective scopes"],
  ["ineffective_scopes", "Not granted by the team"], ["constraints", "Constraints"], ["allowed_cidrs", "Allowed CIDRs"],
  ["metadata", "Metadata"], ["status", "Status"], ["created_at", "Created"], ["created_by", "Created by"], ["last_used_at", "Last used"],
  ["expires_at", "Expires"], ["grace_until", "Grace until"], ["replaced_by", "Replaced by"], ["revoked_at", "Revoked"],
  ["revoked_by", "Revoked by"], ["revoked_by_level", "Revoked at level"], ["revoke_reason", "Revoke reason"],
  ["service_account_id", "Service account ID"], ["legacy", "Imported from an old system"],
  ["rate_limits", "Rate limits"], ["max_uses", "Max uses"], ["refill", "Refill"], ["remaining", "Uses left"],
];

// a rate limit ({name, limit, per}) as "burst 5/1m"; anything else as it is
function limitText(item) {
  return item && typeof item === "object" ? `${item.name} ${item.limit}/${item.per}` : item;
}

function show(value) {
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (Array.isArray(value)) return value.length ? value.map(limitText).join(", ") : "none";
  if (value && typeof value === "object") {
    const pairs = Object.entries(value);
    return pairs.length ? pairs.map(([key, one]) => `${key}=${one}`).join(", ") : "none";
  }
  return String(value);
}

function tokenFacts(full) {
  const known = new Set(SHOWN.map(([key]) => key));
  const extra = Object.keys(full).filter((key) => !known.has(key)).map((key) => [key, key]);
  return h("dl", { class: "facts" }, [...SHOWN, ...extra]
    .filter(([key]) => full[key] !== undefined && full[key] !== null && full[key] !== "")
    .map(([key, label]) => [h("dt", {}, label), h("dd", {}, /_at$|_until$/.test(key) ? [show(full[key]), " (", relative(full[key]), ")"] : show(full[key]))]));
}

function counts(title, table) {
  const pairs = Object.entries(table || {});
  return h("div", { class: "counts" }, h("h4", {}, title), pairs.length
    ? h("table", {}, h("tbody", {}, pairs.map(([key, count]) => h("tr", {}, h("td", {}, key), h("td", { class: "num" }, String(count))))))
    : h("p", { class: "muted" }, "none"));
}

function usageReport(usage) {
  if (usage.error) return h("section", {}, h("h3", {}, "Usage"), h("p", { class: "muted" }, usage.error.message));
  return h("section", { class: "usage" },
    h("h3", {}, `Usage, last ${usage.days} days`),
    h("p", {}, `${usage.requests} requests, ${usage.allowed ?? 0} allowed, since ${usage.since}.`),
    counts("By route", usage.by_route),
    counts("Refused, by step", usage.refused),
    counts("Scopes used", Object.fromEntries(Object.entries(usage.scopes_used || {}).filter(([, count]) => count > 0))),
    h("p", {}, "Unused scopes: ", usage.unused_scopes.length ? usage.unused_scopes.join(", ") : "none"),
    counts("By day", Object.fromEntries(Object.entries(usage.by_day || {}).filter(([, count]) => count > 0))));
}
