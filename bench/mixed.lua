-- wrk script: a mixed, realistic flow. Each shopper (a fresh random user in
-- 1..USERS) goes through, one request at a time:
--
--   1. GET /sales/active
--   2. GET /sales/{SALE_ID}/items?offset=O&limit=PAGE   a random page
--   3. POST /checkout of K distinct items of that page, one after the other,
--      K random in 1..MAX_ITEMS
--   4. POST /purchase?code=... with the code the checkouts returned (skipped
--      when none was accepted)
--
-- then leaves, and a new shopper comes. A wrk thread keeps as many shoppers
-- in flight as it has connections. wrk does not tell a script which request a
-- response answers, so every request carries an X-Request-Id
-- (<shopper>.<step>), which the server echoes; the response handler finds
-- the shopper by it.
--
--   SALE_ID=1 ITEMS=10000 wrk -t1 -c64 -d10s --latency -s bench/mixed.lua http://127.0.0.1:8080

local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")

local sale_id = lib.env_number("SALE_ID", nil, "mixed.lua")
local items = lib.env_number("ITEMS", nil, "mixed.lua")
local users = lib.env_number("USERS", 1000000)
local page = math.min(lib.env_number("PAGE", 50), items)
local max_items = math.max(1, math.min(lib.env_number("MAX_ITEMS", 3), page))
local base = sale_id * 1000000
local pages = math.ceil(items / page)

local shoppers = {} -- id -> shopper
local ready, head, tail = {}, 1, 0 -- shoppers whose next request can go
local next_id = 0

local function push(s)
  tail = tail + 1
  ready[tail] = s
end

local function new_shopper()
  next_id = next_id + 1
  local offset = (math.random(1, pages) - 1) * page
  local picks, seen = {}, {}
  local k = math.random(1, max_items)
  local span = math.min(page, items - offset)
  k = math.min(k, span)
  while #picks < k do
    local n = offset + math.random(1, span)
    if not seen[n] then
      seen[n] = true
      picks[#picks + 1] = n
    end
  end
  local s = { id = tid * 1e9 + next_id, user = math.random(1, users), offset = offset,
    picks = picks, step = 1, code = nil }
  shoppers[s.id] = s
  lib.bump("shoppers")
  return s
end

-- the request of shopper s's current step
local function build(s)
  local path
  local nchk = #s.picks
  if s.step == 1 then
    path = "/sales/active"
  elseif s.step == 2 then
    path = string.format("/sales/%d/items?offset=%d&limit=%d", sale_id, s.offset, page)
  elseif s.step <= 2 + nchk then
    path = string.format("/checkout?user_id=%d&id=%.0f", s.user, base + s.picks[s.step - 2])
  else
    path = "/purchase?code=" .. s.code
  end
  local headers = { ["X-Request-Id"] = string.format("%.0f.%d", s.id, s.step) }
  if s.step <= 2 then
    return wrk.format("GET", path, headers, nil)
  end
  return wrk.format("POST", path, headers, "")
end

lib.install({
  count = true,
  on_response = function(status, headers, body)
    local rid = lib.header(headers, "X-Request-Id")
    local sid = rid and tonumber(string.match(rid, "^(%d+)%."))
    local s = sid and shoppers[sid]
    if not s then
      lib.bump("unmatched")
      return
    end
    local nchk = #s.picks
    if s.step > 2 and s.step <= 2 + nchk and status == 200 then
      s.code = s.code or string.match(body, '"code":"([^"]+)"')
    end
    if s.step > 2 + nchk then
      if status == 200 then
        lib.bump("purchase_200")
      end
      shoppers[s.id] = nil
      lib.bump("shoppers_done")
      return
    end
    s.step = s.step + 1
    if s.step > 2 + nchk and not s.code then
      shoppers[s.id] = nil -- nothing to buy
      lib.bump("shoppers_done")
      return
    end
    push(s)
  end,
})

function request()
  local s
  if head <= tail then
    s = ready[head]
    ready[head] = nil
    head = head + 1
  else
    s = new_shopper()
  end
  return build(s)
end
