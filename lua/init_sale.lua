-- init_sale.lua: create a sale's Redis state once; a no-op if it exists, so
-- several instances (and restarts) may all call it. Key layout: checkout.lua.
--
-- KEYS[1] meta
-- ARGV[1] sale id  ARGV[2] starts_at  ARGV[3] ends_at (Unix s)
-- ARGV[4] items  ARGV[5] per-user limit
-- Returns 1 when created, 0 when it was there already.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'starts_at', ARGV[2], 'ends_at', ARGV[3],
  'items', ARGV[4], 'limit', ARGV[5], 'sold', 0)
return 1
