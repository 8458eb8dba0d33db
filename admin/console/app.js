// The tokenward admin console: sign in with a token, then teams, tokens, service accounts,
// audit events and team settings, all through the /v1 admin API. Navigation is the URL hash
// (`#/teams/<team>/tokens`); the token never appears in a URL.

import { api, ApiError, path, session, SIGNED_OUT } from "./api.js";
import { h, fill } from "./dom.js";
import { newest, pager } from "./pages.js";
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
let shown = 0; // which navigation the page shows: a slower answer to an earlier one is dropped

/** Show `children` as the page, titled `title`, and move focus to it (screen readers and
 * keyboards start from the new content, not from the top of the document). */
function page(title, ...children) {
  document.title = `${title} · tokenward console`;
  fill(app, ...children);
  const heading = app.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

function signOut(message) {
  session.clear();
  shown += 1;
  closeDialogs();
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
  document.title = "Sign in · tokenward console";
  fill(app, form);
  input.focus();
}

function refusalScreen() {
  const { me } = context;
  header();
  page(
    "Refused",
    h("section", { class: "refusal" },
      h("h1", {}, "This token cannot administer tokens"),
      h("p", {}, "The token ", h("strong", {}, me.name), " holds ", (me.effective_scopes || []).join(", ") || "no scopes",
        ". The console needs an org admin token (admin:org) or a team admin token (admin:team)."),
      h("p", { class: "muted" }, "Ask an admin of your team for one, or sign out and use another token.")),
  );
}

/** Sign-in with the token in sessionStorage: whoami decides what the console offers. */
async function start() {
  context = powersOf(await api("GET", "v1/whoami"));
  if (!context.orgAdmin && !context.teamAdmin) {
    refusalScreen();
    return;
  }
  header();
  route();
}

/** The hash's path and query; null when it is not one this console wrote (bad escapes, dot
 * segments: a team is never named "." or ".."). */
function parseHash() {
  const [where, query] = location.hash.replace(/^#/, "").split("?");
  try {
    const parts = where.split("/").filter(Boolean).map(decodeURIComponent);
    if (parts.some((part) => part === "." || part === ".." || part.includes("/"))) return null;
    return { parts, query: new URLSearchParams(query || "") };
  } catch {
    return null;
  }
}

/** Close the open dialogs: they act on the page they were opened from. The copy-once dialog
 * stays (its token is shown nowhere else). */
function closeDialogs() {
  for (const open of document.querySelectorAll("dialog:not(.keep)")) open.close();
}

function route() {
  if (!context || (!context.orgAdmin && !context.teamAdmin)) return;
  shown += 1;
  closeDialogs();
  const home = context.orgAdmin ? "#/teams" : `#/teams/${encodeURIComponent(context.me.team)}/tokens`;
  const where = parseHash();
  if (where === null) {
    problem("Not a page of the console", "That address is not one the console makes.", home);
    return;
  }
  const { parts, query } = where;
  if (parts[0] !== "teams" || (parts.length === 1 && !context.orgAdmin) || parts.length > 3) {
    location.replace(home);
    return;
  }
  if (parts.length === 1) {
    teamsScreen(query, shown).catch(failedFor(shown));
    return;
  }
  teamScreen(parts[1], parts[2], query, shown).catch(failedFor(shown));
}

function problem(title, message, back) {
  page(title, h("section", { class: "problem" }, h("h1", {}, title), h("p", { role: "alert" }, message),
    back ? h("p", {}, h("a", { href: back }, "Back")) : null));
}

/** What to do with a failure of navigation `mine`: show it, unless the user went elsewhere
 * meanwhile (then it belongs to a page no longer shown) or it was a 401 (SIGNED_OUT signed out). */
function failedFor(mine) {
  return (error) => {
    if (mine !== shown || (error instanceof ApiError && error.status === 401)) return;
    page("Something went wrong", h("section", { class: "problem" }, h("h1", {}, "Something went wrong"),
      h("p", { role: "alert" }, error.message),
      error.requestId ? h("p", { class: "muted" }, `request id ${error.requestId}`) : null,
      h("div", { class: "actions" }, h("button", { type: "button", onclick: route }, "Try again"),
        h("a", { href: context && context.orgAdmin ? "#/teams" : "#/" }, "Home"))));
  };
}

async function teamsScreen(query, mine) {
  const holder = h("div");
  const fresh = newest();
  const pages = pager(async (cursor) => {
    const found = await fresh(api("GET", path("orgs", context.org, "teams"), { query: { limit: 50, cursor } }));
    if (found === undefined) return undefined;
    fill(holder, found.teams.length ? h("div", { class: "scroll" }, teamsTable(found.teams))
      : h("p", {}, "No teams yet: create one with ", h("code", {}, "tokenward team create")));
    return found;
  }, failedFor(mine));
  await pages.first();
  if (mine !== shown) return;
  page(
    "Teams",
    h("h1", {}, "Teams"),
    h("p", { class: "muted" }, `Every team of ${context.org}. Open one to manage its tokens.`),
    holder,
    pages.el,
  );
}

function teamsTable(teams) {
  return h(
    "table",
    {},
    h("caption", {}, "Teams"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Team"), h("th", { scope: "col" }, "Permission set"), h("th", { scope: "col" }, "Created"))),
    h("tbody", {}, teams.map((team) => h("tr", {},
      h("td", {}, h("a", { href: `#/teams/${encodeURIComponent(team.name)}/tokens` }, team.name)),
      h("td", {}, team.permissions.length ? team.permissions.map((scope) => h("code", { class: "scope" }, scope)) : h("span", { class: "muted" }, "none")),
      h("td", {}, team.created_at ? h("time", { datetime: team.created_at, title: team.created_at }, team.created_at.slice(0, 10)) : ""),
    ))),
  );
}

async function teamScreen(team, tab, query, mine) {
  if (!context.orgAdmin && team !== context.me.team) {
    problem("Not your team", "This token administers its own team only.", `#/teams/${encodeURIComponent(context.me.team)}/tokens`);
    return;
  }
  const tabs = TABS.filter(([key]) => key !== "settings" || context.orgAdmin);
  const current = tabs.find(([key]) => key === tab);
  if (!current) {
    location.replace(`#/teams/${encodeURIComponent(team)}/tokens`);
    return;
  }
  const info = await api("GET", path("orgs", context.org, "teams", team));
  if (mine !== shown) return; // the user went elsewhere meanwhile
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
  tablist.addEventListener("keydown", (event) => {
    const links = [...tablist.querySelectorAll("[role=tab]")];
    const at = links.indexOf(document.activeElement);
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (at < 0 || !step) return;
    event.preventDefault();
    links[(at + step + links.length) % links.length].focus();
  });
  page(
    `${current[1]} · ${team}`,
    context.orgAdmin ? h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/teams" }, "Teams"), " / ") : null,
    h("h1", {}, team),
    tablist,
    panel,
  );
  await current[2](panel, { ...context, team, info, query, failed: failedFor(mine), refresh: route });
}

window.addEventListener("hashchange", route);
window.addEventListener(SIGNED_OUT, (event) => {
  if (session.token && context) signOut(`Signed out: ${event.detail.message}`);
});

/** The console could not start with the token it holds: a 401 forgets it; anything else
 * (the store restarting, the API unreachable) keeps it and offers to try again. */
function resume() {
  start().catch((error) => {
    if (error instanceof ApiError && error.status === 401) {
      signOut(`Signed out: ${error.message}`);
      return;
    }
    page("Cannot reach the admin API", h("section", { class: "problem" }, h("h1", {}, "Cannot reach the admin API"),
      h("p", { role: "alert" }, error.message),
      h("div", { class: "actions" }, h("button", { type: "button", onclick: resume }, "Try again"),
        h("button", { type: "button", onclick: () => signOut() }, "Sign out"))));
  });
}

if (session.token) {
  resume();
} else {
  signInScreen();
}
