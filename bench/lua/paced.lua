-- A fixed request rate from one wrk thread: `wrk -t1 -cN ... -s paced.lua URL -- RATE`.
-- wrk calls `delay()` each time a connection is ready to send, and waits that many ms.
-- Every call takes the next slot of a fixed schedule (one every 1000/RATE ms), so the rate
-- is RATE as long as enough connections are free. When all of them are busy (the server
-- stalls), the slots missed meanwhile are sent as soon as connections come free, the ones
-- of the last CATCH_UP_MS only: a long stall shows as a lower req/s, not a flood after it.
-- Latency is timed from the moment a request is written, as wrk always does: time a late
-- request spent waiting for a free connection is not in it.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } paced_timespec;
int clock_gettime(int clk_id, paced_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local CATCH_UP_MS = 1000
local now_ts = ffi.new("paced_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_ts)
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end

local interval_ms = nil
local next_ms = nil

function init(args)
  local rate = tonumber(args[1])
  if rate == nil or rate <= 0 then error("paced.lua: pass the rate (requests/s) after --") end
  interval_ms = 1000 / rate
end

function delay()
  local now = now_ms()
  if next_ms == nil then next_ms = now end
  if next_ms < now - CATCH_UP_MS then next_ms = now - CATCH_UP_MS end
  local wait = next_ms - now
  next_ms = next_ms + interval_ms
  return math.max(0, math.floor(wait))
end
