"""No admin API error echoes a secret (review of issue 14): a token pasted where an id or a
name belongs (`tokenward token get sk_live_…`) must not come back in the answer, its audit
event or the CLI's output.

Two layers. `check_path`: every path parameter must have its shape (an org, a team or an
account name is a slug, a token id 12 letters and digits, an account ref a slug or `sa_` and
16 hex digits) before the handler runs, else 404 with a message that says what an id looks
like and never the value. `redact_message`: every error message (from any endpoint, built
from a path, query or body value) goes through the gateway's redaction of token-shaped
strings (`redact_token_shaped`, the token patterns of `redact`; a `name=value` in prose is
not a query parameter), as defense in depth; account ids (`sa_…`, not secret) are kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from tokenward.gateway.redaction import redact_token_shaped
from tokenward.gateway.refusal import Refusal
from tokenward.gateway.tokens import KEY_ID_RE
from tokenward.schema import SLUG

_SLUG = re.compile(rf"{SLUG}\Z")
_ACCOUNT_ID = re.compile(r"sa_[0-9a-f]{16}\Z")
_ACCOUNT_IDS = re.compile(r"(?<![A-Za-z0-9_])(sa_[0-9a-f]{16})(?![A-Za-z0-9_])")
_NAMES = "lower-case letters, digits and '-'"

# path parameter -> (its shape, what a 404 says instead of echoing a value of another shape)
PATH_SHAPES: dict[str, tuple[Callable[[str], bool], str]] = {
    "org": (lambda v: _SLUG.match(v) is not None, f"no such org (an org name is {_NAMES})"),
    "team": (lambda v: _SLUG.match(v) is not None, f"no such team (a team name is {_NAMES})"),
    "id": (
        lambda v: KEY_ID_RE.match(v) is not None,
        "no such token (a token id is 12 letters and digits; was a token pasted instead?)",
    ),
    "name": (lambda v: _SLUG.match(v) is not None, f"no such service account (a name is {_NAMES})"),
    "account": (
        lambda v: _SLUG.match(v) is not None or _ACCOUNT_ID.match(v) is not None,
        f"no such service account (a name is {_NAMES}, an id sa_ and 16 hex digits)",
    ),
}


def check_path(params: Mapping[str, str]) -> None:
    """404, without the value, for a path parameter that does not have its shape."""
    for name, value in params.items():
        shape = PATH_SHAPES.get(name)
        if shape is None:  # every parameter of every endpoint is listed (tests/test_no_echo.py)
            raise AssertionError(f"path parameter {name} has no declared shape")
        if not shape[0](value):
            raise Refusal(404, "not_found", None, shape[1])


def redact_message(refusal: Refusal, redact: Callable[[str], str] = redact_token_shaped) -> Refusal:
    """`refusal` with anything token-shaped in its message and its `field` redacted (account
    ids kept)."""
    parts = _ACCOUNT_IDS.split(refusal.message)
    message = "".join(part if i % 2 else redact(part) for i, part in enumerate(parts))
    if message != refusal.message:
        refusal.message = message
    if refusal.field is not None:  # a field's path can carry input too (a key of `constraints`)
        field = redact(refusal.field)
        if field != refusal.field:
            refusal.field = field
    return refusal
