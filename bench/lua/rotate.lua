-- Each request carries the next token from a file (one per line), in order, wrapping
-- around at the end: `wrk ... -s rotate.lua URL -- TOKENS_FILE`.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function sent_total()
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("sent") end
  return total
end

tokens = {}
sent = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then table.insert(tokens, "Bearer " .. line) end
  end
end

function request()
  sent = sent + 1
  local auth = tokens[((sent - 1) % #tokens) + 1]
  return wrk.format(nil, nil, {Authorization = auth})
end
