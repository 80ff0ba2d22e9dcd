#!lua
-- dead_letter.lua: moves one purchase outbox entry that can never be recorded
-- in Postgres to the sale's dead-letter stream, atomically: the entry's
-- fields plus why and its outbox id are appended there, then it is deleted
-- from the outbox. An entry already gone (another writer moved or recorded
-- it) is left alone, so two writers never move one entry twice.
--
-- KEYS[1] outbox ({sale:S}:outbox)  KEYS[2] dead letter ({sale:S}:outbox:dead)
-- ARGV[1] the entry's id in the outbox  ARGV[2] reason
--
-- Returns 1 when the entry was moved, 0 when it was not in the outbox.

local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return 0
end
local fields = found[1][2]
fields[#fields + 1] = 'reason'
fields[#fields + 1] = ARGV[2]
fields[#fields + 1] = 'outbox_id'
fields[#fields + 1] = ARGV[1]
redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
