"""Route templates and the matcher.

Templates have literal segments, `{name}` (one non-empty segment) and `{name:*}` (the
rest of the path, at least one segment). The most specific route wins: segments compare
left to right (literal > param > tail), then a listed method beats "any method". Two
routes that could match the same request with equal specificity are a load error.
Matching is case-sensitive and a trailing slash is significant (`/apis/` is not `/apis`).

No fall-through to a weaker route: where a request segment is not a literal of the route map
but an upstream could read it as one (it differs from a sibling literal only in case or in
percent-encoding: Express, IIS and ASP.NET match case-insensitively) and that literal's
branch would match the rest of the path, the request is refused (`AmbiguousPath`, a 400 at
step `path`) instead of being decided on the parameter or tail route beside it. When the
literal's route goes to an upstream configured `case_insensitive: true` and only case
differs, the request is decided on that literal's route, which the upstream will run.

A trailing slash is significant, but `/a/` must not be decided on another route than `/a`
(or the reverse): many upstreams read them as one path.

`HEAD` is decided as the `GET` most upstreams turn it into: a route listing GET wins over a
route listing HEAD and over an any-method route.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import unquote

from tokenward.gateway.bounded import Memo
from tokenward.gateway.limits import RateLimit
from tokenward.gateway.mcp_policy import McpPolicy
from tokenward.gateway.paths import MEMO_SIZE, PathError, canonical_path, memo_safe
from tokenward.gateway.scopes import Scope

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_PARAM = re.compile(r"^\{([a-z_][a-z0-9_]*)(:\*)?\}\Z")

# segment kinds, in specificity order
LITERAL, PARAM, TAIL = 0, 1, 2


class TemplateError(ValueError):
    pass


class AmbiguousPath(PathError):
    """A segment an upstream could read as a literal that the gateway did not match."""


def fold(segment: str) -> str:
    """A canonical segment as a lax upstream may read it: percent-decoded, case-folded, and
    without accents (Windows best-fit code pages read `ā` as `a`, accent-insensitive
    collations compare `å` equal to `a`)."""
    if "%" in segment:
        segment = unquote(segment, errors="surrogateescape")
        if not segment.isascii():
            decomposed = unicodedata.normalize("NFKD", segment)
            segment = "".join(c for c in decomposed if not unicodedata.combining(c))
    return segment.lower()


def _lax_literals(folded: dict[str, tuple[str, ...]], segments: list[str], i: int) -> tuple[str, ...]:
    """The sibling literals a lax upstream may read segments[i] as; the last segment is also
    read without a `.suffix` (Spring's suffix pattern match runs `/a` for `/a.json`)."""
    segment = segments[i]
    literals = folded.get(fold(segment), ())
    if i == len(segments) - 1 and segment.find(".", 1) > 0:
        stem = folded.get(fold(segment[: segment.index(".", 1)]), ())
        literals += tuple(literal for literal in stem if literal not in literals)
    return literals


@dataclass(frozen=True, slots=True)
class Route:
    index: int
    path: str
    methods: frozenset[str] | None  # None: any method
    upstream: str
    scopes: tuple[Scope, ...]
    public: bool
    resource: Mapping[str, str]  # role (org, team, or a constraint name) -> path param name
    websocket: bool
    shape: tuple[tuple[int, str], ...]
    param_names: tuple[str, ...]
    # token environments accepted (the route's and its upstream's `environments`); None: all
    environments: frozenset[str] | None = None
    mcp: McpPolicy | None = None  # per-tool MCP authorization (gateway/mcp.py)
    rate_limits: tuple[RateLimit, ...] = ()  # defaults, per token on this route (gateway/limiter.py)
    # "GET,HEAD /apis/{org}" or "* /x": the route's name in metrics, audit and usage (built once)
    label: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        methods = ",".join(sorted(self.methods)) if self.methods else "*"
        object.__setattr__(self, "label", f"{methods} {self.path}")


def parse_template(path: str) -> tuple[tuple[tuple[int, str], ...], tuple[str, ...]]:
    """Template -> (shape, param names). Raises TemplateError."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise TemplateError("must start with '/'")
    raw_segments = path[1:].split("/")
    shape: list[tuple[int, str]] = []
    names: list[str] = []
    last = len(raw_segments) - 1
    for index, segment in enumerate(raw_segments):
        if segment.startswith("{") or segment.endswith("}"):
            match = _PARAM.match(segment)
            if not match:
                raise TemplateError(
                    f"segment {segment!r} is not a parameter: use {{name}} or {{name:*}} "
                    "with name matching [a-z_][a-z0-9_]*"
                )
            name = match.group(1)
            if name in names:
                raise TemplateError(f"parameter {name!r} appears twice")
            names.append(name)
            if match.group(2):
                if index != last:
                    raise TemplateError(f"tail parameter {{{name}:*}} must be the last segment")
                shape.append((TAIL, ""))
            else:
                shape.append((PARAM, ""))
            continue
        if "{" in segment or "}" in segment:
            raise TemplateError(f"segment {segment!r} mixes text and a parameter")
        if segment == "" and index != last:
            raise TemplateError("empty segment ('//')")
        try:
            canonical = canonical_path("/" + segment)[1:]
        except PathError as exc:
            raise TemplateError(str(exc)) from None
        if canonical != segment:
            raise TemplateError(f"segment {segment!r} is not in canonical form ({canonical!r})")
        shape.append((LITERAL, segment))
    return tuple(shape), tuple(names)


def methods_overlap(a: frozenset[str] | None, b: frozenset[str] | None) -> bool:
    """Equal specificity on methods: both 'any', or both listed and sharing one."""
    if a is None or b is None:
        return a is None and b is None
    return bool(a & b)


@dataclass(slots=True)
class _Node:
    literals: dict[str, _Node] = field(default_factory=dict)
    param: _Node | None = None
    routes: list[Route] = field(default_factory=list)
    tail_routes: list[Route] = field(default_factory=list)
    # folded literal -> the literals it folds from
    folded: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def index_folds(self) -> None:
        for child in self.literals.values():
            child.index_folds()
        # everywhere, not only beside a param: a miss here backtracks to an ancestor's param
        if self.literals:
            folded: dict[str, tuple[str, ...]] = {}
            for literal in self.literals:
                key = fold(literal)
                folded[key] = (*folded.get(key, ()), literal)
            self.folded = folded
        if self.param is not None:
            self.param.index_folds()


def _pick(routes: Sequence[Route], method: str) -> Route | None:
    if method == "HEAD":  # decided as the GET the upstream runs for it
        for route in routes:
            if route.methods is not None and "GET" in route.methods:
                return route
    fallback = None
    for route in routes:
        if route.methods is None:
            fallback = route
        elif method in route.methods:
            return route
    return fallback


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    params: Mapping[str, str]  # read-only: one Match answers many requests (Router's memo)


class Router:
    """Compiled route map; immutable once built so a reload can swap it atomically.
    `case_insensitive`: names of upstreams that match paths case-insensitively."""

    def __init__(self, routes: Sequence[Route], case_insensitive: frozenset[str] = frozenset()) -> None:
        self.routes = tuple(routes)
        self.case_insensitive = case_insensitive
        self._root = _Node()
        for route in self.routes:
            node = self._root
            for kind, literal in route.shape:
                if kind == LITERAL:
                    node = node.literals.setdefault(literal, _Node())
                elif kind == PARAM:
                    if node.param is None:
                        node.param = _Node()
                    node = node.param
                else:
                    node.tail_routes.append(route)
                    break
            else:
                node.routes.append(route)
        self._root.index_folds()
        self._slash_routes = any(r.shape and r.shape[-1] == (LITERAL, "") for r in self.routes)
        # (method, canonical path) -> its match: the router never changes, so a match found
        # once is the answer every time. Only matches are kept (no None, no AmbiguousPath).
        self._memo: Memo[tuple[str, str], Match] = Memo(MEMO_SIZE)

    def match(self, method: str, path: str) -> Match | None:
        """The route for `method path`, or None. Raises AmbiguousPath when a segment that a
        lax upstream reads as a literal of the map would be decided on another route."""
        key = (method, path)
        found = self._memo.get(key)
        if found is None:
            found = self._match(method, path)
            if found is not None and memo_safe(path):
                self._memo.remember(key, found)
        return found

    def _match(self, method: str, path: str) -> Match | None:
        segments = path[1:].split("/")
        values: list[str] = []
        ambiguous: list[str] = []
        route = self._walk(self._root, segments, 0, method, values, ambiguous)
        if route is None:
            return None  # 404 either way: nothing reaches an upstream
        if ambiguous:
            raise AmbiguousPath(ambiguous[0])
        # Express (strict: false) and Spring read `/a/` as `/a` and (for a `/a/` route) the
        # reverse: the other spelling must not be another route.
        if len(segments) > 1 and segments[-1] == "":
            other = segments[:-1]
        elif self._slash_routes:
            other = [*segments, ""]
        else:
            other = None
        if other is not None:
            other_ambiguous: list[str] = []
            other_route = self._walk(self._root, other, 0, method, [], other_ambiguous)
            if other_route is not None and (other_route is not route or other_ambiguous):
                raise AmbiguousPath(
                    f"with or without its trailing slash this path matches another route ({other_route.label})"
                    if other_route is not route
                    else other_ambiguous[0]
                )
        return Match(route, MappingProxyType(dict(zip(route.param_names, values, strict=True))))

    def _walk(
        self, node: _Node, segments: list[str], i: int, method: str, values: list[str], ambiguous: list[str]
    ) -> Route | None:
        if i == len(segments):
            return _pick(node.routes, method) if node.routes else None
        segment = segments[i]
        child = node.literals.get(segment)
        if child is not None:
            found = self._walk(child, segments, i + 1, method, values, ambiguous)
            if found is not None:
                return found
        if node.folded and segment:
            found = self._lax_literal(node, segments, i, method, values, ambiguous)
            if found is not None:
                return found
        if node.param is not None and segment:
            values.append(segment)
            found = self._walk(node.param, segments, i + 1, method, values, ambiguous)
            if found is not None:
                return found
            values.pop()
        if node.tail_routes and segment:
            found = _pick(node.tail_routes, method)
            if found is not None:
                values.append("/".join(segments[i:]))
                return found
        return None

    def _lax_literal(
        self, node: _Node, segments: list[str], i: int, method: str, values: list[str], ambiguous: list[str]
    ) -> Route | None:
        """The route a lax upstream runs for a segment that folds to a sibling literal:
        returned when that upstream is declared case-insensitive (and only case differs);
        otherwise noted in `ambiguous`, which refuses the request if anything else matches."""
        segment = segments[i]
        for literal in _lax_literals(node.folded, segments, i):
            if literal == segment:
                continue
            mark = len(values)
            found = self._walk(node.literals[literal], segments, i + 1, method, values, ambiguous)
            if found is None:
                continue
            if found.upstream in self.case_insensitive and literal.lower() == segment.lower():
                return found
            del values[mark:]
            ambiguous.append(
                f"path segment {segment!r} reads as {literal!r} on a case-insensitive or decoding "
                f"server ({found.label} there), not as the route this gateway would match"
            )
        return None


def find_conflicts(routes: Sequence[Route]) -> list[tuple[Route, Route]]:
    """Pairs that could match one request with equal specificity."""
    by_shape: dict[tuple[tuple[int, str], ...], list[Route]] = {}
    for route in routes:
        by_shape.setdefault(route.shape, []).append(route)
    conflicts = []
    for group in by_shape.values():
        for i, first in enumerate(group):
            for second in group[i + 1 :]:
                if methods_overlap(first.methods, second.methods):
                    conflicts.append((first, second))
    return conflicts
