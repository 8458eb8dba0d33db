"""`tokenward config check` warnings and `tokenward config explain METHOD PATH [--token T]`:
which route, which scopes, which upstream, and with a token which decision step would fail.
Both use the gateway's own code (canonical path, router, authenticator, authorize)."""

from __future__ import annotations

from tokenward.gateway.decision import authorize
from tokenward.gateway.environments import describe
from tokenward.gateway.mcp_policy import McpPolicy
from tokenward.gateway.paths import PathError, parse_target
from tokenward.gateway.refusal import Refusal
from tokenward.gateway.routes import LITERAL, PARAM, TAIL, Route, fold, methods_overlap
from tokenward.gateway.settings import Settings
from tokenward.gateway.upstream_tls import UNVERIFIED, unverified


def _shapes_overlap(a: Route, b: Route) -> bool:
    """Could one path match both templates?"""
    sa, sb = a.shape, b.shape
    for i in range(max(len(sa), len(sb))):
        if i >= len(sa) or i >= len(sb):
            shorter = sa if len(sa) < len(sb) else sb
            return bool(shorter) and shorter[-1][0] == TAIL and i == len(shorter)
        (ka, la), (kb, lb) = sa[i], sb[i]
        if TAIL in (ka, kb):
            return True
        if ka == LITERAL and kb == LITERAL and la != lb:
            return False
    return True


def _methods_meet(a: Route, b: Route) -> bool:
    return a.methods is None or b.methods is None or methods_overlap(a.methods, b.methods)


def config_warnings(settings: Settings) -> list[str]:
    """Legal but probably unintended: a public route that can take requests a protected route
    also matches, public catch-alls, and protected routes that say nothing of the org."""
    warnings = []
    routes = settings.routes
    for route in routes:
        loc = f"routes[{route.index}]"
        if route.public:
            if route.shape and route.shape[0][0] != LITERAL:
                warnings.append(
                    f"{loc}: public route {route.label} starts with a parameter and matches almost any path"
                )
            for other in routes:
                if (
                    other is not route
                    and not other.public
                    and _shapes_overlap(route, other)
                    and _methods_meet(route, other)
                ):
                    warnings.append(
                        f"{loc}: public route {route.label} overlaps protected routes[{other.index}] "
                        f"({other.label}); the more specific one wins, check that is intended"
                    )
        elif "org" not in route.resource:
            warnings.append(f"{loc}: {route.label} names no resource org: tokens of any org may use it")
    warnings += [f"upstreams.{name}.tls.verify: {UNVERIFIED}" for name in unverified(settings.upstreams)]
    return warnings + folding_warnings(settings)


def _fold_overlap(a: Route, b: Route) -> int | None:
    """The first segment where `a` and `b` differ only in case or percent-encoding, when
    the rest of the two templates could match one path (else None)."""
    differs = None
    sa, sb = a.shape, b.shape
    longer, shorter = (sa, sb) if len(sa) > len(sb) else (sb, sa)
    if longer and longer[-1] == (LITERAL, "") and longer[:-1] == shorter:
        return len(shorter)  # only a trailing slash differs
    for i, ((ka, la), (kb, lb)) in enumerate(zip(sa, sb, strict=False)):
        if TAIL in (ka, kb):
            break
        if ka == LITERAL and kb == LITERAL and la != lb:
            if fold(la) != fold(lb):
                return None
            differs = i if differs is None else differs
    else:
        if len(sa) != len(sb):
            return None
    return differs


