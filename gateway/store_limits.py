"""Rate limits and credits in the store: one script call per request (one round trip).

`SPEND` checks every limit a request meets (GCRA: one "theoretical arrival time" per limit,
in microseconds of the server's clock, so gateways' clocks never matter) and the token's
credit budget, and spends all of them only if all pass: several limits and the budget are
decided together, atomically. Every key of one request is in the token's org slot
(`tw:{org}:rl:...`, `tw:{org}:credit:<id>`), so the script runs on a Cluster too; a limit on a
team or a service account is shared by all their tokens because its key names the holder.

A call whose outcome is unknown (a connection torn down under it) may have spent: counts err
towards refusing, never towards over-spending.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from tokenward.gateway.limits import Credits, RateLimit
from tokenward.gateway.store_link import StoreLink

# KEYS: one per limit, then the credit hash (when ARGV[4] > 0).
# ARGV: n limits, cost, force ('1': spend without refusing, for local mode's sync), credit
# mode (0 none, 1 take `want`, 2 take up to `want`), want, max_uses, refill every (µs, 0:
# none), refill amount, anchor (µs), then per limit: emission interval (µs), period (µs).
# Returns {allowed, denied (0, limit index, or -1: credits), retry µs, credits left (-1:
# none), credits granted, then per limit: remaining, reset µs}.
SPEND = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n, cost, force, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1', tonumber(ARGV[4])
local denied, retry = 0, 0
local tats, fresh, olds = {}, {}, {}
for i = 1, n do
  local T, P = tonumber(ARGV[8 + 2 * i]), tonumber(ARGV[9 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new = tat + T * cost
  olds[i] = tat
  local wait = new - P - now
  if wait > 0 and not force then
    if denied == 0 then denied = i end
    if wait > retry then retry = wait end
    tats[i], fresh[i] = tat, false
  else
    tats[i], fresh[i] = new, true
  end
end
local left, granted = -1, 0
if mode > 0 then
  local key = KEYS[n + 1]
  local want, maxu, every = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local amount, anchor = tonumber(ARGV[8]), tonumber(ARGV[9])
  local period = 0
  if every > 0 then period = math.floor((now - anchor) / every) end
  local stored = redis.call('HMGET', key, 'left', 'p')
  if stored[1] then
    left = tonumber(stored[1])
    if every > 0 and period > tonumber(stored[2] or '0') then left = amount end
  else
    left = maxu
  end
  granted = want
  -- a lease (mode 2): at most an eighth of what is left, so that other processes find some
  if mode == 2 then granted = math.min(want, math.max(1, math.floor(left / 8))) end
  if granted < 1 or left < granted then
    granted = 0
    if denied == 0 then
      denied = -1
      if every > 0 then retry = anchor + (period + 1) * every - now else retry = 0 end
    end
  elseif denied == 0 then
    left = left - granted
    redis.call('HSET', key, 'left', left, 'p', period)
  else
    granted = 0
  end
end
local out = {denied == 0 and 1 or 0, denied, math.floor(retry), left, granted}
for i = 1, n do
  local T, P = tonumber(ARGV[8 + 2 * i]), tonumber(ARGV[9 + 2 * i])
  if denied == 0 and fresh[i] then
    redis.call('SET', KEYS[i], tats[i], 'PX', math.floor((tats[i] - now) / 1000) + 1000)
  end
  local tat = tats[i]
  if denied ~= 0 then tat = olds[i] end  -- refused: nothing was spent
  local remaining = math.floor((P - (tat - now)) / T)
  if remaining < 0 or (denied ~= 0 and not fresh[i]) then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = math.floor(tat - now)
end
return out
"""

# Gives back credits taken ahead (local mode's lease) if the refill period has not moved on.
# KEYS: the credit hash. ARGV: amount, the period they were taken in.
RETURN_CREDITS = """
local stored = redis.call('HMGET', KEYS[1], 'left', 'p')
if stored[1] and tostring(stored[2]) == ARGV[2] then
  return redis.call('HINCRBY', KEYS[1], 'left', ARGV[1])
end
return -1
"""

US = 1_000_000


def limit_key(org: str, holder: str, name: str) -> str:
    """A limit's counter: `holder` is `tok:<id>`, `acct:<id>`, `team:<name>` or
    `route:<digest>:<id>` (a route default, per token)."""
    return f"tw:{{{org}}}:rl:{holder}:{name}"


def credit_key(org: str, key_id: str) -> str:
    return f"tw:{{{org}}}:credit:{key_id}"


def route_holder(route_label: str, key_id: str) -> str:
    return f"route:{hashlib.blake2b(route_label.encode(), digest_size=6).hexdigest()}:{key_id}"


@dataclass(frozen=True, slots=True)
class Spent:
    """What `SPEND` answered."""

    allowed: bool
    denied: int  # 0: none; i (1-based): the limit that refused; -1: the credits
    retry_after: float  # seconds
    credits_left: int | None
    credits_granted: int
    remaining: tuple[int, ...]
    reset: tuple[float, ...]  # seconds until each limit's whole quota is back


class LimitStore(StoreLink):
    """The SPEND and RETURN_CREDITS scripts, and a token's stored credits."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        super().__init__(client)
        self._spend = client.register_script(SPEND)
        self._return_credits = client.register_script(RETURN_CREDITS)

    async def spend(
        self,
        org: str,
        keys: Sequence[str],
        limits: Sequence[RateLimit],
        *,
        cost: int = 1,
        force: bool = False,
        credits: Credits | None = None,
        key_id: str = "",
        want: int = 1,
        up_to: bool = False,
    ) -> Spent:
        """Check and spend `limits` (counters `keys`) and, with `credits`, `want` of the
        token's budget, all or nothing; StoreUnavailable when the store cannot answer."""
        all_keys = list(keys)
        args: list[Any] = [len(keys), cost, 1 if force else 0, 0, want, 0, 0, 0, 0]
        if credits is not None:
            all_keys.append(credit_key(org, key_id))
            refill = credits.refill
            args[3:9] = [
                2 if up_to else 1,
                want,
                credits.max_uses,
                round(refill.seconds * US) if refill else 0,
                refill.amount if refill else 0,
                round(credits.anchor * US),
            ]
        for limit in limits:
            period = limit.seconds * US
            args += [max(1, math.floor(period / limit.limit)), round(period)]

        async def op() -> list[Any]:
            return list(await self._spend(keys=all_keys, args=args))

        reply = [int(x) for x in await self._call(op, retry=False)]
        pairs = reply[5:]
        return Spent(
            allowed=reply[0] == 1,
            denied=reply[1],
            retry_after=reply[2] / US,
            credits_left=reply[3] if credits is not None else None,
            credits_granted=reply[4],
            remaining=tuple(pairs[0::2]),
            reset=tuple(x / US for x in pairs[1::2]),
        )

    async def return_credits(self, org: str, key_id: str, amount: int, period: int) -> None:
        async def op() -> Any:
            return await self._return_credits(keys=[credit_key(org, key_id)], args=[amount, period])

        await self._call(op, retry=False)

    async def stored_credits(self, org: str, key_id: str) -> tuple[int, int] | None:
        """The (left, refill period) pair of a token's budget; None: never used."""

        async def op() -> list[Any]:
            return list(await self.client.hmget(credit_key(org, key_id), "left", "p"))

        left, period = await self._call(op)
        return None if left is None else (int(left), int(period or 0))
