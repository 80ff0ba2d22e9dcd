-- wrk script for the ceiling (examples/bare_responder): the same requests as
-- bench/checkout.lua (POST /checkout with a random user and item, an empty
-- body), so that the load generator does the same work as in the checkout
-- crowd; the bare responder answers every one with a fixed 200.
--
--   SALE_ID=1 ITEMS=10000 COUNT_STATUS=1 wrk -t1 -c64 -d10s --latency -s bench/ceiling.lua http://127.0.0.1:18081

local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")

local sale_id = lib.env_number("SALE_ID", 1)
local items = lib.env_number("ITEMS", 10000)
local users = lib.env_number("USERS", 1000000)
local base = sale_id * 1000000

lib.install({ count = os.getenv("COUNT_STATUS") == "1" })

function request()
  local path = string.format("/checkout?user_id=%d&id=%.0f",
    math.random(1, users), base + math.random(1, items))
  return wrk.format("POST", path, nil, "")
end
