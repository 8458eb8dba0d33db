"""Who makes an admin change, and the audit side of every change.

A change's audit event names its actor (`Actor.fields`) and is written by the store in the
same atomic, durable write as the change (`Changes.entry`), then logged once committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from tokenward.gateway.decision import Principal
from tokenward.gateway.records import ACTIVE, TeamRecord, TokenRecord
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.store import ActorFence
from tokenward.gateway.store_audit import AuditEntry
from tokenward.rules import NotFound

if TYPE_CHECKING:
    from tokenward.gateway.runtime import Runtime


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change, and from where. `principal` None: an operator at the server
    (`admin bootstrap`, the demo), named by `name` and bound by no grant rule."""

    name: str  # recorded as created_by / revoked_by: "token:<id>", "bootstrap", "demo"
    principal: Principal | None = None
    client_ip: str | None = None
    request_id: str | None = None

    @classmethod
    def of(cls, principal: Principal, client_ip: str | None, request_id: str | None) -> Actor:
        return cls(f"token:{principal.token.id}", principal, client_ip, request_id)

    def fields(self) -> dict[str, Any]:
        """Who made an admin change, and from where, as every audit event names them."""
        token = self.principal.token if self.principal else None
        return {
            "actor_id": token.id if token else self.name,
            "actor_name": token.name if token else None,
            "actor_org": token.org if token else None,
            "actor_team": token.team if token else None,
            "client_ip": self.client_ip,
            "request_id": self.request_id,
        }

    def fence(self) -> ActorFence | None:
        """The acting token's record must still be active when its change is written: a
        revocation of the actor confirmed before then stops the change (401), even one that
        landed while the change was being prepared (see Store.ActorFence)."""
        if self.principal is None:
            return None

        def check(record: TokenRecord | None) -> None:
            if record is None:
                raise Refusal(401, "invalid_token", Step.TOKEN, "invalid token")
            status = record.status(time.time())
            if status != ACTIVE:
                raise Refusal(401, "invalid_token", Step.STATUS, f"token {status}")

        return ActorFence(self.principal.token.id, check)


def token_fields(record: TokenRecord) -> dict[str, Any]:
    """The token an admin event is about: it and its org, team and service account."""
    return {
        "org": record.org,
        "team": record.team,
        "token_id": record.id,
        "token_name": record.name,
        "service_account": record.service_account,
        "service_account_id": record.service_account_id,
        **({"parent_id": record.parent_id} if record.parent_id is not None else {}),
    }


class Changes:
    """The audit side of every change: its event is written by the store in the same atomic,
    durable write as the change (`entry`), then logged once the change is committed."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.store = runtime.store

    async def team(self, org: str, team: str) -> TeamRecord:
        """The team's record, or `NotFound`."""
        record = await self.store.get_team(org, team)
        if record is None:
            raise NotFound(f"team {team!r} does not exist in org {org!r}")
        return record

    def entry(self, actor: Actor, action: str, **fields: Any) -> AuditEntry:
        event = {**actor.fields(), **fields, "action": action, "ts": time.time()}
        return AuditEntry(orjson.dumps(event), self.runtime.audit.stream_maxlen)

    def token_entry(self, actor: Actor, action: str, record: TokenRecord, **fields: Any) -> AuditEntry:
        return self.entry(actor, action, **token_fields(record), **fields)

    def committed(self, entry: AuditEntry | None) -> None:
        """Log (JSON line) an event the store has written to the audit stream with its change."""
        if entry is None:
            return
        fields = orjson.loads(entry.payload)
        action = fields.pop("action")
        fields.pop("ts", None)
        self.runtime.audit.emit(action, in_stream=True, **fields)

    async def still_authorized(self, actor: Actor) -> None:
        """The fence's check, read fresh just before a write that cannot carry it atomically
        (team and service-account writes)."""
        fence = actor.fence()
        if fence is not None:
            await self.store.fence_version(fence)
