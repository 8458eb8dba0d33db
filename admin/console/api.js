// The /v1 admin API, called with the signed-in token as a Bearer header. The token lives in
// sessionStorage for this tab only: never a cookie, never the URL.

const KEY = "tokenward.token";

export const session = {
  get token() {
    return sessionStorage.getItem(KEY);
  },
  set(token) {
    sessionStorage.setItem(KEY, token);
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
};

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `the admin API answered ${status}`);
    this.status = status;
    this.code = body.error || "error";
    this.field = body.field || null;
    this.requestId = body.request_id || null;
  }
}

/** `v1/orgs/a/teams/b` from ["orgs", "a", "teams", "b"]: each name escaped as a segment.
 * Relative to the API's root, the folder above /ui/: the console keeps working when the admin
 * listener is published under a path prefix (`/admin/ui/` calls `/admin/v1/...`). */
export function path(...segments) {
  return "v1/" + segments.map((part) => encodeURIComponent(part)).join("/");
}

/** Where the API is: the folder above the console's own. */
function apiRoot() {
  return new URL("../", new URL(".", location.href));
}

/** Fired on every 401: the signed-in token no longer works (revoked, expired, deleted). */
export const SIGNED_OUT = "tokenward:signed-out";

/** Call the API: the parsed JSON, or an ApiError with the API's code, message and field. */
export async function api(method, url, { query, body } = {}) {
  const target = new URL(url, apiRoot());
  for (const [name, value] of Object.entries(query || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const one of Array.isArray(value) ? value : [value]) target.searchParams.append(name, one);
  }
  const headers = { Accept: "application/json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(target, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
  } catch (error) {
    throw new ApiError(0, { error: "unreachable", message: `the admin API did not answer (${error.message})` });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: "bad_response", message: `the admin API answered ${response.status} with something other than JSON` };
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data || {});
    if (response.status === 401) window.dispatchEvent(new CustomEvent(SIGNED_OUT, { detail: error }));
    throw error;
  }
  return data;
}
