-- checkout.lua: add an item to a user's open checkout, atomically.
--
-- Key layout of sale S (every key shares the hash tag {sale:S}, so a sale
-- lives in one Redis Cluster slot):
--   {sale:S}:meta        hash   starts_at, ends_at (Unix s), items, limit, sold
--   {sale:S}:sold        bitmap bit n-1 set when item number n is sold
--   {sale:S}:user:U      hash   bought (count), code (open code), items (csv of item ids)
--   {sale:S}:code:C      hash   user; after purchase: status, purchased, unavailable
--   {sale:S}:outbox      stream one entry per sold item, drained into Postgres
--
-- KEYS[1] meta  KEYS[2] sold  KEYS[3] user  KEYS[4] code key of ARGV[4]
-- ARGV[1] user id  ARGV[2] item number (1-based)  ARGV[3] item id
-- ARGV[4] fresh code (used only when the user has no open checkout)
-- ARGV[5] now (Unix ms)  ARGV[6] expire-at for user and code keys (Unix ms)
--
-- Returns {outcome, code, items_csv}; outcome is one of
--   ok       the item is in the checkout (added now or before)
--   sold     the item is sold
--   limit    bought + items in the checkout would pass the limit
--   closed   the sale is not open at ARGV[5]
--   no_sale  the sale does not exist in Redis

local meta = redis.call('HMGET', KEYS[1], 'starts_at', 'ends_at', 'limit')
if not meta[1] then
  return {'no_sale', '', ''}
end
local now = tonumber(ARGV[5])
if now < tonumber(meta[1]) * 1000 or now >= tonumber(meta[2]) * 1000 then
  return {'closed', '', ''}
end
if redis.call('GETBIT', KEYS[2], tonumber(ARGV[2]) - 1) == 1 then
  return {'sold', '', ''}
end

local user = redis.call('HMGET', KEYS[3], 'bought', 'code', 'items')
local bought = tonumber(user[1]) or 0
local code = user[2]
local items = user[3] or ''
local item = ARGV[3]

local count = 0
for id in string.gmatch(items, '[^,]+') do
  count = count + 1
  if id == item then
    return {'ok', code, items}
  end
end

if bought + count + 1 > tonumber(meta[3]) then
  return {'limit', code or '', items}
end

if not code then
  code = ARGV[4]
  redis.call('HSET', KEYS[4], 'user', ARGV[1])
  redis.call('PEXPIREAT', KEYS[4], ARGV[6])
end
if items == '' then
  items = item
else
  items = items .. ',' .. item
end
redis.call('HSET', KEYS[3], 'code', code, 'items', items)
redis.call('PEXPIREAT', KEYS[3], ARGV[6])
return {'ok', code, items}
