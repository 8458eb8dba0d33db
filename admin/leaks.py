"""Leak reports: whoever holds a token's plaintext may kill it, whichever org it belongs to.
A mixin of the token service (`tokenward.service.TokenService`), with no HTTP.

A key imported from an old system (gateway/legacy_keys.py) is found as the gateway finds it:
its lookup digest gives the key id, then the key is verified as the secret, on the same
lookup budget and failure throttle as requests. A result shows no character of anything that
is not a token of ours: an imported key is shown as `legacy_<key id>`, anything else that was
not found as `(not a token: N characters)`."""

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
        authenticator = self.runtime.authenticator
        try:
            parsed = parse_token(text, self.runtime.settings.tokens.accepted_prefixes)
        except TokenFormatError:
            return await self._report_imported(actor, text)
        try:
            proven = await authenticator.prove(parsed, bind_prefix=False)
        except Throttled:
            return parsed.display_prefix, "throttled"
        # the revocation itself works on the store's current record, as an admin revoke does
        return await self._revoke_leaked(actor, parsed.key_id, parsed.display_prefix, proven is not None)

    async def _report_imported(self, actor: Actor, text: str) -> tuple[str, str]:
        """`text` is not in our format: an imported key, if the gateway knows it."""
        try:
            proven = await self.runtime.authenticator.prove_legacy(text, actor.client_ip)
        except Throttled:
            return _unshown(text), "throttled"
        if proven is None:
            return _unshown(text), "not_a_token"
        return await self._revoke_leaked(actor, proven.id, proven.display_prefix, True)

    async def _revoke_leaked(self, actor: Actor, key_id: str, shown: str, proven: bool) -> tuple[str, str]:
        record = await self.store.get_token(key_id) if proven else None
        if record is None:
            return shown, "unknown"
        assert actor.principal is not None
        outcome = "already_revoked"
        by = actor if actor.principal.token.org == record.org else FROM_ANOTHER_ORG  # no foreign id
        if by is not actor and record.legacy:  # its id is not in the key: not the reporter's to learn
            shown = "(an imported key of another org)"
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

        result = await self.store.change_token(key_id, leaked, actor.fence())
        if result is None:  # deleted meanwhile
            return shown, "unknown"
        self.committed(result[1].audit if result[1] is not None else None)
        if by is not actor:
            reported_elsewhere(self.runtime.audit, actor, outcome)
        return shown, outcome


# A leak reported by a caller of another org is recorded in the token's org with no id, name,
# team or address of the reporter's org (revoked_by, the event's actor_id); its revocation
# level is unset (counts as the org's; leaked is final anyway). The reporter's org gets its
# own event, with no id or name of the other org's token.
FROM_ANOTHER_ORG = Actor("leak report from another org")


def reported_elsewhere(audit: AuditLog, actor: Actor, outcome: str) -> None:
    audit.emit("token.leak_reported", **actor.fields(), result=outcome, subject="a token of another org")


def _unshown(text: str) -> str:
    """What a result shows of a reported string that is not a token of ours: its length only
    (it may be a secret of some other system, or an imported key whose secret did not match)."""
    return f"(not a token: {len(text)} characters)"