def folding_warnings(settings: Settings) -> list[str]:
    """Protected routes that are one route to a case-insensitive upstream (literals that
    differ only in case or percent-encoding), HEAD routes that a GET route shadows, and
    protected literals beside a parameter (their case variants are refused, or decided as
    the literal when the upstream says `case_insensitive: true`)."""
    warnings = []
    routes = settings.routes
    for i, route in enumerate(routes):
        for other in routes[i + 1 :]:
            if route.public and other.public:
                continue
            at = _fold_overlap(route, other)
            if at is not None and _methods_meet(route, other):
                warnings.append(
                    f"routes[{other.index}]: {other.label} and routes[{route.index}] ({route.label}) differ "
                    f"only in the case, encoding or trailing slash of segment {at + 1}: a lax upstream "
                    "reads them as one route (requests to either are refused); rename one"
                )
        if route.methods is not None and "HEAD" in route.methods and "GET" not in route.methods:
            for other in routes:
                if other.shape == route.shape and other.methods is not None and "GET" in other.methods:
                    warnings.append(
                        f"routes[{route.index}]: HEAD is decided as GET, on routes[{other.index}] "
                        f"({other.label}); this route never matches HEAD"
                    )
    for route in routes:
        if route.public:
            continue
        for j, (kind, literal) in enumerate(route.shape):
            if kind != LITERAL:
                continue
            sibling = next(
                (
                    o
                    for o in routes
                    if o is not route
                    and len(o.shape) > j
                    and o.shape[j][0] in (PARAM, TAIL)
                    and o.shape[:j] == route.shape[:j]
                ),
                None,
            )
            if sibling is not None and not settings.upstreams[route.upstream].case_insensitive:
                warnings.append(
                    f"routes[{route.index}]: protected literal {literal!r} sits beside the parameter of "
                    f"routes[{sibling.index}] ({sibling.label}); case variants of it are refused with 400 "
                    f"(set upstreams.{route.upstream}.case_insensitive: true if that upstream ignores case)"
                )
                break
    return warnings


def explain_route(settings: Settings, method: str, raw_path: str) -> tuple[list[str], object]:
    """Lines describing the match, and the match (or None)."""
    lines = []
    try:
        target = parse_target(raw_path)
    except PathError as exc:
        return [f"400 path: {exc} (refused before routing)"], None
    if target.path != raw_path.partition("?")[0]:
        lines.append(f"canonical path: {target.path}")
    try:
        match = settings.router.match(method.upper(), target.path)
    except PathError as exc:
        return [*lines, f"400 path: {exc} (refused before routing)"], None
    if match is None:
        return [*lines, "404 route: no route matches this request (default deny)"], None
    route = match.route
    upstream = settings.upstreams[route.upstream]
    lines.append(f"route: routes[{route.index}] {route.label}")
    if match.params:
        lines.append("params: " + ", ".join(f"{k}={v}" for k, v in match.params.items()))
    lines.append(
        "access: public (no token needed)"
        if route.public
        else "scopes: " + ", ".join(str(s) for s in route.scopes)
    )
    if route.environments is not None:
        lines.append(f"environments: {describe(route.environments)} tokens only (step environment)")
    if route.resource:
        lines.append(
            "resource: " + ", ".join(f"{role}={match.params[p]}" for role, p in route.resource.items())
        )
    if route.mcp is not None:
        lines.append(mcp_line(route.mcp))
    query = f"?{target.query}" if target.query else ""
    lines.append(f"upstream: {upstream.name} -> {upstream.url}{target.path}{query}")
    return lines, match


def mcp_line(policy: McpPolicy) -> str:
    """A route's MCP policy, as `config explain` shows it (step mcp_tool)."""
    tools = ", ".join(f"{name}={scope if scope is not None else 'deny'}" for name, scope in policy.tools.items())
    default = policy.default if policy.default is not None else "deny"
    return f"mcp: each tools/call needs its tool's scope (step mcp_tool): {tools or 'none listed'}; other tools: {default}"


async def explain_token(settings: Settings, match: object, token: str) -> list[str]:
    """Run steps 2–8 for `token` against the real store."""
    from tokenward.gateway.routes import Match
    from tokenward.gateway.runtime import open_runtime

    assert isinstance(match, Match)
    if match.route.public:
        return ["decision: allowed (public route; the token is not checked)"]
    async with open_runtime(settings) as runtime:
        try:
            principal = await runtime.authenticator.authenticate(token, None)
            authorize(match, principal)
        except Refusal as denied:
            return [f"decision: {denied.status} at step {denied.step}: {denied.message}"]
    token_record = principal.token
    return [
        f"token: {token_record.display_prefix} ({token_record.name}) org={token_record.org} team={token_record.team}"
        f" environment={token_record.environment}",
        "effective scopes: " + ", ".join(str(s) for s in principal.effective_scopes),
        "decision: allowed",
    ]
