"""The command line's admin API client: one call, and lists followed page by page."""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import orjson

from tokenward.cli_output import CliError
from tokenward.gateway.redaction import redact_token_shaped

DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"


# -- admin API client ----------------------------------------------------------------------
PAGE_SIZE = 500  # rows per list call (the API's largest page)
AUDIT_PAGE_SIZE = 1000


class AdminClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    @classmethod
    def from_env(cls) -> AdminClient:
        """The client a command uses: TOKENWARD_ADMIN_URL and TOKENWARD_TOKEN. An unset URL
        is said once, on stderr, when the client is made (a command makes one)."""
        token = os.environ.get("TOKENWARD_TOKEN")
        if not token:
            raise CliError("TOKENWARD_TOKEN is not set (an admin:org or admin:team token)")
        url = os.environ.get("TOKENWARD_ADMIN_URL")
        if url:
            check_admin_url(url)
        else:
            print(
                f"note: TOKENWARD_ADMIN_URL is not set: using {DEFAULT_ADMIN_URL} (the default admin_listen)",
                file=sys.stderr,
            )
        return cls(url or DEFAULT_ADMIN_URL, token)

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: Mapping[str, str | int | list[str] | None] | None = None,
    ) -> Any:
        """One admin API call: the decoded JSON body, or None for 204; CliError on any failure.
        A list in `query` is the parameter repeated."""
        params = {k: v if isinstance(v, list) else str(v) for k, v in (query or {}).items() if v is not None}
        url = self.base_url + path + (f"?{urllib.parse.urlencode(params, doseq=True)}" if params else "")
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's admin API
            url,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            raise CliError(f"{exc.code} {_error_message(raw, exc.reason)}{self._gateway_hint(raw)}") from None
        except urllib.error.URLError as exc:
            raise CliError(f"cannot reach the admin API at {self.base_url}: {exc.reason}") from None
        if status == 204 or not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CliError(
                f"the admin API at {self.base_url} answered {status} with a non-JSON body"
            ) from None

    def _gateway_hint(self, raw: bytes) -> str:
        """A refusal in the gateway's shape (it names a decision `step`; `route` is a step the
        admin API never takes) means TOKENWARD_ADMIN_URL points at the gateway listener."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return ""
        if not isinstance(data, dict) or data.get("step") != "route":
            return ""
        return (
            f" (TOKENWARD_ADMIN_URL={self.base_url} looks like the gateway listener; the admin API"
            f" listens on admin_listen, default {DEFAULT_ADMIN_URL.removeprefix('http://')})"
        )

    def whoami(self) -> dict[str, Any]:
        return dict(self.call("GET", "/v1/whoami"))

    def pages(
        self,
        path: str,
        key: str,
        query: Mapping[str, str | int | list[str] | None] | None = None,
        limit: int | None = None,
        page_size: int = PAGE_SIZE,
    ) -> dict[str, Any]:
        """A paginated list: follows `next` until the last page, or until `limit` rows.
        `next` in the result continues where it stopped (null when it read everything)."""
        rows: list[Any] = []
        cursor: str | None = None
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - len(rows)))
            data = self.call("GET", path, query={**(query or {}), "limit": size, "cursor": cursor})
            rows += data[key]
            cursor = data.get("next")
            if not cursor or (limit is not None and len(rows) >= limit):
                break
        if limit is not None and len(rows) > limit:
            rows = rows[:limit]
        return {key: rows, "next": cursor}


def check_admin_url(url: str) -> None:
    """TOKENWARD_ADMIN_URL is the admin listener's base URL: `http(s)://host:port` (a path
    only where a proxy mounts the admin API under one; never the API's own `/v1`)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(
            f"TOKENWARD_ADMIN_URL={url!r} is not a URL: give the admin listener's base URL, e.g. {DEFAULT_ADMIN_URL}"
        )
    if parts.path.rstrip("/").endswith("/v1"):
        base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/")[:-3], "", ""))
        raise CliError(f"TOKENWARD_ADMIN_URL={url!r} ends in /v1: give the base URL, without it ({base})")


def _error_message(raw: bytes, reason: str) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return reason
    message = data.get("message") if isinstance(data, dict) else None
    return redact_token_shaped(" ".join(str(message).split())) if message else reason


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _org_team(client: AdminClient, args: argparse.Namespace, need_team: bool = True) -> tuple[str, str]:
    org, team = getattr(args, "org", None), getattr(args, "team", None)
    if org is None or (need_team and team is None):
        me = client.whoami()
        org = org or me["org"]
        team = team or me.get("team")
    if need_team and not team:
        raise CliError("--team is required for an org-level token")
    return _q(org), _q(team or "")


def _split(values: str | None) -> list[str]:
    return [v.strip() for v in (values or "").split(",") if v.strip()]
