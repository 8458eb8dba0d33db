"""Pure unit tests for tokenward.gateway.routes: templates, the matcher's specificity rules and
conflict detection."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenward.gateway.routes import (
    LITERAL,
    PARAM,
    TAIL,
    AmbiguousPath,
    Route,
    Router,
    TemplateError,
    find_conflicts,
    methods_overlap,
    parse_template,
)

RouteSpec = tuple[str, Sequence[str] | None]  # (template, methods or None for any)


def make_route(path: str, methods: Sequence[str] | None = None, index: int = 0) -> Route:
    """Build a Route the way tokenward.gateway.route_config._route does."""
    shape, names = parse_template(path)
    return Route(
        index=index,
        path=path,
        methods=frozenset(methods) if methods is not None else None,
        upstream="up",
        scopes=(),
        public=True,
        resource={},
        websocket=False,
        shape=shape,
        param_names=names,
    )


def make_routes(specs: Sequence[RouteSpec]) -> list[Route]:
    return [make_route(path, methods, index) for index, (path, methods) in enumerate(specs)]


def router(specs: Sequence[RouteSpec]) -> Router:
    return Router(make_routes(specs))


# --------------------------------------------------------------------------- parse_template


@pytest.mark.parametrize(
    ("template", "shape", "names"),
    [
        ("/", ((LITERAL, ""),), ()),
        ("/a", ((LITERAL, "a"),), ()),
        ("/a/", ((LITERAL, "a"), (LITERAL, "")), ()),
        ("/API", ((LITERAL, "API"),), ()),
        ("/{x}", ((PARAM, ""),), ("x",)),
        ("/{x:*}", ((TAIL, ""),), ("x",)),
        ("/{_x1}", ((PARAM, ""),), ("_x1",)),
        ("/a/{x}/", ((LITERAL, "a"), (PARAM, ""), (LITERAL, "")), ("x",)),
        (
            "/orgs/{org}/teams/{team}/apis",
            ((LITERAL, "orgs"), (PARAM, ""), (LITERAL, "teams"), (PARAM, ""), (LITERAL, "apis")),
            ("org", "team"),
        ),
        (
            "/a/{x}/b/{rest:*}",
            ((LITERAL, "a"), (PARAM, ""), (LITERAL, "b"), (TAIL, "")),
            ("x", "rest"),
        ),
        ("/a/%C3%A9", ((LITERAL, "a"), (LITERAL, "%C3%A9")), ()),
        ("/a/~b.c-d_e", ((LITERAL, "a"), (LITERAL, "~b.c-d_e")), ()),
        ("/v1:batch", ((LITERAL, "v1:batch"),), ()),
    ],
)
def test_parse_template_valid(
    template: str, shape: tuple[tuple[int, str], ...], names: tuple[str, ...]
) -> None:
    assert parse_template(template) == (shape, names)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        pytest.param("/a/{x:*}/b", "must be the last segment", id="tail-not-last"),
        pytest.param("/a/{x:*}/", "must be the last segment", id="tail-then-trailing-slash"),
        pytest.param("/{x:*}/{y}", "must be the last segment", id="tail-first"),
        pytest.param("/a/{x}/{x}", "appears twice", id="duplicate-param"),
        pytest.param("/{x}/{x:*}", "appears twice", id="duplicate-param-tail"),
        pytest.param("/a/{Bad}", "is not a parameter", id="upper-name"),
        pytest.param("/a/{1x}", "is not a parameter", id="digit-name"),
        pytest.param("/a/{x-y}", "is not a parameter", id="dash-name"),
        pytest.param("/a/{}", "is not a parameter", id="empty-name"),
        pytest.param("/a/{x:}", "is not a parameter", id="empty-modifier"),
        pytest.param("/a/{x:**}", "is not a parameter", id="double-star"),
        pytest.param("/a/{x:int}", "is not a parameter", id="typed"),
        pytest.param("/a/{x", "is not a parameter", id="unclosed"),
        pytest.param("/a/x}", "is not a parameter", id="unopened"),
        pytest.param("/a/a{x}", "is not a parameter", id="text-before-param"),
        pytest.param("/a/{x}a", "is not a parameter", id="text-after-param"),
        pytest.param("/a/{x}{y}", "is not a parameter", id="two-params-one-segment"),
        pytest.param("/a/{ x }", "is not a parameter", id="spaces"),
        pytest.param("/a/{x}\n", "is not a parameter", id="param-trailing-newline"),
        pytest.param("/a/a{x}b", "mixes text and a parameter", id="param-inside-text"),
        pytest.param("/a/b{", "mixes text and a parameter", id="stray-brace"),
        pytest.param("/a//b", "empty segment", id="double-slash"),
        pytest.param("//", "empty segment", id="only-double-slash"),
        pytest.param("//a", "empty segment", id="leading-double-slash"),
        pytest.param("/a/../b", "dot segment", id="dotdot"),
        pytest.param("/a/./b", "dot segment", id="dot"),
        pytest.param("/a/..", "dot segment", id="trailing-dotdot"),
        pytest.param("/a/%2e%2e", "dot segment", id="encoded-dotdot"),
        pytest.param("/a/%2f", "encoded '/'", id="encoded-slash"),
        pytest.param("/a\\b", "backslash", id="backslash"),
        pytest.param("/a b", "not allowed", id="space"),
        pytest.param("/é", "non-ASCII", id="non-ascii"),
        pytest.param("/a/%7E", "not in canonical form", id="not-canonical-tilde"),
        pytest.param("/a/%c3%a9", "not in canonical form", id="not-canonical-lower-escape"),
        pytest.param("/a/%zz", "invalid percent-encoding", id="bad-escape"),
        pytest.param("/a?x=1", "not allowed", id="query"),
        pytest.param("/a#x", "fragment", id="fragment"),
        pytest.param("a/b", "must start with '/'", id="relative"),
        pytest.param("", "must start with '/'", id="empty"),
        pytest.param(None, "must start with '/'", id="none"),
        pytest.param(42, "must start with '/'", id="int"),
    ],
)
def test_parse_template_invalid(template: object, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        parse_template(template)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_template_error_is_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


def test_route_label() -> None:
    assert make_route("/a/{x}", ["POST", "GET"]).label == "GET,POST /a/{x}"
    assert make_route("/a").label == "* /a"


# --------------------------------------------------------------------------- matching

Expected = tuple[int, dict[str, str]] | None

LIT_PARAM_TAIL: list[RouteSpec] = [("/a/b", None), ("/a/{x}", None), ("/a/{x:*}", None)]


@pytest.mark.parametrize(
    ("specs", "method", "path", "expected"),
    [
        # literal > param > tail
        pytest.param(LIT_PARAM_TAIL, "GET", "/a/b", (0, {}), id="literal-wins"),
        pytest.param(LIT_PARAM_TAIL, "GET", "/a/c", (1, {"x": "c"}), id="param-beats-tail"),
        pytest.param(LIT_PARAM_TAIL, "GET", "/a/b/c", (2, {"x": "b/c"}), id="tail-takes-rest"),
        pytest.param(LIT_PARAM_TAIL, "GET", "/a/c/d/e", (2, {"x": "c/d/e"}), id="tail-deep"),
        pytest.param(LIT_PARAM_TAIL, "GET", "/a", None, id="tail-needs-a-segment"),
        pytest.param(LIT_PARAM_TAIL, "GET", "/a/", None, id="tail-and-param-need-non-empty"),
        pytest.param(LIT_PARAM_TAIL[::-1], "GET", "/a/b", (2, {}), id="order-independent-literal"),
        pytest.param(LIT_PARAM_TAIL[::-1], "GET", "/a/c", (1, {"x": "c"}), id="order-independent-param"),
        pytest.param([("/a/{x:*}", None)], "GET", "/a/b/", (0, {"x": "b/"}), id="tail-keeps-trailing-slash"),
        pytest.param([("/{x:*}", None)], "GET", "/", None, id="root-tail-needs-segment"),
        pytest.param([("/{x:*}", None)], "GET", "/a/b", (0, {"x": "a/b"}), id="root-tail"),
        pytest.param([("/{x}", None)], "GET", "/", None, id="root-param-needs-segment"),
        pytest.param([("/", None)], "GET", "/", (0, {}), id="root"),
        pytest.param([("/", None)], "GET", "/a", None, id="root-only-root"),
        # method: a listed method beats any method
        pytest.param([("/a", None), ("/a", ["GET"])], "GET", "/a", (1, {}), id="listed-beats-any"),
        pytest.param([("/a", ["GET"]), ("/a", None)], "GET", "/a", (0, {}), id="listed-beats-any-2"),
        pytest.param([("/a", None), ("/a", ["GET"])], "POST", "/a", (0, {}), id="any-as-fallback"),
        pytest.param([("/a", ["GET"]), ("/a", ["POST"])], "POST", "/a", (1, {}), id="by-method"),
        pytest.param([("/a", ["GET", "POST"])], "POST", "/a", (0, {}), id="method-list"),
        pytest.param([("/a", ["GET"])], "DELETE", "/a", None, id="method-not-listed"),
        pytest.param([("/a", ["GET"])], "get", "/a", None, id="method-case-sensitive"),
        pytest.param(
            [("/a/{x}", None), ("/a/{y}", ["GET"])],
            "GET",
            "/a/b",
            (1, {"y": "b"}),
            id="param-names-per-route",
        ),
        pytest.param(
            [("/a/{x}", None), ("/a/{y}", ["GET"])], "PUT", "/a/b", (0, {"x": "b"}), id="param-names-any"
        ),
        pytest.param(
            [("/a/{x:*}", ["POST"]), ("/a/{y:*}", None)], "GET", "/a/b/c", (1, {"y": "b/c"}), id="tail-method"
        ),
        pytest.param(
            [("/a/{x:*}", ["POST"]), ("/a/{y:*}", None)],
            "POST",
            "/a/b/c",
            (0, {"x": "b/c"}),
            id="tail-listed",
        ),
        # the literal route exists but not for this method: fall back to a less specific one
        pytest.param(
            [("/a/b", ["POST"]), ("/a/{x}", ["GET"])],
            "GET",
            "/a/b",
            (1, {"x": "b"}),
            id="method-fallback-param",
        ),
        pytest.param(
            [("/a/b", ["POST"]), ("/a/{x:*}", ["GET"])],
            "GET",
            "/a/b",
            (1, {"x": "b"}),
            id="method-fallback-tail",
        ),
        pytest.param([("/a/b", ["POST"]), ("/a/{x}", ["GET"])], "POST", "/a/b", (0, {}), id="method-literal"),
        # segment specificity goes left to right, before methods
        pytest.param(
            [("/a/{x}", None), ("/{y}/b", ["GET"])], "GET", "/a/b", (0, {"x": "b"}), id="left-to-right"
        ),
        pytest.param(
            [("/{y}/b", None), ("/a/{x:*}", None)],
            "GET",
            "/a/b",
            (1, {"x": "b"}),
            id="left-literal-beats-later",
        ),
        # backtracking
        pytest.param(
            [("/a/{x}/c", None), ("/a/b/d", None)], "GET", "/a/b/c", (0, {"x": "b"}), id="backtrack-to-param"
        ),
        pytest.param(
            [("/a/{x}/c", None), ("/a/b/d", None)], "GET", "/a/b/d", (1, {}), id="backtrack-literal"
        ),
        pytest.param([("/a/{x}/c", None), ("/a/b/d", None)], "GET", "/a/b/e", None, id="backtrack-none"),
        pytest.param(
            [("/a/b/c", None), ("/a/{x:*}", None)], "GET", "/a/b/d", (1, {"x": "b/d"}), id="backtrack-to-tail"
        ),
        pytest.param(
            [("/{a}/{b}/x", None), ("/{a}/{c:*}", None)],
            "GET",
            "/p/q/r",
            (1, {"a": "p", "c": "q/r"}),
            id="backtrack-pops-values",
        ),
        pytest.param(
            [("/{a}/{b}/x", None), ("/{a}/{c:*}", None)],
            "GET",
            "/p/q/x",
            (0, {"a": "p", "b": "q"}),
            id="backtrack-deep-match",
        ),
        pytest.param(
            [("/a/{x}/c/d", None), ("/a/{y}/{z}/e", None), ("/{w}/b/c/e", None)],
            "GET",
            "/a/b/c/e",
            (1, {"y": "b", "z": "c"}),
            id="backtrack-two-levels",
        ),
        # literal matching is exact
        pytest.param([("/api", None)], "GET", "/apiadmin", None, id="no-prefix-match"),
        pytest.param([("/api", None)], "GET", "/api/x", None, id="no-subpath-match"),
        pytest.param([("/api", None)], "GET", "/ap", None, id="no-shorter-match"),
        pytest.param([("/api", None)], "GET", "/api", (0, {}), id="exact"),
        pytest.param([("/api", None)], "GET", "/API", None, id="case-sensitive"),
        pytest.param([("/API", None)], "GET", "/api", None, id="case-sensitive-2"),
        pytest.param([("/a/{x}", None)], "GET", "/a/MiXeD", (0, {"x": "MiXeD"}), id="param-keeps-case"),
        # trailing slash is significant
        pytest.param([("/apis", None)], "GET", "/apis/", None, id="no-slash-route-slash-request"),
        pytest.param([("/apis/", None)], "GET", "/apis", None, id="slash-route-no-slash-request"),
        pytest.param([("/apis/", None)], "GET", "/apis/", (0, {}), id="slash-route-slash-request"),
        pytest.param([("/a/{x}", None)], "GET", "/a/b/", None, id="param-no-trailing-slash"),
        pytest.param([("/a/{x}/", None)], "GET", "/a/b/", (0, {"x": "b"}), id="param-trailing-slash"),
        pytest.param([("/a/{x}/", None)], "GET", "/a/b", None, id="param-trailing-slash-required"),
        # parameters take a whole segment, escapes untouched
        pytest.param(
            [("/orgs/{org}/teams/{team}/apis", ["GET"])],
            "GET",
            "/orgs/acme/teams/web/apis",
            (0, {"org": "acme", "team": "web"}),
            id="design-example",
        ),
        pytest.param([("/a/{x}", None)], "GET", "/a/%C3%A9", (0, {"x": "%C3%A9"}), id="param-escape-raw"),
        pytest.param([("/a/%C3%A9", None)], "GET", "/a/%C3%A9", (0, {}), id="literal-escape"),
        pytest.param([], "GET", "/", None, id="no-routes"),
    ],
)
def test_match(specs: list[RouteSpec], method: str, path: str, expected: Expected) -> None:
    routes = make_routes(specs)
    found = Router(routes).match(method, path)
    if expected is None:
        assert found is None, found
        return
    assert found is not None, f"expected {routes[expected[0]].label}"
    index, params = expected
    assert found.route is routes[index], (found.route.label, routes[index].label)
    assert found.params == params


def test_router_keeps_routes() -> None:
    routes = make_routes(LIT_PARAM_TAIL)
    assert Router(routes).routes == tuple(routes)


# --------------------------------------------------------------------------- conflicts


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        pytest.param([("/a/{x}", ["GET"]), ("/a/{y}", ["GET"])], [(0, 1)], id="param-names-differ"),
        pytest.param([("/a/b", ["GET"]), ("/a/b", ["GET"])], [(0, 1)], id="same-literal"),
        pytest.param([("/a/{x:*}", None), ("/a/{y:*}", None)], [(0, 1)], id="two-any-tails"),
        pytest.param([("/a", None), ("/a", None)], [(0, 1)], id="two-any"),
        pytest.param([("/a", ["GET", "POST"]), ("/a", ["POST", "PUT"])], [(0, 1)], id="shared-method"),
        pytest.param(
            [("/a/{x}", ["GET"]), ("/a/{y}", ["GET"]), ("/a/{z}", ["GET"])],
            [(0, 1), (0, 2), (1, 2)],
            id="three-way",
        ),
        pytest.param([("/a/{x}", ["GET"]), ("/a/{y}", ["POST"])], [], id="get-vs-post"),
        pytest.param([("/a/{x}", None), ("/a/{y}", ["GET"])], [], id="any-vs-get"),
        pytest.param([("/a/{x}", ["GET"]), ("/a/b", ["GET"])], [], id="param-vs-literal"),
        pytest.param([("/a/{x}", ["GET"]), ("/a/{x:*}", ["GET"])], [], id="param-vs-tail"),
        pytest.param([("/a/b", ["GET"]), ("/a/c", ["GET"])], [], id="different-literals"),
        pytest.param([("/a", ["GET"]), ("/a/", ["GET"])], [], id="trailing-slash"),
        pytest.param([("/a", ["GET"]), ("/A", ["GET"])], [], id="case"),
        pytest.param([("/a/{x}/b", ["GET"]), ("/a/{y}/c", ["GET"])], [], id="differ-later"),
        pytest.param([], [], id="empty"),
    ],
)
def test_find_conflicts(specs: list[RouteSpec], expected: list[tuple[int, int]]) -> None:
    routes = make_routes(specs)
    assert [(a.index, b.index) for a, b in find_conflicts(routes)] == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (None, None, True),
        (None, ["GET"], False),
        (["GET"], None, False),
        (["GET"], ["GET"], True),
        (["GET"], ["POST"], False),
        (["GET", "PUT"], ["PUT", "DELETE"], True),
    ],
)
def test_methods_overlap(a: list[str] | None, b: list[str] | None, expected: bool) -> None:
    fa = None if a is None else frozenset(a)
    fb = None if b is None else frozenset(b)
    assert methods_overlap(fa, fb) is expected
    assert methods_overlap(fb, fa) is expected


# --------------------------------------------------------------------------- properties

_seg = st.sampled_from(["a", "b", "c"])
_template_seg = st.sampled_from(["a", "b", "c", "{p}", "{q}"])


def _dedupe_names(segments: list[str]) -> list[str]:
    """Give every parameter a unique name, keeping the shape."""
    out = []
    for i, seg in enumerate(segments):
        out.append(f"{{p{i}}}" if seg.startswith("{") else seg)
    return out


templates = st.tuples(
    st.lists(_template_seg, min_size=0, max_size=4).map(_dedupe_names),
    st.booleans(),  # tail at the end
).map(lambda t: "/" + "/".join([*t[0], *(["{rest:*}"] if t[1] else [])]))


def _naive_matches(route: Route, segments: list[str]) -> dict[str, str] | None:
    values: list[str] = []
    for i, (kind, literal) in enumerate(route.shape):
        if kind == TAIL:
            if i >= len(segments) or not segments[i]:
                return None
            values.append("/".join(segments[i:]))
            return dict(zip(route.param_names, values, strict=True))
        if i >= len(segments):
            return None
        if kind == LITERAL and segments[i] != literal:
            return None
        if kind == PARAM:
            if not segments[i]:
                return None
            values.append(segments[i])
    if len(route.shape) != len(segments):
        return None
    return dict(zip(route.param_names, values, strict=True))


def _specificity(route: Route) -> tuple[object, ...]:
    kinds = tuple(kind for kind, _ in route.shape)
    return (kinds, route.methods is None)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(templates, st.sampled_from([None, ("GET",), ("POST",), ("GET", "POST")])),
        min_size=1,
        max_size=6,
    ),
    st.lists(_seg, min_size=1, max_size=5),
    st.sampled_from(["GET", "POST"]),
)
def test_match_agrees_with_naive_most_specific(
    specs: list[tuple[str, tuple[str, ...] | None]], segments: list[str], method: str
) -> None:
    """The trie matcher picks the most specific matching route (segments left to right,
    then listed method), as a brute-force scan would; conflicting maps are skipped."""
    routes = make_routes(specs)
    if find_conflicts(routes):
        return
    path = "/" + "/".join(segments)
    candidates = []
    for route in routes:
        if route.methods is not None and method not in route.methods:
            continue
        params = _naive_matches(route, segments)
        if params is not None:
            candidates.append((_specificity(route), route, params))
    try:
        found = Router(routes).match(method, path)
    except AmbiguousPath:
        return  # refused: another reading of it (case, trailing slash) is another route
    if not candidates:
        assert found is None
        return
    candidates.sort(key=lambda c: c[0])
    best_key, best_route, best_params = candidates[0]
    assert [c for c in candidates if c[0] == best_key] == [candidates[0]], "ambiguous without conflict"
    assert found is not None
    assert found.route is best_route, (found.route.label, best_route.label)
    assert found.params == best_params
