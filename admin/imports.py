"""Importing keys from an old system (`POST …/tokens/import`, `tokenward token import`).

An imported key keeps working as it is, verified at the gateway like a token of ours
(gateway/legacy_keys.py): it gets a normal key id, an argon2id hash and a keyed secret check,
a lookup entry under the server's `tokens.legacy_lookup_key`, and the same rules as an issued
token (the team's and the caller's grant, the expiry policy, the quota, constraints and
client networks). Its plaintext is in no response, log line, audit event, error message or
stored value. Rotating it issues a token of ours in its place: that is how it is retired.

An imported key is a credential for the gateway's routes, never for administration: it may not
hold a scope on the admin plane's resources (`admin:team`, anything on `team` or `org`), and
the admin API refuses it as a caller whatever its record says (admin/endpoints.py). A key too
easy to guess is refused (`legacy_keys.check_importable`). Its environment is the one asked
for, else `test` for a key labelled as a test key (`sk_test_…`), else `live`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

from tokenward.actor import Actor
from tokenward.gateway import legacy_keys
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.refusal import Refusal
from tokenward.gateway.scopes import RESERVED_RESOURCES, Scope, capability, format_scopes
from tokenward.gateway.store_changes import Change
from tokenward.gateway.store_records import Conflict
from tokenward.gateway.tokens import generate, new_check_key, secret_check
from tokenward.metadata import metadata_field
from tokenward.rules import (
    Invalid,
    Lifetime,
    check_grant,
    cidrs_field,
    constraints_field,
    environment_arg,
    iso,
    scopes_field,
)
from tokenward.service import DEFAULT_TTL, TokenService

DELEGATE = capability("delegate")  # minting children takes a token of ours

IMPORT_OFF = (
    "key: importing keys is off on this server: set tokens.legacy_lookup_key (a random secret of at "
    "least 32 characters, e.g. from `openssl rand -hex 32`, kept out of the store) and restart"
)
DUPLICATE = (
    "key: this key was imported already; a key is imported once (find its token in `tokenward "
    "token list`, marked LEGACY, and delete it first to import it again)"
)


def refuse_admin_powers(scopes: Sequence[Scope], field: str) -> None:
    """Invalid: a scope on the admin plane's resources (`admin:team`, `admin:org`, anything on
    `team` or `org`): an imported key never administers."""
    for scope in scopes:
        if scope == DELEGATE:
            raise Invalid(
                f"{field}: delegate cannot be held by an imported key: minting child tokens "
                "(POST /v1/delegate) takes a token of ours",
                field,
            )
        if scope.resource in RESERVED_RESOURCES:
            raise Invalid(
                f"{field}: {scope} is an admin-plane power, which an imported key cannot hold: imported "
                "keys are for the gateway's routes; issue a token of ours for administration "
                "(tokenward token create)",
                field,
            )


class ImportService(TokenService):
    """Token changes, and importing keys from an old system."""

    async def import_key(
        self,
        actor: Actor,
        *,
        org: str,
        team: str,
        name: str,
        key: str,
        scopes: Sequence[str],
        description: str = "",
        lifetime: Lifetime = DEFAULT_TTL,
        metadata: object = None,
        environment: str | None = None,
        constraints: dict[str, str] | None = None,
        allowed_cidrs: Sequence[str] = (),
    ) -> TokenRecord:
        """Import `key` into `team` as a token (returned without its key); Conflict if this
        key was imported already (each key once, in any org: the same answer whichever org
        holds it). `environment` None: the key's conventional label says (`sk_test_`: test)."""
        policy = self.runtime.settings.tokens
        lookup_key = policy.legacy_lookup_key
        if lookup_key is None:
            raise Invalid(IMPORT_OFF, "key")
        try:
            legacy_keys.check_importable(key, policy.accepted_prefixes)
        except legacy_keys.LegacyKeyError as exc:
            raise Invalid(str(exc), "key") from None
        await self.team(org, team)
        granted = scopes_field(list(scopes), "scopes")
        refuse_admin_powers(granted, "scopes")
        notes = metadata_field(metadata or {})
        pinned, cidrs = constraints_field(constraints or {}), cidrs_field(list(allowed_cidrs))
        env = legacy_keys.conventional_environment(key) if environment is None else environment_arg(environment)
        issued = time.time()
        expires_at = self._expiry(actor, lifetime, issued)
        if actor.principal is not None:
            check_grant(
                actor.principal,
                team=team,
                scopes=granted,
                constraints=pinned,
                allowed_cidrs=cidrs,
                expires_at=expires_at,
            )
        # every attempt is charged to the calling token: a 409 says the key is held (in any
        # org), so unbudgeted, imports would be a guessing oracle at the admin API's speed
        if not self.runtime.authenticator.imports.take(actor.principal.token.id if actor.principal else None):
            raise Refusal(429, "rate_limited", None, "too many imports: try again in a few seconds", field="key")
        digest = legacy_keys.lookup_digest(lookup_key, key)
        held_by = await self.store.legacy_key_id(digest)
        if held_by is not None and await self.store.get_token(held_by) is not None:
            raise Conflict(DUPLICATE)  # early, before the argon2 work
        key_id = generate(policy.prefix)[1].key_id
        check_key = new_check_key()
        record = TokenRecord(
            id=key_id,
            prefix="",  # no prefix of ours: no token of our format can prove this record
            org=org,
            team=team,
            name=name,
            description=description,
            scopes=granted,
            secret_hash=await self.runtime.hasher.hash(key),
            secret_check=secret_check(key_id, key, check_key),
            check_key=check_key,
            created_at=issued,
            created_by=actor.name,
            expires_at=expires_at,
            constraints=pinned,
            allowed_cidrs=cidrs,
            environment=env,
            metadata=notes,
            legacy_digest=digest,
        )
        if await self.store.claim_legacy_key(digest, key_id) is not None:
            raise Conflict(DUPLICATE)
        entry = self.token_entry(
            actor,
            "token.imported",
            record,
            scopes=format_scopes(granted),
            expires_at=iso(expires_at),
            environment=env,
            legacy=True,
        )
        try:
            await self.store.mark_legacy_present()
            await self.store.create_token_in_quota(record, policy.max_per_team, entry, actor.fence())
        except BaseException:
            with contextlib.suppress(Exception):  # a claim left behind is taken over later
                await self.store.release_legacy_key(digest, key_id)
            raise
        self.committed(entry)
        # every gateway: look imported keys up from now on, and forget earlier refusals of this one
        await self.store.publish([Change("legacy", "")])
        return record
