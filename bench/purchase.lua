-- wrk script: the purchase path. POST /purchase?code=C with C drawn at random
-- from CODES prepared codes, the same codes and the same draw as
-- redis-benchmark's EVALSHA of lua/purchase.lua in bench/bench.sh:
--
--   C = SALE_ID .. "-1" .. i as 12 digits .. "-" .. 32 zeros,
--   i in 0..CODES-1 (the code's user is 10^12 + i).
--
-- The
-- codes are prepared by bench/prep_codes.py (see bench/README.md for the
-- mix): the first purchase of a code buys what is still unsold of its
-- checkout (200) or nothing (409 nothing_purchased); a repeat replays the
-- stored outcome.
--
--   SALE_ID=1 CODES=100000 wrk -t1 -c64 -d10s --latency -s bench/purchase.lua http://127.0.0.1:8080

local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")

local sale_id = lib.env_number("SALE_ID", nil, "purchase.lua")
local ncodes = lib.env_number("CODES", nil, "purchase.lua")
local prefix = string.format("/purchase?code=%d-", sale_id)

lib.install({ count = os.getenv("COUNT_STATUS") == "1" })

function request()
  local i = math.random(0, ncodes - 1)
  return wrk.format("POST", string.format("%s1%012d-00000000000000000000000000000000", prefix, i), nil, "")
end
