-- wrk script: GET /nope, answered 404 by the HTTP layer without touching Redis.
-- The reference for bench/run.sh: the cost of HTTP alone on this machine.
--
--   wrk -t1 -c64 -d10s -s bench/notfound.lua http://127.0.0.1:8080

local req = wrk.format("GET", "/nope")

function request()
  return req
end
