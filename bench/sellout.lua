-- wrk script: the sellout. A crowd of users buys the sale's items: each
-- user (a fresh random id in 1..USERS) checks out CART items (default 5, at
-- most the per-user limit) and, once a checkout answer shows all CART in the
-- cart, the next request of the same wrk thread buys them with the code
-- (POST /purchase?code=...). So 10,000 items take 10,000 / CART users:
-- 2,000 with the default. Purchases go first, so a code is bought as soon as
-- a connection is free. A cart that came up short (an item sold meanwhile)
-- is not bought; its items are asked for again in the next pass. CART=1
-- makes every checkout a user of its own, bought alone.
--
-- Which item a checkout asks for (PICK):
--   perm    (default) each wrk thread walks its own random permutation of
--           1..ITEMS, then starts over: every item is asked for about once
--           per thread, the fewest requests that can sell everything, so the
--           time to sell out measures the server, not the crowd's luck;
--   random  each checkout picks a random item: the last items are found by
--           chance (coupon collector: ~ITEMS * ln(ITEMS) checkouts).
--
-- bench/bench.sh runs it under bench/sellout_watch.py, which polls
-- GET /sales/active, notes when items_sold reaches items_total and stops
-- wrk there (SIGINT: wrk prints its report), so wrk's requests/s is the rate
-- during the sellout.
--
--   SALE_ID=1 ITEMS=10000 wrk -t1 -c64 -d30s --latency -s bench/sellout.lua http://127.0.0.1:8080

local lib = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "lib.lua")

local sale_id = lib.env_number("SALE_ID", nil, "sellout.lua")
local items = lib.env_number("ITEMS", nil, "sellout.lua")
local users = lib.env_number("USERS", 1000000)
local pick = os.getenv("PICK") or "perm"
local cart = lib.env_number("CART", 5)
local base = sale_id * 1000000
local user, cart_left = 0, 0

local order, next_index
local codes, head, tail = {}, 1, 0

lib.install({
  count = true,
  init = function()
    if pick == "perm" then
      order = lib.permutation(items)
      next_index = 1
    end
  end,
  on_response = function(status, headers, body)
    if status ~= 200 then
      lib.bump("e_" .. (string.match(body, '"error":"([^"]+)"') or tostring(status)))
      return
    end
    local code = string.match(body, '"code":"([^"]+)"')
    if code then
      lib.bump("checkout_200")
      local _, commas = string.gsub(string.match(body, '"items":%[([^%]]*)%]') or "", ",", "")
      -- the answer that shows the whole cart: exactly one per full cart
      if commas + 1 >= cart then
        tail = tail + 1
        codes[tail] = code
      end
    else
      local list = string.match(body, '"purchased":%[([^%]]*)%]')
      if list then
        lib.bump("purchase_200")
        local _, commas = string.gsub(list, ",", "")
        if list ~= "" then
          lib.bump("items_bought", commas + 1)
        end
      end
    end
  end,
})

function request()
  if head <= tail then
    local code = codes[head]
    codes[head] = nil
    head = head + 1
    return wrk.format("POST", "/purchase?code=" .. code, nil, "")
  end
  local n
  if order then
    n = order[next_index]
    next_index = next_index % items + 1
    if next_index == 1 then
      lib.bump("passes")
    end
  else
    n = math.random(1, items)
  end
  if cart_left == 0 then
    user, cart_left = math.random(1, users), cart
  end
  cart_left = cart_left - 1
  local path = string.format("/checkout?user_id=%d&id=%.0f", user, base + n)
  return wrk.format("POST", path, nil, "")
end
