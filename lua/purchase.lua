#!lua
-- purchase.lua: for a batch of purchase calls of one sale, buy every unsold
-- item of each call's checkout within its user's remaining limit, atomically;
-- record each sale in the outbox stream; store the outcome under the code so
-- that a retry replays it. Calls are decided in order, each as if it ran
-- alone (a batch of one is the idle case). Key layout: checkout.lua.
-- Redis's clock (TIME) decides whether the sale has ended and is the time
-- recorded with each sale; a sale closed by close_sale.lua has ended too, so
-- nothing is appended to its outbox once it is closed.
--
-- A code is `<sale>-<user>-<32 hex>`: it names its user (read here from
-- the code), whose entry in users holds the open code. A code is known only
-- when it is its user's open code or has a stored outcome in codes; any
-- other (a forged random part, another user's id in it) is unknown and buys
-- nothing.
--
-- KEYS[1] meta  KEYS[2] sold  KEYS[3] outbox  KEYS[4] users  KEYS[5] codes
--   (nothing per call)
-- ARGV[1] first item id of the sale minus one (S * stride)
-- ARGV[2] '1' when the caller waits for replicas (WAIT) after the batch:
--         a replayed 200 then writes too (it writes its stored outcome
--         again), which moves this connection's replication offset past the
--         original purchase, so that the WAIT covers it even on a
--         connection that did not make it
-- ARGV[3] fence: the id of the Redis Cluster node the caller believes owns
--         the sale's slot ('' on a single node: no fence); when meta's
--         `node` differs (or the sale is being restored: meta `restoring`),
--         every call answers {'fenced'} and nothing is done
--   then per call i = 1..N: ARGV[3+i] the code
--
-- Returns one reply per call, in order:
--   {'fenced'}                                    the sale's state is fenced (ARGV[3])
--   {'unknown'}                                   no such code
--   {'ended', user}                               the sale is over (or of the old
--                                                 layout, not served), nothing bought
--   {'done', user, purchased_csv, unavailable_csv, status, sold_total}
--     status '200' when something was bought, '409' when nothing could be;
--   {'replay', ...same fields...}                  a retry: the stored outcome, unchanged

local calls = #ARGV - 3
local meta = redis.call('HMGET', KEYS[1], 'ends_at', 'limit', 'sold', 'closed', 'node',
  'expire_at', 'restoring')
if (ARGV[3] ~= '' and meta[5] ~= ARGV[3]) or meta[7] then
  local replies = {}
  for i = 1, calls do
    replies[i] = {'fenced'}
  end
  return replies
end
-- Redis's time (Unix ms, as a string) and whether the sale has ended, read
-- once, when the first call of the batch needs them (replays and unknown
-- codes do not).
local at, ended
local function sale_ended()
  if ended == nil then
    local time = redis.call('TIME')
    local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
    at = string.format('%d', now)
    ended = not meta[1] or meta[4] ~= false or now >= tonumber(meta[1]) * 1000
  end
  return ended
end
local old_layout = meta[1] and not meta[6]
local limit = tonumber(meta[2])
local sold_total = tonumber(meta[3]) or 0
local expire_at = meta[6]
local base = tonumber(ARGV[1])
local UNKNOWN = {'unknown'}

local function purchase(code)
  local user = string.match(code, '^%d+%-(%d+)%-')
  if not user then
    return UNKNOWN
  end
  if old_layout then
    return {'ended', user}
  end
  -- The stored outcome, and '_' to know that codes (and its expiry) exists.
  local got = redis.call('HMGET', KEYS[5], code, '_')
  local stored = got[1]
  if stored then
    if ARGV[2] == '1' and string.sub(stored, 1, 4) == '200:' then
      redis.call('HSET', KEYS[5], code, stored)
    end
    local status, u, p, un = string.match(stored, '^(%d+):(%d+):([^:]*):(.*)$')
    return {'replay', u, p, un, status, tostring(sold_total)}
  end
  local entry = redis.call('HGET', KEYS[4], user)
  if not entry then
    return UNKNOWN
  end
  local bought, _, open, items = string.match(entry, '^(%d+):(%d+):([^:]*):(.*)$')
  if open ~= code then
    return UNKNOWN
  end
  if sale_ended() then
    return {'ended', user}
  end

  local remaining = limit - tonumber(bought)
  local purchased, unavailable = {}, {}
  for id in string.gmatch(items, '[^,]+') do
    local bit = tonumber(id) - base - 1
    if remaining > 0 and redis.call('GETBIT', KEYS[2], bit) == 0 then
      redis.call('SETBIT', KEYS[2], bit, 1)
      redis.call('XADD', KEYS[3], '*', 'item', id, 'user', user, 'code', code, 'at', at)
      purchased[#purchased + 1] = id
      remaining = remaining - 1
    else
      unavailable[#unavailable + 1] = id
    end
  end

  local status = '409'
  if #purchased > 0 then
    sold_total = redis.call('HINCRBY', KEYS[1], 'sold', #purchased)
    status = '200'
  end
  local p = table.concat(purchased, ',')
  local un = table.concat(unavailable, ',')
  -- The code is spent either way: its outcome is final, and the user's next
  -- checkout opens a new code.
  redis.call('HSET', KEYS[4], user, (tonumber(bought) + #purchased) .. ':0::')
  local outcome = status .. ':' .. user .. ':' .. p .. ':' .. un
  if got[2] then
    redis.call('HSET', KEYS[5], code, outcome)
  else
    redis.call('HSET', KEYS[5], code, outcome, '_', expire_at)
    redis.call('PEXPIREAT', KEYS[5], expire_at)
  end
  return {'done', user, p, un, status, tostring(sold_total)}
end

local replies = {}
for i = 1, calls do
  replies[i] = purchase(ARGV[3 + i])
end
return replies
