"""The store's Lua scripts: each one change that must happen atomically on the server.

Each script is the text redis-py sends (EVAL, or EVALSHA once registered), with its KEYS and
ARGV contract in the comment above it. Every key a script touches is in one cluster slot
(see store_keys). The transition scripts answer with the result codes below them.
"""

from __future__ import annotations

# Sets last_used_at only on a token that still exists (a late flush must not resurrect it).
TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local old = tonumber(redis.call('HGET', KEYS[1], 'last_used_at') or '0')
  if tonumber(ARGV[1]) > old then redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1]) end
  return 1
end
return 0
"""

# One command appends a whole batch of audit events (ARGV[2..]) to the capped stream.
APPEND_AUDIT = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[1])
return #ARGV - 1
"""

# Replaces a token's record only if it is byte for byte the one the caller read (a
# compare-and-set: a revoke or any other write in between wins, and this one is dropped).
SET_IF_UNCHANGED = """
if redis.call('HGET', KEYS[1], 'data') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'data', ARGV[2])
  return 1
end
return 0
"""

# One page of a (created_at, id) index after a cursor: O(log n + count) whatever the index
# holds. The cursor is the last row already returned (score, member); if that row has been
# deleted since, the page starts after every row that sorts no later than it (rows with the
# same score are ordered by member, byte-wise: a binary search among them; Lua's own string
# comparison follows the server's locale, so bytes are compared one by one).
INDEX_PAGE = """
local function le(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local start = 0
if ARGV[1] ~= '' then
  local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
  if rank then
    start = rank + 1
  else
    local lo = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[2])
    local hi = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[2])
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local m = redis.call('ZRANGE', KEYS[1], mid, mid)[1]
      if le(m, ARGV[1]) then lo = mid + 1 else hi = mid end
    end
    start = lo
  end
end
return redis.call('ZRANGE', KEYS[1], start, start + tonumber(ARGV[3]) - 1, 'WITHSCORES')
"""

# A token's index entries, only while its team (or the org level) holds fewer than the
# quota: the count and the writes in one script, so concurrent creations cannot pass it.
# KEYS: team index, org index, service-account index (or the team index again).
INDEX_IN_QUOTA = """
local held = redis.call('ZCARD', KEYS[1])
local quota = tonumber(ARGV[3])
if quota >= 0 and redis.call('ZSCORE', KEYS[1], ARGV[2]) == false and held >= quota then
  return -held
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2]) end
return held + 1
"""

# The name index of a set (teams, service accounts), rebuilt from the set when the two
# disagree in size (keys written before the name index existed).
SYNC_NAME_INDEX = """
if redis.call('ZCARD', KEYS[2]) == redis.call('SCARD', KEYS[1]) then return 0 end
redis.call('DEL', KEYS[2])
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('ZADD', KEYS[2], 0, name)
end
return 1
"""

# -- atomic token transitions (see Store.change_token) ----------------------------------------
# What TRANSITION and CREATE_FENCED answer when they wrote nothing: the record is gone, its
# version is not the one decided on, the successor's id is taken, the acting token changed.
GONE, STALE, SUCCESSOR_EXISTS, ACTOR_CHANGED = -1, -2, -3, -4

# KEYS[1] the record; then, if ARGV[6] is not empty, the acting token's record (its fence);
# then, if ARGV[5] is not empty, the successor's key (a rotation: same slot); then, if given,
# the audit stream. ARGV: expected version, new data ('' deletes the record), audit maxlen,
# audit event ('' none), successor data ('' none), the actor's expected version ('' none).
TRANSITION = """
local record = KEYS[1]
if redis.call('EXISTS', record) == 0 then return -1 end
local k = 2
if ARGV[6] ~= '' then
  if redis.call('EXISTS', KEYS[2]) == 0 or (redis.call('HGET', KEYS[2], 'v') or '0') ~= ARGV[6] then
    return -4
  end
  k = 3
end
local version = redis.call('HGET', record, 'v') or '0'
if version ~= ARGV[1] then return -2 end
if ARGV[5] ~= '' then
  if redis.call('EXISTS', KEYS[k]) == 1 then return -3 end
  redis.call('HSET', KEYS[k], 'data', ARGV[5])
  k = k + 1
end
if ARGV[2] == '' then
  redis.call('DEL', record)
else
  redis.call('HSET', record, 'data', ARGV[2], 'v', tostring(tonumber(version) + 1))
end
if ARGV[4] ~= '' and KEYS[k] then
  redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
end
return 1
"""

# A new token's record, written only while the acting token's record is still the version
# its fence accepted. KEYS: the record, the actor's record, the audit stream (optional).
# ARGV: the actor's expected version, data, audit maxlen, audit event ('' none).
CREATE_FENCED = """
if redis.call('EXISTS', KEYS[2]) == 0 or (redis.call('HGET', KEYS[2], 'v') or '0') ~= ARGV[1] then
  return -4
end
if redis.call('HSETNX', KEYS[1], 'data', ARGV[2]) == 0 then return 0 end
if ARGV[4] ~= '' and KEYS[3] then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
end
return 1
"""

# A record created only if absent, with its name indexed and its audit event, all or nothing:
# a create that loses to an existing record writes no event. KEYS[1] the record; then, if
# ARGV[3] is not empty, the name set and the name-sorted set to add ARGV[3] to; then, if
# given, the audit stream. ARGV: 'hash' (HSETNX field `data`) or 'string' (SET NX), the
# data, the name ('' none), audit maxlen, audit event ('' none).
CREATE_AUDITED = """
local created
if ARGV[1] == 'hash' then
  created = redis.call('HSETNX', KEYS[1], 'data', ARGV[2])
else
  created = redis.call('SET', KEYS[1], ARGV[2], 'NX') and 1 or 0
end
if created == 0 then return 0 end
local k = 2
if ARGV[3] ~= '' then
  redis.call('SADD', KEYS[2], ARGV[3])
  redis.call('ZADD', KEYS[3], 0, ARGV[3])
  k = 4
end
if ARGV[5] ~= '' and KEYS[k] then
  redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[5])
end
return 1
"""

# Adds one flush's usage counts to a (token, day) hash, at most once per batch: KEYS[1] the
# hash; ARGV[1] the writing tally's worker id, ARGV[2] its batch number, ARGV[3] the hash's
# time to live (s), then field/increment pairs. A batch sent again (its first outcome unknown)
# finds its number already recorded under 'w:<worker>' and adds nothing.
ADD_USAGE = """
local mark = 'w:' .. ARGV[1]
if tonumber(redis.call('HGET', KEYS[1], mark) or '0') >= tonumber(ARGV[2]) then return 0 end
for i = 4, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], mark, ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# Claims an imported key's lookup entry (KEYS[1]) for a new record: ARGV[1] the new value,
# ARGV[2] the value it must have now ('' = absent). 1 when claimed, else 0.
CLAIM_LEGACY = """
local current = redis.call('GET', KEYS[1]) or ''
if current == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# Drops an imported key's lookup entry (KEYS[1]) only while it names key id ARGV[1].
RELEASE_LEGACY = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
