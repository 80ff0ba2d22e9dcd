#!lua
-- close_sale.lua: the first step of a sale's close-out. Once Redis's clock
-- (TIME) has passed the sale's end, mark it closed in its meta; from then on
-- purchase.lua and checkout.lua refuse it, so its outbox can only shrink, and
-- the writer drains it and then deletes it. No instance's own clock and no
-- grace period take part. Idempotent; key layout: checkout.lua. Closing
-- also sets the expiry of users and codes (meta's expire_at) once more, so
-- that neither outlives the sale's retention whatever happened to it.
--
-- KEYS[1] meta  KEYS[2] users  KEYS[3] codes
-- ARGV[1] ends_at (Unix s) as Postgres recorded it, for a sale Redis does not
--         hold (lost, or never initialized): init_sale.lua creates no sale
--         that has ended, so such a sale is closed once its end has passed.
-- Returns 1 when the sale is closed (now or before), 0 while it is open.

local meta = redis.call('HMGET', KEYS[1], 'ends_at', 'closed', 'expire_at')
if meta[2] then
  return 1
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if now < tonumber(meta[1] or ARGV[1]) * 1000 then
  return 0
end
if meta[1] then
  redis.call('HSET', KEYS[1], 'closed', string.format('%d', now))
end
if meta[3] then
  redis.call('PEXPIREAT', KEYS[2], meta[3])
  redis.call('PEXPIREAT', KEYS[3], meta[3])
end
return 1
