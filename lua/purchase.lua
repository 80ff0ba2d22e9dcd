-- purchase.lua: buy every unsold item of a checkout within the user's
-- remaining limit, atomically; record each sale in the outbox stream; store
-- the outcome on the code so that a retry replays it. Key layout: checkout.lua.
--
-- KEYS[1] meta  KEYS[2] sold  KEYS[3] code  KEYS[4] outbox
-- ARGV[1] now (Unix ms)  ARGV[2] user key prefix ({sale:S}:user:)
-- ARGV[3] the code  ARGV[4] first item id of the sale minus one (S * stride)
--
-- Returns
--   {'unknown'}                                   no such code
--   {'ended', user}                               the sale is over, nothing bought
--   {'done', user, purchased_csv, unavailable_csv, status, sold_total}
--     status '200' when something was bought, '409' when nothing could be;
--   {'replay', ...same fields...}                  a retry: the stored outcome, unchanged

local c = redis.call('HMGET', KEYS[3], 'user', 'status', 'purchased', 'unavailable')
if not c[1] then
  return {'unknown'}
end
local meta = redis.call('HMGET', KEYS[1], 'ends_at', 'limit', 'sold')
if c[2] then
  return {'replay', c[1], c[3], c[4], c[2], meta[3] or '0'}
end
local now = tonumber(ARGV[1])
if not meta[1] or now >= tonumber(meta[1]) * 1000 then
  return {'ended', c[1]}
end

local user_key = ARGV[2] .. c[1]
local u = redis.call('HMGET', user_key, 'bought', 'code', 'items')
local remaining = tonumber(meta[2]) - (tonumber(u[1]) or 0)
local items = ''
if u[2] == ARGV[3] then
  items = u[3] or ''
end

local base = tonumber(ARGV[4])
local purchased, unavailable = {}, {}
for id in string.gmatch(items, '[^,]+') do
  local bit = tonumber(id) - base - 1
  if remaining > 0 and redis.call('GETBIT', KEYS[2], bit) == 0 then
    redis.call('SETBIT', KEYS[2], bit, 1)
    redis.call('XADD', KEYS[4], '*', 'item', id, 'user', c[1], 'code', ARGV[3], 'at', ARGV[1])
    purchased[#purchased + 1] = id
    remaining = remaining - 1
  else
    unavailable[#unavailable + 1] = id
  end
end

local sold_total = tonumber(meta[3]) or 0
if #purchased > 0 then
  redis.call('HINCRBY', user_key, 'bought', #purchased)
  sold_total = redis.call('HINCRBY', KEYS[1], 'sold', #purchased)
end
local status = '409'
if #purchased > 0 then
  status = '200'
end
local p = table.concat(purchased, ',')
local un = table.concat(unavailable, ',')
-- The code is spent either way: its outcome is final, and the user's next
-- checkout opens a new code.
redis.call('HDEL', user_key, 'code', 'items')
redis.call('HSET', KEYS[3], 'status', status, 'purchased', p, 'unavailable', un)
return {'done', c[1], p, un, status, tostring(sold_total)}
