-- wrk script: POST /checkout?user_id=U&id=I with a random user in 1..USERS and a
-- random item of the active sale (item ids are SALE_ID * 1000000 + n, n in 1..ITEMS).
--
--   SALE_ID=42 ITEMS=10000 wrk -t1 -c64 -d10s -s bench/checkout.lua http://127.0.0.1:8080
--
-- bench/run.sh reads SALE_ID and ITEMS from GET /sales/active and sets them.
-- COUNT_STATUS=1 counts responses by status (costs wrk some speed: every response is
-- handed to Lua).

local sale_id = tonumber(os.getenv("SALE_ID") or "")
local items = tonumber(os.getenv("ITEMS") or "")
local users = tonumber(os.getenv("USERS") or "1000000")
local count_status = os.getenv("COUNT_STATUS") == "1"

if not sale_id or not items or items < 1 then
  io.stderr:write("checkout.lua: set SALE_ID and ITEMS (see bench/run.sh)\n")
  os.exit(2)
end

local base = sale_id * 1000000
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

function init(args)
  -- a different sequence per thread and per run
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  statuses = {}
end

function request()
  local path = string.format("/checkout?user_id=%d&id=%.0f",
    math.random(1, users), base + math.random(1, items))
  return wrk.format("POST", path, nil, "")
end

if count_status then
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end

  function done(summary, latency, requests)
    local total = {}
    for _, thread in ipairs(threads) do
      local s = thread:get("statuses")
      for code, n in pairs(s) do
        total[code] = (total[code] or 0) + n
      end
    end
    io.write("status counts:")
    for code, n in pairs(total) do
      io.write(string.format(" %d=%d", code, n))
    end
    io.write("\n")
  end
end
