#!lua
-- init_sale.lua: create a sale's Redis state, or reconcile it with what
-- Postgres recorded, in one atomic step; either way the state is stamped
-- with the id of the Redis node it lives on (meta `node`).
--
-- Create (ARGV[8] = 'create'): a no-op when the sale exists, so several
-- instances (and restarts) may all call it. When Redis has lost a sale it
-- had (a crash past the last AOF fsync, a failover to an empty replica, a
-- flush), the caller passes what Postgres recorded, and the state comes
-- back with those items sold and those users' counts, in the same atomic
-- step that recreates the sale: no checkout or purchase can run in between,
-- since both refuse a sale without its meta.
--
-- Reconcile (ARGV[8] = 'reconcile'): the sale may exist with less than
-- Postgres recorded (a failover to a replica that had not received the last
-- writes; a single node that lost writes past its last AOF fsync). Every
-- item Postgres recorded as sold is set in the bitmap (the items that were
-- not are counted: the gap), each user's `bought` becomes the larger of
-- Redis's and Postgres's counts (Redis may hold purchases newer than
-- Postgres's), each code that bought something gets its stored outcome
-- back when Redis lost it (a retry of its purchase then replays a 200 with
-- what Postgres records, instead of buying again or answering 409), meta
-- `sold` becomes the bitmap's count, and meta `node` the
-- node's id, which lifts the fence checkout.lua and purchase.lua keep on a
-- sale whose `node` is not the node the caller sends to. A missing sale is
-- created as above.
--
-- The node id is this node's `CLUSTER MYID`, asked inside the script, so it
-- is the id of the node that holds the state by construction; on a single
-- node (cluster support disabled) it is '' and nothing is fenced.
-- Key layout: checkout.lua.
--
-- KEYS[1] meta  KEYS[2] sold
--   then per user with purchases recorded in Postgres, i = 1..U: KEYS[2+i]
--   the user's key
--   then per code with purchases recorded in Postgres, j = 1..C:
--   KEYS[2+U+j] the code's key
-- ARGV[1] sale id  ARGV[2] starts_at  ARGV[3] ends_at (Unix s)
-- ARGV[4] items  ARGV[5] per-user limit
-- ARGV[6] expire-at of user and code keys (Unix ms)
-- ARGV[7] csv of sold item numbers recorded in Postgres (may be empty)
-- ARGV[8] 'create' or 'reconcile'
-- ARGV[9] U, the number of users
--   then per user i: ARGV[9+i] how many items Postgres recorded that user bought
--   then per code j, four arguments from ARGV[10+U+4(j-1)]: the index i of
--   its user, the user id, the code, the csv of item ids it bought
-- Returns {outcome, restored, node}: outcome
--   'created'    the sale was created (restored or new)
--   'exists'     create: the sale was there already, nothing done
--   'reconciled' reconcile: the sale was there and is reconciled
--   'ended'      the sale has ended by Redis's clock (TIME) and was not
--                there: an ended sale is never created, so close_sale.lua
--                may close out a sale Redis does not hold
-- restored: how many items Postgres recorded that the bitmap did not have;
-- node: the id stamped.

local exists = redis.call('EXISTS', KEYS[1]) == 1
if exists and ARGV[8] ~= 'reconcile' then
  return {'exists', 0, ''}
end
if not exists then
  local time = redis.call('TIME')
  if tonumber(time[1]) >= tonumber(ARGV[3]) then
    return {'ended', 0, ''}
  end
end

local node = redis.pcall('CLUSTER', 'MYID')
if type(node) ~= 'string' then
  node = ''
end

local restored = 0
for n in string.gmatch(ARGV[7], '[^,]+') do
  if redis.call('SETBIT', KEYS[2], tonumber(n) - 1, 1) == 0 then
    restored = restored + 1
  end
end
local users = tonumber(ARGV[9])
for i = 3, 2 + users do
  local recorded = tonumber(ARGV[7 + i])
  local bought = tonumber(redis.call('HGET', KEYS[i], 'bought'))
  if not bought then
    local fresh = redis.call('EXISTS', KEYS[i]) == 0
    redis.call('HSET', KEYS[i], 'bought', recorded)
    if fresh then
      redis.call('PEXPIREAT', KEYS[i], ARGV[6])
    end
  elseif bought < recorded then
    redis.call('HSET', KEYS[i], 'bought', recorded)
  end
end
for j = 1, #KEYS - 2 - users do
  local code_key = KEYS[2 + users + j]
  local a = 10 + users + 4 * (j - 1)
  -- A code Postgres records purchases of bought something: any other
  -- stored outcome (none, or a 409 its retry got after the loss) is wrong.
  if redis.call('HGET', code_key, 'status') ~= '200' then
    local fresh = redis.call('EXISTS', code_key) == 0
    redis.call('HSET', code_key, 'user', ARGV[a + 1], 'status', '200',
      'purchased', ARGV[a + 3], 'unavailable', '')
    if fresh then
      redis.call('PEXPIREAT', code_key, ARGV[6])
    end
    -- A spent code is no longer the user's open checkout.
    local user_key = KEYS[2 + tonumber(ARGV[a])]
    if redis.call('HGET', user_key, 'code') == ARGV[a + 2] then
      redis.call('HDEL', user_key, 'code', 'items')
    end
  end
end
local sold = redis.call('BITCOUNT', KEYS[2])
if exists then
  redis.call('HSET', KEYS[1], 'sold', sold, 'node', node)
  return {'reconciled', restored, node}
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'starts_at', ARGV[2], 'ends_at', ARGV[3],
  'items', ARGV[4], 'limit', ARGV[5], 'sold', sold, 'node', node)
return {'created', restored, node}
