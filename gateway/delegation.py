"""`tokens.delegation`: the policy for child tokens (issue 16, item 3; gateway/lineage.py,
admin/delegate.py). A child lives at most `max_ttl` (and never past its parent's end), sits at
most `max_depth` levels below a root token (a child holds `delegate` only while a grandchild
would still be within that depth), and a parent has at most `max_children` unexpired children
at once."""

from __future__ import annotations

from dataclasses import dataclass

from tokenward.gateway.config_decode import integer, setting
from tokenward.gateway.durations import parse_duration

DEFAULT_CHILD_TTL = 15 * 60.0  # a child's TTL when the request names none


@dataclass(frozen=True, slots=True)
class DelegationSettings:
    max_ttl: float = setting(12 * 3600.0, parse_duration)
    max_depth: int = setting(2, integer(1, 10))
    max_children: int = setting(100, integer(1, 100_000))
