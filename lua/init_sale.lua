#!lua
-- init_sale.lua: create a sale's Redis state once; a no-op if it exists, so
-- several instances (and restarts) may all call it. When Redis has lost a
-- sale it had (a crash past the last AOF fsync, a failover to an empty
-- replica, a flush), the caller passes what Postgres recorded, and the state
-- comes back with those items sold and those users' counts, in the same
-- atomic step that recreates the sale: no checkout or purchase can run in
-- between, since both refuse a sale without its meta. Key layout: checkout.lua.
--
-- KEYS[1] meta  KEYS[2] sold
--   then per user with purchases recorded in Postgres, i = 1..N: KEYS[2+i]
--   the user's key
-- ARGV[1] sale id  ARGV[2] starts_at  ARGV[3] ends_at (Unix s)
-- ARGV[4] items  ARGV[5] per-user limit
-- ARGV[6] expire-at of user keys (Unix ms)
-- ARGV[7] csv of sold item numbers recorded in Postgres (may be empty)
--   then per user i: ARGV[7+i] how many items Postgres recorded that user bought
-- Returns 1 when created (restored or new), 0 when it was there already,
-- -1 when the sale has ended by Redis's clock (TIME): an ended sale is never
-- created, so close_sale.lua may close out a sale Redis does not hold.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local time = redis.call('TIME')
if tonumber(time[1]) >= tonumber(ARGV[3]) then
  return -1
end
local sold = 0
for n in string.gmatch(ARGV[7], '[^,]+') do
  if redis.call('SETBIT', KEYS[2], tonumber(n) - 1, 1) == 0 then
    sold = sold + 1
  end
end
for i = 3, #KEYS do
  redis.call('HSET', KEYS[i], 'bought', ARGV[5 + i])
  redis.call('PEXPIREAT', KEYS[i], ARGV[6])
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'starts_at', ARGV[2], 'ends_at', ARGV[3],
  'items', ARGV[4], 'limit', ARGV[5], 'sold', sold)
return 1
