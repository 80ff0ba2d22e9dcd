#!lua
-- purchase.lua: for a batch of purchase calls of one sale, buy every unsold
-- item of each call's checkout within its user's remaining limit, atomically;
-- record each sale in the outbox stream; store the outcome on the code so
-- that a retry replays it. Calls are decided in order, each as if it ran
-- alone (a batch of one is the idle case). Key layout: checkout.lua.
-- Redis's clock (TIME) decides whether the sale has ended and is the time
-- recorded with each sale; a sale closed by close_sale.lua has ended too, so
-- nothing is appended to its outbox once it is closed.
--
-- KEYS[1] meta  KEYS[2] sold  KEYS[3] outbox
--   then per call i = 1..N: KEYS[2+2i] the code key ARGV[3] .. code (the code
--   is read from it), KEYS[3+2i] the key ARGV[1] .. user of the user the code
--   names (<sale>-<user>-<random>); a code whose stored user is another one
--   is unknown, so a forged user part buys nothing
-- ARGV[1] user key prefix ({sale:S}:user:)
-- ARGV[2] first item id of the sale minus one (S * stride)
-- ARGV[3] code key prefix ({sale:S}:code:)
-- ARGV[4] '1' when the caller waits for replicas (WAIT) after the batch:
--         a replayed 200 then writes too (it counts the replay on the code),
--         which moves this connection's replication offset past the
--         original purchase, so that the WAIT covers it even on a
--         connection that did not make it
-- ARGV[5] fence: the id of the Redis Cluster node the caller believes owns
--         the sale's slot ('' on a single node: no fence); when meta's
--         `node` differs, every call answers {'fenced'} and nothing is done
--
-- Returns one reply per call, in order:
--   {'fenced'}                                    the sale's state is fenced (ARGV[5])
--   {'unknown'}                                   no such code
--   {'ended', user}                               the sale is over, nothing bought
--   {'done', user, purchased_csv, unavailable_csv, status, sold_total}
--     status '200' when something was bought, '409' when nothing could be;
--   {'replay', ...same fields...}                  a retry: the stored outcome, unchanged

local meta = redis.call('HMGET', KEYS[1], 'ends_at', 'limit', 'sold', 'closed', 'node')
if ARGV[5] ~= '' and meta[5] ~= ARGV[5] then
  local replies = {}
  for i = 1, (#KEYS - 3) / 2 do
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
local limit = tonumber(meta[2])
local sold_total = tonumber(meta[3]) or 0
local base = tonumber(ARGV[2])
local code_offset = #ARGV[3] + 1
local UNKNOWN = {'unknown'}

local user_offset = #ARGV[1] + 1

local function purchase(code_key, user_key)
  local c = redis.call('HMGET', code_key, 'user', 'status', 'purchased', 'unavailable')
  if not c[1] or c[1] ~= string.sub(user_key, user_offset) then
    return UNKNOWN
  end
  if c[2] then
    if c[2] == '200' and ARGV[4] == '1' then
      redis.call('HINCRBY', code_key, 'replays', 1)
    end
    return {'replay', c[1], c[3], c[4], c[2], tostring(sold_total)}
  end
  if sale_ended() then
    return {'ended', c[1]}
  end

  local code = string.sub(code_key, code_offset)
  local u = redis.call('HMGET', user_key, 'bought', 'code', 'items')
  local remaining = limit - (tonumber(u[1]) or 0)
  local items = ''
  if u[2] == code then
    items = u[3] or ''
  end

  local purchased, unavailable = {}, {}
  for id in string.gmatch(items, '[^,]+') do
    local bit = tonumber(id) - base - 1
    if remaining > 0 and redis.call('GETBIT', KEYS[2], bit) == 0 then
      redis.call('SETBIT', KEYS[2], bit, 1)
      redis.call('XADD', KEYS[3], '*', 'item', id, 'user', c[1], 'code', code, 'at', at)
      purchased[#purchased + 1] = id
      remaining = remaining - 1
    else
      unavailable[#unavailable + 1] = id
    end
  end

  local status = '409'
  if #purchased > 0 then
    redis.call('HINCRBY', user_key, 'bought', #purchased)
    sold_total = redis.call('HINCRBY', KEYS[1], 'sold', #purchased)
    status = '200'
  end
  local p = table.concat(purchased, ',')
  local un = table.concat(unavailable, ',')
  -- The code is spent either way: its outcome is final, and the user's next
  -- checkout opens a new code.
  redis.call('HDEL', user_key, 'code', 'items')
  redis.call('HSET', code_key, 'status', status, 'purchased', p, 'unavailable', un)
  return {'done', c[1], p, un, status, tostring(sold_total)}
end

local replies = {}
for i = 1, (#KEYS - 3) / 2 do
  replies[i] = purchase(KEYS[2 + 2 * i], KEYS[3 + 2 * i])
end
return replies
