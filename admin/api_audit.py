"""The admin API's audit reading, leak reports and whoami."""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from tokenward import schema, schema_reports
from tokenward.accounts import audit_account_match
from tokenward.endpoints import Body, Call, Routes, api_error, json_response
from tokenward.gateway.durations import parse_duration
from tokenward.gateway.scopes import format_scopes
from tokenward.gateway.token_scan import scan_tokens
from tokenward.permissions import any_admin, audit_reader, audit_team, authenticated
from tokenward.rules import Invalid, iso, time_field
from tokenward.views import bad_cursor, bulk_work, cursor_parts, encode_cursor, page_limit

routes = Routes("audit")
AUDIT_SCAN_BUDGET = 5000  # stream entries one call examines (in chunks of AUDIT_CHUNK)
AUDIT_CHUNK = 500
AUDIT_MAX_LIMIT = 1000
MAX_LEAKS = 100  # tokens one leak report checks
_STREAM_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_AUDIT_QUERY = ("org", "token_id", "team", "action", "service_account", "since", "until", "limit", "cursor")
_SUBJECT_FIELDS = ("org", "team", "token_name", "service_account")
_ACTOR_FIELDS = ("actor_id", "actor_name", "actor_org", "actor_team", "client_ip", "request_id")


@routes(
    "GET",
    "/v1/audit",
    "Read audit events",
    permission=audit_reader,
    responses={200: schema_reports.AUDIT_LIST, 400: schema.ERROR},
    query=tuple((name, "integer" if name == "limit" else "string") for name in _AUDIT_QUERY),
    max_limit=AUDIT_MAX_LIMIT,
)
async def read_audit(call: Call) -> web.Response:
    """Recent audit events of the caller's org (a team admin sees its own team's), newest first,
    one page at a time (`service_account`: a name or id; an account's events before and after a
    rename, by its stable id): a page examines at most 5000 stream entries, so with filters it may
    hold fewer than `limit` events; follow `next` until it is null."""
    org, team = call.caller.token.org, audit_team(call)
    limit = page_limit(call, maximum=AUDIT_MAX_LIMIT)
    start, cursor = audit_range(call)
    wanted = {k: call.query[k] for k in ("token_id", "action") if k in call.query}
    account = await audit_account_match(call.runtime.store, org, call.query.get("service_account"))
    events: list[dict[str, Any]] = []
    scanned, last, more = 0, None, cursor is not None  # last: the oldest entry examined
    async with bulk_work(call):
        while more and len(events) < limit and scanned < AUDIT_SCAN_BUDGET:
            assert cursor is not None
            page = await call.runtime.store.read_audit(start, cursor, count=AUDIT_CHUNK)
            more = len(page) == AUDIT_CHUNK
            for i, (stream_id, event) in enumerate(page):
                last, scanned = stream_id, scanned + 1
                if not _audit_visible(event, org, team) or any(event.get(k) != v for k, v in wanted.items()):
                    continue
                if account is not None and not account(event):
                    continue
                events.append({"id": stream_id, "time": iso(event.get("ts")), **_audit_seen_from(event, org)})
                if len(events) >= limit:
                    more = more or i < len(page) - 1
                    break
            if last is not None:
                cursor = _stream_id_before(last)
                more = more and cursor is not None
    return json_response({"events": events, "next": encode_cursor("a", last) if more and last else None})


def audit_range(call: Call) -> tuple[str, str | None]:
    """The stream ids to read from `since` and `until` and the cursor: (oldest, newest first
    read; None: nothing to read)."""
    start, end = "-", "+"
    cursor: str | None = end
    for field in ("since", "until"):
        if field in call.query:
            millis = max(int(_time_or_ago(call.query[field], field) * 1000), 0)  # ids start at 0
            if field == "since":
                start = f"{millis}-0"
            else:
                end = f"{millis}-18446744073709551615"
    parts = cursor_parts(call, 2)
    if parts is not None:
        kind, last_seen = parts
        if kind != "a" or not _STREAM_ID_RE.fullmatch(last_seen) or max(_parse_stream_id(last_seen)) >= 2**64:
            raise bad_cursor()
        cursor = _stream_id_before(last_seen)
        if cursor is not None and end != "+" and _parse_stream_id(end) < _parse_stream_id(cursor):
            cursor = end
    elif end != "+":
        cursor = end
    return start, cursor


