-- wrk script: POST /checkout?user_id=U&id=I with a random user in 1..USERS and a
-- random item of the active sale (item ids are SALE_ID * 1000000 + n, n in 1..ITEMS).
-- bench/bench.sh runs it as the checkout crowd (fresh sale) and as the
-- post-sellout crowd (the same requests once every item is sold).
--
--   SALE_ID=42 ITEMS=10000 wrk -t1 -c64 -d10s --latency -s bench/checkout.lua http://127.0.0.1:8080
--
-- bench/run.sh and bench/bench.sh read SALE_ID and ITEMS from GET /sales/active.
-- COUNT_STATUS=1 counts responses by status (costs wrk some speed: every
-- response is handed to Lua; bench.sh sets it for every scenario and the
-- ceiling alike). The last line is the BENCH summary of bench/lib.lua.

local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")

local sale_id = lib.env_number("SALE_ID", nil, "checkout.lua")
local items = lib.env_number("ITEMS", nil, "checkout.lua")
local users = lib.env_number("USERS", 1000000)
local base = sale_id * 1000000

lib.install({ count = os.getenv("COUNT_STATUS") == "1" })

function request()
  local path = string.format("/checkout?user_id=%d&id=%.0f",
    math.random(1, users), base + math.random(1, items))
  return wrk.format("POST", path, nil, "")
end
