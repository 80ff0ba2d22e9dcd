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
-- ARGV[1] fence: the id of the Redis Cluster node the caller believes owns
--         the sale's slot ('' on a single node: no fence); when meta's
--         `node` differs, the sale's state may have been lost in a failover
--         and is not used until a reconcile stamped the new node's id; a
--         sale being restored in several steps (meta `restoring`) is fenced
--         too
--   then per call i = 1..N, three arguments from ARGV[3i-1]: the user id,
--   the item's bit in the sold bitmap (its number minus one), and the entry
--   of a new checkout of the item with a fresh code, '0:1:<code>:,<item id>,'
--   (the user's entry when it has no open checkout and bought nothing: used
--   as is; else its code and item id are read from it). The server sends
--   them as the text the script needs, so a new user's call builds no string.
--
-- Returns one string for the whole batch: one line per call, in order,
-- joined by '\n', each '<outcome> <code> <items csv>' (code and items may
-- be empty: 'sold  '), or 'new' alone, outcome:
--   new      the item is the first of a new checkout: the call's own entry
--            was stored as is (its code and item are the checkout's)
--   ok       the item is in the checkout (added now or before)
--   sold     the item is sold
--   limit    bought + items in the checkout would pass the limit
--   closed   the sale is not open by Redis's clock, or was closed
--   no_sale  the sale does not exist in Redis (or is of the old layout)
--   fenced   the sale's state is fenced (ARGV[1]), nothing was done
-- (A string, not a table per call: Redis turns a Lua table into a reply
-- with a deferred length and a reply block per nested table; one string is
-- one block, read by the server in place.)
--
-- The batch reads once and writes once: the items' sold bits (BITFIELD_RO:
-- a checkout sells nothing, so no bit changes during the batch), the users'
-- entries and '_' (one HMGET), then one HSET of every entry the batch wrote.
-- A user's entry that an earlier call of the batch wrote is taken from what
-- it wrote, so each call is still decided exactly as if it ran alone.
-- (unpack passes at most ~8,000 values: 3 per call to BITFIELD_RO, so a
-- batch stays below --redis-batch's bound of 1,024 calls.)

local argv = ARGV
local call = redis.call
local calls = (#argv - 1) / 3
local fence = argv[1]
local replies = {}

local meta = call('HMGET', KEYS[1], 'starts_at', 'ends_at', 'limit', 'closed', 'node',
  'expire_at', 'restoring')
local time = call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local refusal
if not meta[1] or not meta[6] then
  refusal = 'no_sale  '
elseif (fence ~= '' and meta[5] ~= fence) or meta[7] then
  refusal = 'fenced  '
elseif meta[4] or now < tonumber(meta[1]) * 1000 or now >= tonumber(meta[2]) * 1000 then
  refusal = 'closed  '
end
if refusal then
  for i = 1, calls do
    replies[i] = refusal
  end
  return table.concat(replies, '\n')
end

local limit = tonumber(meta[3])
local expire_at = meta[6]
local users = KEYS[3]

local gets, fields = {}, {}
for i = 1, calls do
  local a = 3 * i - 1
  gets[a - 1] = 'GET'
  gets[a] = 'u1'
  gets[a + 1] = argv[a + 1]
  fields[i] = argv[a]
end
fields[calls + 1] = '_'
local bits = call('BITFIELD_RO', KEYS[2], unpack(gets))
-- Each user's entry (false when none), and '_' to know that the hash (and
-- its expiry) exists.
local got = call('HMGET', users, unpack(fields))
local written = {}
local writes = {}
local w = 0

for i = 1, calls do
  local a = 3 * i - 1
  if bits[i] == 1 then
    replies[i] = 'sold  '
  else
    local user = argv[a]
    local entry = written[user] or got[i]
    local value
    if not entry then
      -- The user's first checkout of the sale (the crowd's path).
      value = argv[a + 2]
      replies[i] = 'new'
    else
      local fresh = argv[a + 2]
      local item = string.match(fresh, ',(%d+),$')
      local bought, count, code, items = string.match(entry, '^(%d+):(%d+):([^:]*):(.*)$')
      bought = tonumber(bought)
      count = tonumber(count)
      if count > 0 and string.find(items, ',' .. item .. ',', 1, true) then
        replies[i] = 'ok ' .. code .. ' ' .. string.sub(items, 2, -2)
      elseif bought + count + 1 > limit then
        replies[i] = 'limit ' .. code .. ' ' .. string.sub(items, 2, -2)
      else
        if count == 0 then
          code = string.match(fresh, '^0:1:([^:]*):')
          items = ',' .. item .. ','
        else
          items = items .. item .. ','
        end
        value = bought .. ':' .. (count + 1) .. ':' .. code .. ':' .. items
        replies[i] = 'ok ' .. code .. ' ' .. string.sub(items, 2, -2)
      end
    end
    if value then
      written[user] = value
      writes[w + 1] = user
      writes[w + 2] = value
      w = w + 2
    end
  end
end

if w > 0 then
  if got[calls + 1] then
    call('HSET', users, unpack(writes))
  else
    writes[w + 1] = '_'
    writes[w + 2] = expire_at
    call('HSET', users, unpack(writes))
    call('PEXPIREAT', users, expire_at)
  end
end
return table.concat(replies, '\n')
