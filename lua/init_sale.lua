#!lua
-- init_sale.lua: create a sale's Redis state, or reconcile it with what
-- Postgres recorded; either way the state is stamped with the id of the
-- Redis node it lives on (meta `node`). What Postgres recorded travels in
-- ARGV, in parts of bounded size (a 1M-item sale records up to 1M items),
-- one script call each: every part is one atomic step, correct on its own,
-- and the sale is served only once the last one ran. Key layout:
-- checkout.lua.
--
-- Create (ARGV[7] = 'create'): a no-op when the sale exists, so several
-- instances (and restarts) may all call it. When Redis has lost a sale it
-- had (a crash past the last AOF fsync, a failover to an empty replica, a
-- flush), the caller passes what Postgres recorded, and the state comes
-- back with those items sold and those users' counts before the sale's
-- meta is written: checkouts and purchases refuse a sale without its meta,
-- so none runs on a half-restored sale. The parts before the last one are
-- sent with 'create-part': each restores its share (or answers 'exists'
-- when the sale exists, or 'ended'); the last, 'create', writes meta.
--
-- Reconcile (ARGV[7] = 'reconcile'): the sale may exist with less than
-- Postgres recorded (a failover to a replica that had not received the last
-- writes; a single node that lost writes past its last AOF fsync). Every
-- item Postgres recorded as sold is set in the bitmap (the items that were
-- not are counted: the gap), each user's `bought` becomes the larger of
-- Redis's and Postgres's counts (Redis may hold purchases newer than
-- Postgres's), each code that bought something gets its stored outcome
-- back when Redis lost it (a retry of its purchase then replays a 200 with
-- what Postgres records, instead of buying again or answering 409), meta
-- `sold` becomes the bitmap's count, and meta `node` the node's id, which
-- lifts the fence checkout.lua and purchase.lua keep on a sale whose `node`
-- is not the node the caller sends to. The parts before the last one are
-- sent with 'reconcile-part': each restores its share and sets meta
-- `restoring`, which fences the sale (checkout.lua and purchase.lua answer
-- 'fenced') until the last part, 'reconcile', removes it; a reconcile that
-- stops half-way leaves the sale fenced, and the next request's fence asks
-- for another. A missing sale is created as above.
--
-- users and codes get their '_' field and their expiry (ARGV[6]) from every
-- part, so they exist with it from the sale's creation on; the sold bitmap
-- is created at its full size and the outbox as an empty stream. So every
-- key checkout.lua and purchase.lua declare exists from the start: during a
-- Redis Cluster slot migration a script whose keys all exist on the source
-- runs there (Redis answers TRYAGAIN to a multi-key command only when some
-- of its keys are missing on a migrating slot's source).
--
-- The node id is this node's `CLUSTER MYID`, asked inside the script, so it
-- is the id of the node that holds the state by construction; on a single
-- node (cluster support disabled) it is '' and nothing is fenced.
--
-- KEYS[1] meta  KEYS[2] sold  KEYS[3] users  KEYS[4] codes  KEYS[5] outbox
-- ARGV[1] sale id  ARGV[2] starts_at  ARGV[3] ends_at (Unix s)
-- ARGV[4] items  ARGV[5] per-user limit
-- ARGV[6] expire-at of users and codes (Unix ms)
-- ARGV[7] 'create', 'create-part', 'reconcile' or 'reconcile-part'
-- ARGV[8] csv of sold item numbers recorded in Postgres (this part's; may be empty)
-- ARGV[9] U, this part's number of users
--   then per user i = 1..U, two arguments from ARGV[8+2i]: the user id and
--   how many items Postgres recorded that user bought
--   then per code, three arguments, to the end: the user id, the code, the
--   csv of item ids it bought
-- Returns {outcome, restored, node}: outcome
--   'created'    the sale was created (restored or new)
--   'exists'     create: the sale was there already, nothing done
--   'reconciled' reconcile: the sale was there and is reconciled
--   'restored'   a part (create-part, reconcile-part) was applied
--   'ended'      the sale has ended by Redis's clock (TIME) and was not
--                there: an ended sale is never created, so close_sale.lua
--                may close out a sale Redis does not hold
-- restored: how many items of this part Postgres recorded that the bitmap
-- did not have; node: the id stamped ('' for a part).

local step = ARGV[7]
local reconcile = step == 'reconcile' or step == 'reconcile-part'
local last = step == 'create' or step == 'reconcile'
local exists = redis.call('EXISTS', KEYS[1]) == 1
if exists and not reconcile then
  return {'exists', 0, ''}
end
if not exists then
  local time = redis.call('TIME')
  if tonumber(time[1]) >= tonumber(ARGV[3]) then
    return {'ended', 0, ''}
  end
end
if exists and not last then
  redis.call('HSET', KEYS[1], 'restoring', '1')
end

local expire_at = ARGV[6]
-- users and codes exist with their expiry: '_' keeps a hash without other
-- fields in existence (and its expiry with it).
for k = 3, 4 do
  if redis.call('HSETNX', KEYS[k], '_', expire_at) == 1 then
    redis.call('PEXPIREAT', KEYS[k], expire_at)
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SETBIT', KEYS[2], tonumber(ARGV[4]) - 1, 0)
end
if not exists and redis.call('EXISTS', KEYS[5]) == 0 then
  -- An empty stream: the entry is trimmed as it is added.
  redis.call('XADD', KEYS[5], 'MAXLEN', 0, '*', 'created', '1')
end

local restored = 0
for n in string.gmatch(ARGV[8], '[^,]+') do
  if redis.call('SETBIT', KEYS[2], tonumber(n) - 1, 1) == 0 then
    restored = restored + 1
  end
end

local entry_pattern = '^(%d+):(%d+):([^:]*):(.*)$'
local users = tonumber(ARGV[9])
for i = 1, users do
  local user = ARGV[8 + 2 * i]
  local recorded = tonumber(ARGV[9 + 2 * i])
  local entry = redis.call('HGET', KEYS[3], user)
  if not entry then
    redis.call('HSET', KEYS[3], user, recorded .. ':0::')
  else
    local bought, count, code, items = string.match(entry, entry_pattern)
    if tonumber(bought) < recorded then
      redis.call('HSET', KEYS[3], user, recorded .. ':' .. count .. ':' .. code .. ':' .. items)
    end
  end
end
for a = 10 + 2 * users, #ARGV, 3 do
  local user, code, items = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  -- A code Postgres records purchases of bought something: any other
  -- stored outcome (none, or a 409 its retry got after the loss) is wrong.
  local stored = redis.call('HGET', KEYS[4], code)
  if not stored or string.sub(stored, 1, 4) ~= '200:' then
    redis.call('HSET', KEYS[4], code, '200:' .. user .. ':' .. items .. ':')
    -- A spent code is no longer the user's open checkout.
    local entry = redis.call('HGET', KEYS[3], user)
    if entry then
      local bought, _, open = string.match(entry, entry_pattern)
      if open == code then
        redis.call('HSET', KEYS[3], user, bought .. ':0::')
      end
    end
  end
end

if not last then
  return {'restored', restored, ''}
end
local node = redis.pcall('CLUSTER', 'MYID')
if type(node) ~= 'string' then
  node = ''
end
local sold = redis.call('BITCOUNT', KEYS[2])
if exists then
  redis.call('HSET', KEYS[1], 'sold', sold, 'node', node)
  redis.call('HDEL', KEYS[1], 'restoring')
  return {'reconciled', restored, node}
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'starts_at', ARGV[2], 'ends_at', ARGV[3],
  'items', ARGV[4], 'limit', ARGV[5], 'sold', sold, 'node', node, 'expire_at', expire_at)
return {'created', restored, node}
