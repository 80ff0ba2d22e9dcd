-- Shared by the wrk scripts of bench/ (loaded with dofile, see the top of each
-- script). Installs wrk's setup/init/response/done so that every scenario
-- reports the same way:
--
--   * response() counts answers by status in every thread (when counting is
--     on) and passes each answer to the script's own handler, if any;
--   * done() merges the threads' counts and prints one line that
--     bench/bench.sh parses:
--
--       BENCH requests=N duration_us=D rps=R bytes=B lat_mean_us=..
--             lat_p50_us=.. lat_p75_us=.. lat_p90_us=.. lat_p99_us=..
--             lat_p999_us=.. lat_max_us=.. err_connect=.. err_read=..
--             err_write=.. err_timeout=.. non2xx=N s200=N s409=N ...
--             c_<counter>=N ...
--
--     (wrk's own report above it prints only 50/75/90/99 %; p99.9 comes
--     from here). sNNN is the count of answers with status NNN, non2xx the
--     count outside 200..299, c_* the script's own counters (the global
--     table `counters` of each thread, summed).
--
-- A script calls lib.install{ count = bool, on_response = fn, init = fn }.
-- `count` false leaves response() undefined (wrk then skips Lua for each
-- answer, a little faster) unless the script has a handler; bench/bench.sh
-- runs every scenario with counting on, so the load generator does the same
-- work in every scenario and in the ceiling.

local M = {}

local threads = {}

-- 64-bit-safe formatting of a count (wrk hands them over as Lua numbers).
local function n(x)
  return string.format("%.0f", x or 0)
end

function M.install(opts)
  opts = opts or {}
  local count = opts.count
  local on_response = opts.on_response

  function setup(thread)
    threads[#threads + 1] = thread
    thread:set("tid", #threads)
  end

  function init(args)
    -- a different random sequence per thread and per run
    math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
    statuses = {}
    counters = {}
    if opts.init then
      opts.init(args)
    end
  end

  if count or on_response then
    function response(status, headers, body)
      if count then
        statuses[status] = (statuses[status] or 0) + 1
      end
      if on_response then
        on_response(status, headers, body)
      end
    end
  end

  function done(summary, latency, requests)
    local by_status, by_counter = {}, {}
    for _, thread in ipairs(threads) do
      for code, k in pairs(thread:get("statuses") or {}) do
        by_status[code] = (by_status[code] or 0) + k
      end
      for name, k in pairs(thread:get("counters") or {}) do
        by_counter[name] = (by_counter[name] or 0) + k
      end
    end
    local parts = {
      "requests=" .. n(summary.requests),
      "duration_us=" .. n(summary.duration),
      string.format("rps=%.2f", summary.requests * 1e6 / math.max(summary.duration, 1)),
      "bytes=" .. n(summary.bytes),
      string.format("lat_mean_us=%.1f", latency.mean),
    }
    for _, p in ipairs({ { "p50", 50 }, { "p75", 75 }, { "p90", 90 }, { "p99", 99 }, { "p999", 99.9 } }) do
      parts[#parts + 1] = string.format("lat_%s_us=%s", p[1], n(latency:percentile(p[2])))
    end
    parts[#parts + 1] = "lat_max_us=" .. n(latency.max)
    for _, e in ipairs({ "connect", "read", "write", "timeout" }) do
      parts[#parts + 1] = "err_" .. e .. "=" .. n(summary.errors[e])
    end
    if count then
      local non2xx = 0
      local codes = {}
      for code, k in pairs(by_status) do
        codes[#codes + 1] = code
        if code < 200 or code > 299 then
          non2xx = non2xx + k
        end
      end
      table.sort(codes)
      parts[#parts + 1] = "non2xx=" .. n(non2xx)
      for _, code in ipairs(codes) do
        parts[#parts + 1] = string.format("s%d=%s", code, n(by_status[code]))
      end
    end
    local names = {}
    for name in pairs(by_counter) do
      names[#names + 1] = name
    end
    table.sort(names)
    for _, name in ipairs(names) do
      parts[#parts + 1] = "c_" .. name .. "=" .. n(by_counter[name])
    end
    io.write("BENCH " .. table.concat(parts, " ") .. "\n")
  end
end

-- counters (per thread; summed in done)
function M.bump(name, by)
  counters[name] = (counters[name] or 0) + (by or 1)
end

-- A number from the environment, or a default; exits with a message when
-- the variable is required and missing.
function M.env_number(name, default, script)
  local v = tonumber(os.getenv(name) or "")
  if v == nil then
    if default == nil then
      io.stderr:write(string.format("%s: set %s (see bench/README.md)\n", script or "wrk script", name))
      os.exit(2)
    end
    return default
  end
  return v
end

-- A random permutation of 1..n (Fisher-Yates).
function M.permutation(n)
  local p = {}
  for i = 1, n do
    p[i] = i
  end
  for i = n, 2, -1 do
    local j = math.random(1, i)
    p[i], p[j] = p[j], p[i]
  end
  return p
end

-- Header lookup, case-insensitive.
function M.header(headers, name)
  local v = headers[name]
  if v then
    return v
  end
  local lower = string.lower(name)
  for k, value in pairs(headers) do
    if string.lower(k) == lower then
      return value
    end
  end
  return nil
end

return M
