#!lua
-- checkout.lua: add items to users' open checkouts, atomically, for a batch
-- of checkout calls of one sale (a core sends the calls that queued while its
-- earlier batches were on their way; a batch of one is the idle case). Each
-- call is decided in order, exactly as if it ran alone.
--
-- Key layout of sale S (every key shares the hash tag {sale:S}, so a sale
-- lives in one Redis Cluster slot; docs/redis.md has the full table):
--   {sale:S}:meta    hash   starts_at, ends_at (Unix s), items, limit, sold,
--                           expire_at (Unix ms: when users and codes expire),
--                           node; closed (Redis ms) once close_sale.lua closed it
--   {sale:S}:sold    bitmap bit n-1 set when item number n is sold
--   {sale:S}:users   hash   field = user id, value = '<bought>:<n>:<code>:<items>':
--                           items bought, how many items the open checkout has,
--                           its code ('' when none), its item ids comma-padded
--                           (',id,id,'; '' when none)
--   {sale:S}:codes   hash   field = a purchased code, value =
--                           '<status>:<user>:<purchased csv>:<unavailable csv>'
--                           (the stored outcome a retry replays)
--   {sale:S}:outbox  stream one entry per sold item, drained into Postgres
-- users and codes carry the field '_' (value: meta's expire_at), so that
-- they exist, with their expiry, from the sale's creation on: a hash without
-- fields does not exist in Redis, nor does its expiry. A script that finds
-- '_' missing (the hash was lost: evicted, deleted) writes it back and sets
-- the expiry again before it writes, so no hash of a sale lives forever.
-- A meta without expire_at is a sale of the layout before these hashes
-- (per-user and per-code keys): it is not served (docs/redis.md, upgrades).
--
-- Redis's clock (TIME) is the only clock that decides: a sale is open from
-- starts_at to ends_at by Redis's TIME, and not after it was closed.
--
-- KEYS[1] meta  KEYS[2] sold  KEYS[3] users (nothing per call)
-- ARGV[1] first item id of the sale minus one (S * stride)
-- ARGV[2] fence: the id of the Redis Cluster node the caller believes owns
--         the sale's slot ('' on a single node: no fence); when meta's
--         `node` differs, the sale's state may have been lost in a failover
--         and is not used until a reconcile stamped the new node's id; a
--         sale being restored in several steps (meta `restoring`) is fenced
--         too
--   then per call i = 1..N, three arguments from ARGV[3i]: the user id, the
--   item number (1-based), and a fresh code (used only when the user has no
--   open checkout)
-- (Lua numbers are doubles: item ids are exact below 2^53, as in
-- purchase.lua.)
--
-- Returns one reply per call, in order: {outcome, code, items_csv}, outcome:
--   ok       the item is in the checkout (added now or before)
--   sold     the item is sold
--   limit    bought + items in the checkout would pass the limit
--   closed   the sale is not open by Redis's clock, or was closed
--   no_sale  the sale does not exist in Redis (or is of the old layout)
--   fenced   the sale's state is fenced (ARGV[2]), nothing was done

local calls = (#ARGV - 2) / 3
local replies = {}

local meta = redis.call('HMGET', KEYS[1], 'starts_at', 'ends_at', 'limit', 'closed', 'node',
  'expire_at', 'restoring')
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local refusal
if not meta[1] or not meta[6] then
  refusal = {'no_sale', '', ''}
elseif (ARGV[2] ~= '' and meta[5] ~= ARGV[2]) or meta[7] then
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
local expire_at = meta[6]
local base = tonumber(ARGV[1])
local users = KEYS[3]
local SOLD = {'sold', '', ''}

local function checkout(user, number, fresh)
  if redis.call('GETBIT', KEYS[2], number - 1) == 1 then
    return SOLD
  end
  -- The user's entry, and '_' to know that the hash (and its expiry) exists.
  local got = redis.call('HMGET', users, user, '_')
  local entry = got[1]
  local bought, count, code, items = 0, 0, '', ''
  if entry then
    bought, count, code, items = string.match(entry, '^(%d+):(%d+):([^:]*):(.*)$')
    bought = tonumber(bought)
    count = tonumber(count)
  end
  local item = string.format('%d', base + number)
  if count > 0 and string.find(items, ',' .. item .. ',', 1, true) then
    return {'ok', code, string.sub(items, 2, -2)}
  end
  if bought + count + 1 > limit then
    return {'limit', code, string.sub(items, 2, -2)}
  end

  if count == 0 then
    code = fresh
    items = ',' .. item .. ','
  else
    items = items .. item .. ','
  end
  local value = bought .. ':' .. (count + 1) .. ':' .. code .. ':' .. items
  if got[2] then
    redis.call('HSET', users, user, value)
  else
    redis.call('HSET', users, user, value, '_', expire_at)
    redis.call('PEXPIREAT', users, expire_at)
  end
  return {'ok', code, string.sub(items, 2, -2)}
end

for i = 1, calls do
  local a = 3 * i
  replies[i] = checkout(ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2])
end
return replies
