"""Leak reports: whoever holds a token's plaintext may kill it, whichever org it belongs to.
A mixin of the token service (`tokenward.service.TokenService`), with no HTTP."""

from __future__ import annotations

import time

from tokenward.actor import Actor, Changes
from tokenward.gateway.audit import AuditLog
from tokenward.gateway.records import REVOKED, TokenRecord
from tokenward.gateway.store import TokenEdit
from tokenward.gateway.throttle import Throttled
from tokenward.gateway.tokens import TokenFormatError
from tokenward.gateway.tokens import parse as parse_token
from tokenward.rules import actor_level


class LeakReports(Changes):
    """`report_leak`: revoke a token proven by its plaintext, for good."""

    async def report_leak(self, actor: Actor, text: str) -> tuple[str, str]:
        """Holding the plaintext is the authority to kill it, whichever org it belongs to.
        The secret is proven as at the gateway (`Authenticator.prove`): a wrong secret that fails
        the cheap secret check costs no argon2, and failed verifications drain the same failure
        throttle as requests do. (what is shown of the token, result): revoked, already_revoked,
        unknown, not_a_token or throttled (report it again later)."""
        try:
            parsed = parse_token(text, self.runtime.settings.tokens.accepted_prefixes)
            proven = await self.runtime.authenticator.prove(parsed, bind_prefix=False)
        except TokenFormatError:
            return _redacted(text), "not_a_token"
        except Throttled:
            return parsed.display_prefix, "throttled"
        # the revocation itself works on the store's current record, as an admin revoke does
        record = await self.store.get_token(parsed.key_id) if proven is not None else None
        if record is None:
            return parsed.display_prefix, "unknown"
        assert actor.principal is not None
        outcome = "already_revoked"
        by = actor if actor.principal.token.org == record.org else FROM_ANOTHER_ORG  # no foreign id
        level = actor_level(actor.principal) if by is actor else None

        def leaked(current: TokenRecord) -> TokenEdit | None:
            nonlocal outcome
            if current.revoke_reason == "leaked":
                outcome = "already_revoked"
                return None
            already = current.status() == REVOKED
            outcome = "already_revoked" if already else "revoked"
            revoked_at = current.revoked_at if already and current.revoked_at is not None else time.time()
            # final: whoever reported it, no restore brings a leaked secret back
            updated = current.revoked(revoked_at, by.name, "leaked", level)
            return TokenEdit(updated, self.token_entry(by, "token.leaked", updated, was_revoked=already))

        result = await self.store.change_token(parsed.key_id, leaked, actor.fence())
        if result is None:  # deleted meanwhile
            return parsed.display_prefix, "unknown"
        self.committed(result[1].audit if result[1] is not None else None)
        if by is not actor:
            reported_elsewhere(self.runtime.audit, actor, outcome)
        return parsed.display_prefix, outcome


# A leak reported by a caller of another org is recorded in the token's org with no id, name,
# team or address of the reporter's org (revoked_by, the event's actor_id); its revocation
# level is unset (counts as the org's; leaked is final anyway). The reporter's org gets its
# own event, with no id or name of the other org's token.
FROM_ANOTHER_ORG = Actor("leak report from another org")


def reported_elsewhere(audit: AuditLog, actor: Actor, outcome: str) -> None:
    audit.emit("token.leak_reported", **actor.fields(), result=outcome, subject="a token of another org")


def _redacted(text: str) -> str:
    return (text[:10] + "…") if len(text) > 10 else "…"
