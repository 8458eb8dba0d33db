// The tokenward admin console: sign in with a token, then teams, tokens, service accounts,
// audit events and team settings, all through the /v1 admin API. Navigation is the URL hash
// (`#/teams/<team>/tokens`); the token never appears in a URL.

import { api, ApiError, path, session } from "./api.js";
import { h, fill } from "./dom.js";
import { auditTab } from "./audit.js";
import { accountsTab } from "./accounts.js";
import { settingsTab } from "./settings.js";
import { tokensTab } from "./tokens.js";

const app = document.getElementById("app");
const bar = document.getElementById("bar");

const TABS = [
  ["tokens", "Tokens", tokensTab],
  ["service-accounts", "Service accounts", accountsTab],
  ["audit", "Audit", auditTab],
  ["settings", "Settings", settingsTab],
];

/** Who is signed in: whoami, and what its scopes let it do here. */
function powersOf(me) {
  const effective = new Set(me.effective_scopes || []);
  return {
    me,
    org: me.org,
    orgAdmin: me.team === null && effective.has("admin:org"),
    teamAdmin: me.team !== null && effective.has("admin:team"),
  };
}

let context = null;

function signOut(message) {
  session.clear();
  context = null;
  history.replaceState(null, "", location.pathname);
  signInScreen(message);
}

function header() {
  const { me, orgAdmin } = context;
  bar.hidden = false;
  fill(
    bar,
    h("a", { class: "brand", href: orgAdmin ? "#/teams" : `#/teams/${encodeURIComponent(me.team)}/tokens` }, "tokenward"),
    h("span", { class: "who" }, "org ", h("strong", {}, me.org), me.team ? [" · team ", h("strong", {}, me.team)] : null,
      " · signed in as ", h("strong", {}, me.name)),
    h("button", { type: "button", onclick: () => signOut() }, "Sign out"),
  );
}

function signInScreen(message) {
  bar.hidden = true;
  fill(bar);
  const input = h("input", { type: "password", id: "token", autocomplete: "off", spellcheck: "false", required: true });
  const error = h("p", { class: "error", role: "alert", hidden: !message }, message || "");
  const button = h("button", { type: "submit", class: "primary" }, "Sign in");
  const form = h(
    "form",
    { class: "signin", novalidate: true },
    h("h1", {}, "tokenward console"),
    h("p", { class: "muted" }, "Sign in with an admin token: an org admin (admin:org) or a team admin (admin:team). " +
      "It is kept for this tab only and sent to the admin API as a Bearer header."),
    h("div", { class: "field" }, h("label", { for: "token" }, "Token"), input),
    error,
    h("div", { class: "actions" }, button),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) {
      error.textContent = "Paste a token first.";
      error.hidden = false;
      return;
    }
    button.disabled = true;
    session.set(token);
    input.value = "";
    try {
      await start();
    } catch (failure) {
      session.clear();
      error.textContent = failure.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  fill(app, form);
  input.focus();
}

function refusalScreen() {
  const { me } = context;
  header();
  fill(
    app,
    h("section", { class: "refusal" },
      h("h1", {}, "This token cannot administer tokens"),
      h("p", {}, "The token ", h("strong", {}, me.name), " holds ", (me.effective_scopes || []).join(", ") || "no scopes",
        ". The console needs an org admin token (admin:org) or a team admin token (admin:team)."),
      h("p", { class: "muted" }, "Ask an admin of your team for one, or sign out and use another token.")),
  );
}

/** Sign-in with the token in sessionStorage: whoami decides what the console offers. */
async function start() {
  context = powersOf(await api("GET", "/v1/whoami"));
  if (!context.orgAdmin && !context.teamAdmin) {
    refusalScreen();
    return;
  }
  header();
  route();
}

function parseHash() {
  const [where, query] = location.hash.replace(/^#/, "").split("?");
  const parts = where.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query || "") };
}

function route() {
  if (!context || (!context.orgAdmin && !context.teamAdmin)) return;
  const { parts, query } = parseHash();
  const home = context.orgAdmin ? "#/teams" : `#/teams/${encodeURIComponent(context.me.team)}/tokens`;
  if (parts[0] !== "teams" || (parts.length === 1 && !context.orgAdmin)) {
    location.replace(home);
    return;
  }
  if (parts.length === 1) {
    teamsScreen(query);
    return;
  }
  teamScreen(parts[1], parts[2] || "tokens", query).catch(failed);
}

function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    signOut(`Signed out: ${error.message}`);
    return;
  }
  fill(app, h("section", { class: "problem" }, h("h1", {}, "Something went wrong"), h("p", { role: "alert" }, error.message),
    error.requestId ? h("p", { class: "muted" }, `request id ${error.requestId}`) : null));
}

async function teamsScreen(query) {
  const cursor = query.get("cursor");
  const page = await api("GET", path("orgs", context.org, "teams"), { query: { limit: 50, cursor } }).catch(failed);
  if (!page) return;
  const table = h(
    "table",
    {},
    h("caption", {}, "Teams"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Team"), h("th", { scope: "col" }, "Permission set"), h("th", { scope: "col" }, "Created"))),
    h("tbody", {}, page.teams.map((team) => h("tr", {},
      h("td", {}, h("a", { href: `#/teams/${encodeURIComponent(team.name)}/tokens` }, team.name)),
      h("td", {}, team.permissions.length ? team.permissions.map((scope) => h("code", { class: "scope" }, scope)) : h("span", { class: "muted" }, "none")),
      h("td", {}, team.created_at ? h("time", { datetime: team.created_at, title: team.created_at }, team.created_at.slice(0, 10)) : ""),
    ))),
  );
  fill(
    app,
    h("h1", {}, "Teams"),
    h("p", { class: "muted" }, `Every team of ${context.org}. Open one to manage its tokens.`),
    page.teams.length ? h("div", { class: "scroll" }, table) : h("p", {}, "No teams yet: create one with ", h("code", {}, "tokenward team create")),
    page.next ? h("p", {}, h("a", { href: `#/teams?cursor=${encodeURIComponent(page.next)}` }, "Next page")) : null,
  );
}

async function teamScreen(team, tab, query) {
  if (!context.orgAdmin && team !== context.me.team) {
    fill(app, h("section", { class: "problem" }, h("h1", {}, "Not your team"),
      h("p", { role: "alert" }, "This token administers its own team only."),
      h("p", {}, h("a", { href: `#/teams/${encodeURIComponent(context.me.team)}/tokens` }, "Back to your team"))));
    return;
  }
  const tabs = TABS.filter(([key]) => key !== "settings" || context.orgAdmin);
  const current = tabs.find(([key]) => key === tab) || tabs[0];
  const info = await api("GET", path("orgs", context.org, "teams", team));
  const panel = h("section", { role: "tabpanel", id: "panel", "aria-labelledby": `tab-${current[0]}`, tabindex: "-1" });
  const tablist = h("div", { role: "tablist", "aria-label": `${team} sections` }, tabs.map(([key, label]) => h(
    "a",
    {
      role: "tab",
      id: `tab-${key}`,
      href: `#/teams/${encodeURIComponent(team)}/${key}`,
      "aria-selected": key === current[0] ? "true" : "false",
      "aria-controls": "panel",
    },
    label,
  )));
  fill(
    app,
    context.orgAdmin ? h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/teams" }, "Teams"), " / ") : null,
    h("h1", {}, team),
    tablist,
    panel,
  );
  await current[2](panel, { ...context, team, info, query, failed, refresh: route });
}

window.addEventListener("hashchange", route);

if (session.token) {
  start().catch((error) => signOut(error.message));
} else {
  signInScreen();
}