def _audit_visible(event: dict[str, Any], org: str, team: str | None) -> bool:
    """An event is about its subject (org, team) and made by its actor (actor_org, actor_team):
    each pair is matched whole. A leak report crosses orgs, so subject and actor can be in
    different orgs (or teams of the same name): matching org on one side and team on the
    other would show a team another team's events."""
    for event_org, event_team in (
        (event.get("org"), event.get("team")),
        (event.get("actor_org"), event.get("actor_team")),
    ):
        if event_org == org and (team is None or event_team == team):
            return True
    return False


def _audit_seen_from(event: dict[str, Any], org: str) -> dict[str, Any]:
    """`event` as a reader in `org` may see it: nothing crosses orgs. The side of a cross-org
    event (a leak report) that is in another org shows no names, addresses or ids beyond the
    token id the reporter already holds."""
    if event.get("org") not in (org, None):
        event = {k: v for k, v in event.items() if k not in _SUBJECT_FIELDS}
    if event.get("actor_org") not in (org, None):
        event = {k: v for k, v in event.items() if k not in _ACTOR_FIELDS}
    return event


def _parse_stream_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq)


def _stream_id_before(stream_id: str) -> str | None:
    """The greatest stream id below `stream_id` (None: there is none)."""
    ms, _, seq = stream_id.partition("-")
    if int(seq) > 0:
        return f"{ms}-{int(seq) - 1}"
    if int(ms) > 0:
        return f"{int(ms) - 1}-18446744073709551615"
    return None


def _time_or_ago(text: str, field: str) -> float:
    """An RFC 3339 time, or a duration meaning that long ago (`since=1h`)."""
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    except OverflowError:
        raise api_error(400, "invalid_request", f"{field}: {text!r} is too long ago", field) from None
    try:
        return time_field(text, field)
    except Invalid as exc:  # the message names every form `since`/`until` take, durations too
        ago = "; or how long ago, e.g. '1h', '7d'"
        raise Invalid(exc.message + ago, field) from None


@routes(
    "POST",
    "/v1/leaks",
    "Report leaked tokens",
    permission=any_admin,
    body=Body(schema_reports.LEAKS),
    responses={200: schema_reports.LEAKS_RESULT},
    tag="leaks",
)
async def report_leaks(call: Call) -> web.Response:
    """Report leaked plaintext tokens (at most 100 per call), given as `tokens` or found in any
    `text` (`found`: how many token-shaped strings it holds): each valid one is revoked at once
    and audited as token.leaked; `throttled` results (the failed-verification throttle is
    empty) should be reported again after Retry-After."""
    tokens, actor = call.tokens, call.actor
    reported, extra = leak_candidates(call.body)
    results = []
    for text in reported:
        shown, result = await tokens.report_leak(actor, text)
        results.append({"token": shown, "result": result})
    if any(r["result"] == "throttled" for r in results):
        return json_response({"results": results, **extra}, 200, **{"Retry-After": "1"})
    return json_response({"results": results, **extra})


def leak_candidates(body: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The tokens a leak report names: `tokens` as given, then those found in `text` (with a
    valid checksum, each once; `found` counts every token-shaped string in it)."""
    reported = list(body.get("tokens", []))
    extra: dict[str, Any] = {}
    if "text" in body:
        scan = scan_tokens(body["text"])
        reported += [t for t in scan.tokens if t not in reported]
        extra["found"] = scan.shaped
    elif not reported:
        raise api_error(400, "invalid_request", "give `tokens` or `text`", "tokens")
    if len(reported) > MAX_LEAKS:
        raise api_error(
            400, "invalid_request", f"at most {MAX_LEAKS} tokens per report: split the text", "text"
        )
    return reported, extra


@routes(
    "GET",
    "/v1/whoami",
    "Who the calling token is",
    permission=authenticated,
    responses={200: schema.WHOAMI},
    tag="identity",
)
async def whoami(call: Call) -> web.Response:
    """The calling token (any active token): its id, name, org, team, service account, scopes
    (those held and those in effect) and expiry."""
    principal = call.caller
    token = principal.token
    return json_response(
        {
            "id": token.id,
            "name": token.name,
            "org": token.org,
            "team": token.team,
            "service_account": principal.service_account,
            "scopes": format_scopes(token.scopes),
            "effective_scopes": format_scopes(principal.effective_scopes),
            "expires_at": iso(token.expires_at),
            "environment": token.environment,
        }
    )
