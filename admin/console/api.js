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

/** `/v1/orgs/a/teams/b` from ["orgs", "a", "teams", "b"]: each name escaped as a segment. */
export function path(...segments) {
  return "/v1/" + segments.map((part) => encodeURIComponent(part)).join("/");
}

/** Call the API: the parsed JSON, or an ApiError with the API's code, message and field. */
export async function api(method, url, { query, body } = {}) {
  const target = new URL(url, location.origin);
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
  if (!response.ok) throw new ApiError(response.status, data || {});
  return data;
}
