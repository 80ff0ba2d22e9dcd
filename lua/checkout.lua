#!lua
-- checkout.lua: add items to users' open checkouts, atomically, for a batch
-- of checkout calls of one sale (a core sends the calls that queued while its
-- earlier batches were on their way; a batch of one is the idle case). Each
-- call is decided in order, exactly as if it ran alone.
--
-- Key layout of sale S (every key shares the hash tag {sale:S}, so a sale
-- lives in one Redis Cluster slot):
--   {sale:S}:meta        hash   starts_at, ends_at (Unix s), items, limit, sold;
--                               closed (Redis ms) once close_sale.lua closed it
--   {sale:S}:sold        bitmap bit n-1 set when item number n is sold
--   {sale:S}:user:U      hash   bought (count), code (open code), items (csv of item ids)
--   {sale:S}:code:C      hash   user; after purchase: status, purchased, unavailable
--   {sale:S}:outbox      stream one entry per sold item, drained into Postgres
-- User and code keys expire at the sale's end plus the retention; the expiry
-- is set once, when the key is created.
--
-- Redis's clock (TIME) is the only clock that decides: a sale is open from
-- starts_at to ends_at by Redis's TIME, and not after it was closed.
--
-- KEYS[1] meta  KEYS[2] sold
--   then per call i = 1..N: KEYS[1+2i] the user's key ARGV[3] .. user id,
--   KEYS[2+2i] the code key ARGV[4] .. code of a fresh code (used only when
--   the user has no open checkout)
-- ARGV[1] expire-at for new user and code keys (Unix ms)
-- ARGV[2] first item id of the sale minus one (S * stride)
-- ARGV[3] user key prefix ({sale:S}:user:)  ARGV[4] code key prefix ({sale:S}:code:)
-- ARGV[5] fence: the id of the Redis Cluster node the caller believes owns
--         the sale's slot ('' on a single node: no fence); when meta's
--         `node` differs, the sale's state may have been lost in a failover
--         and is not used until a reconcile stamped the new node's id
--   then per call i: ARGV[5+i] the item number (1-based)
-- (User id, item id and code are read from the keys and the number, so a
-- call carries three strings, not six. Lua numbers are doubles: item ids
-- are exact below 2^53, as in purchase.lua.)
--
-- Returns one reply per call, in order: {outcome, code, items_csv}, outcome:
--   ok       the item is in the checkout (added now or before)
--   sold     the item is sold
--   limit    bought + items in the checkout would pass the limit
--   closed   the sale is not open by Redis's clock, or was closed
--   no_sale  the sale does not exist in Redis
--   fenced   the sale's state is fenced (ARGV[5]), nothing was done

local calls = (#KEYS - 2) / 2
local replies = {}

local meta = redis.call('HMGET', KEYS[1], 'starts_at', 'ends_at', 'limit', 'closed', 'node')
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local refusal
if not meta[1] then
  refusal = {'no_sale', '', ''}
elseif ARGV[5] ~= '' and meta[5] ~= ARGV[5] then
  refusal = {'fenced', '', ''}
elseif meta[4] or now < tonumber(meta[1]) * 1000 or now >= tonumber(meta[2]) * 1000 then
  refusal = {'closed', '', ''}
end
if refusal then
  for i = 1, calls do
    replies[i] = refusal
  end
  return replies
end

local limit = tonumber(meta[3])
local expire_at = ARGV[1]
local base = tonumber(ARGV[2])
local user_offset = #ARGV[3] + 1
local code_offset = #ARGV[4] + 1
local SOLD = {'sold', '', ''}

local function checkout(user_key, code_key, number)
  if redis.call('GETBIT', KEYS[2], number - 1) == 1 then
    return SOLD
  end
  local user = redis.call('HMGET', user_key, 'bought', 'code', 'items')
  local bought = tonumber(user[1]) or 0
  local code = user[2]
  local items = user[3] or ''
  local item = string.format('%d', base + number)

  local count = 0
  for id in string.gmatch(items, '[^,]+') do
    count = count + 1
    if id == item then
      return {'ok', code, items}
    end
  end
  if bought + count + 1 > limit then
    return {'limit', code or '', items}
  end

  if not code then
    code = string.sub(code_key, code_offset)
    redis.call('HSET', code_key, 'user', string.sub(user_key, user_offset))
    redis.call('PEXPIREAT', code_key, expire_at)
  end
  if items == '' then
    items = item
  else
    items = items .. ',' .. item
  end
  redis.call('HSET', user_key, 'code', code, 'items', items)
  if not user[1] and not user[2] then
    -- a new user key (a hash with none of its fields does not exist)
    redis.call('PEXPIREAT', user_key, expire_at)
  end
  return {'ok', code, items}
end

for i = 1, calls do
  replies[i] = checkout(KEYS[1 + 2 * i], KEYS[2 + 2 * i], tonumber(ARGV[5 + i]))
end
return replies
