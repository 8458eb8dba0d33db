"""Every key name in the store, and the hash tag that decides its Redis Cluster slot.

Org data shares the hash tag `{org}`, so one org's writes (a record and its indexes) stay in
one cluster slot and one script or MULTI can change them together. A token record lives under
its own key id (`tw:tok:{id}`) because the gateway knows only the key id when a request
arrives. The org list, the audit stream and the change log are keys of their own slots.
No command, pipeline or script touches keys of two slots at once.
"""

from __future__ import annotations


class Keys:
    orgs = "tw:orgs"
    changelog = "tw:changes:log"
    audit = "tw:audit"

    @staticmethod
    def teams(org: str) -> str:
        return f"tw:{{{org}}}:teams"

    @staticmethod
    def team(org: str, team: str) -> str:
        return f"tw:{{{org}}}:team:{team}"

    @staticmethod
    def service_accounts(org: str, team: str) -> str:
        return f"tw:{{{org}}}:team:{team}:sas"

    @staticmethod
    def service_account(org: str, team: str, name: str) -> str:
        return f"tw:{{{org}}}:team:{team}:sa:{name}"

    @staticmethod
    def team_tokens(org: str, team: str | None) -> str:
        return f"tw:{{{org}}}:team:{team}:tokens" if team else f"tw:{{{org}}}:org-tokens"

    @staticmethod
    def org_tokens(org: str) -> str:
        return f"tw:{{{org}}}:tokens"

    @staticmethod
    def token(key_id: str) -> str:
        return f"tw:tok:{{{key_id}}}"

    # Indexes for bounded pages (same slot as the org's other keys):
    @staticmethod
    def teams_by_name(org: str) -> str:
        """Team names in a sorted set (all scores 0): pages in name order by ZRANGE BYLEX."""
        return f"tw:{{{org}}}:teams:by-name"

    @staticmethod
    def service_accounts_by_name(org: str, team: str) -> str:
        return f"tw:{{{org}}}:team:{team}:sas:by-name"

    @staticmethod
    def service_account_tokens(org: str, team: str, name: str) -> str:
        """A service account's token ids, scored by created_at like the team index."""
        return f"tw:{{{org}}}:team:{team}:sa:{name}:tokens"

    @staticmethod
    def service_account_tokens_built(org: str, team: str) -> str:
        """Set once the team's tokens from before the service-account indexes are in them."""
        return f"tw:{{{org}}}:team:{team}:sa-tokens-built"

    # Usage per token and UTC day (gateway/usage.py): in the token's own slot.
    @staticmethod
    def usage(key_id: str, day: str) -> str:
        """A token's usage counts on one UTC day (`2026-11-28`): a hash that expires."""
        return f"tw:usage:{{{key_id}}}:{day}"

    # Imported keys (gateway/legacy_keys.py), each in the slot of its own lookup digest:
    legacy_present = "tw:legacy:present"  # set once any key was imported: gateways look keys up

    @staticmethod
    def legacy_key(digest: str) -> str:
        """An imported key's lookup digest -> "<key id> <claimed at>"."""
        return f"tw:legacy:{{{digest}}}"

    # Org-level service accounts (issue 14): the record under its stable id; a name -> id hash
    # (names are unique in the org); name-sorted sets of the org's and of each team's accounts
    # (paged like teams); the account's token ids (all its teams), scored by created_at; and a
    # counter bumped by every token indexed for it (a membership change checks it did not move).
    @staticmethod
    def account(org: str, account_id: str) -> str:
        return f"tw:{{{org}}}:acct:{account_id}"

    @staticmethod
    def account_names(org: str) -> str:
        return f"tw:{{{org}}}:acct-names"

    @staticmethod
    def account_former_names(org: str) -> str:
        """A name given up in a rename -> the id of the account that held it last."""
        return f"tw:{{{org}}}:acct-former"

    @staticmethod
    def accounts_by_name(org: str) -> str:
        return f"tw:{{{org}}}:acct-by-name"

    @staticmethod
    def team_accounts(org: str, team: str) -> str:
        return f"tw:{{{org}}}:team:{team}:accts"

    @staticmethod
    def account_tokens(org: str, account_id: str) -> str:
        return f"tw:{{{org}}}:acct:{account_id}:tokens"

    @staticmethod
    def account_issued(org: str, account_id: str) -> str:
        return f"tw:{{{org}}}:acct:{account_id}:issued"

    @staticmethod
    def account_restoring(org: str, account_id: str) -> str:
        """Tokens of the account being restored: token id -> "team<TAB>time" (see MARK_RESTORE)."""
        return f"tw:{{{org}}}:acct:{account_id}:restoring"

    @staticmethod
    def accounts_migrated(org: str, team: str) -> str:
        """Set once the team's service accounts from before org-level accounts are migrated."""
        return f"tw:{{{org}}}:team:{team}:accts-migrated"

    # Child tokens (gateway/lineage.py, gateway/store_children.py): a parent's unexpired
    # children, scored by their expiry; in the org's slot.
    @staticmethod
    def children(org: str, parent_id: str) -> str:
        return f"tw:{{{org}}}:children:{parent_id}"
