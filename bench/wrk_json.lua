-- Shared by the wrk scripts in bench/ (loaded with dofile): keeps every thread, so that done()
-- can add up the counters the threads kept, and prints wrk's results as one machine-readable
-- line that bench/benchlib.py parses (parse_wrk):
--
--   WRK_JSON {"requests":N,"duration_us":N,"rps":F,"p50_us":N,"p90_us":N,"p99_us":N,
--             "max_us":N,<the script's counters>,"socket_errors":{...}}
--
--   local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
--   dofile(here .. "wrk_json.lua")
--   function done(summary, latency, requests)
--      write_json(summary, latency, {{"non2xx", thread_sum("non2xx")}})
--   end
--
-- With A8_WRK_SPREAD="HOST:PORT HOST:PORT ..." in the environment (bench/benchlib.py wrk_env)
-- thread i connects to the i-th address (modulo their number) instead of the URL's, so one
-- wrk run shares its load over several servers (replicas) and keeps one latency histogram.

local threads = {}
local spread = nil

-- The addresses of A8_WRK_SPREAD, resolved once (nil when it is unset or empty).
local function spread_addresses()
   if spread == nil then
      spread = {}
      for host, port in (os.getenv("A8_WRK_SPREAD") or ""):gmatch("([^%s]+):(%d+)") do
         local found = wrk.lookup(host, port)
         assert(found and found[1], "A8_WRK_SPREAD: cannot resolve " .. host .. ":" .. port)
         table.insert(spread, found[1])
      end
   end
   return spread
end

function setup(thread)
   local addresses = spread_addresses()
   if #addresses > 0 then
      thread.addr = addresses[#threads % #addresses + 1]
   end
   thread:set("thread_id", #threads)
   table.insert(threads, thread)
end

-- The sum of a global counter over every thread.
function thread_sum(name)
   local total = 0
   for _, thread in ipairs(threads) do
      total = total + (thread:get(name) or 0)
   end
   return total
end

-- The first thread's non-zero value of a global (0 if none has one).
function thread_first(name)
   for _, thread in ipairs(threads) do
      local value = thread:get(name) or 0
      if value ~= 0 then
         return value
      end
   end
   return 0
end

-- counters: a list of {name, integer}, printed in that order.
function write_json(summary, latency, counters)
   local extra = {}
   for _, pair in ipairs(counters) do
      table.insert(extra, string.format('"%s":%d,', pair[1], pair[2]))
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"rps":%.3f,"p50_us":%d,"p90_us":%d,' ..
      '"p99_us":%d,"max_us":%d,%s"socket_errors":' ..
      '{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      table.concat(extra), e.connect, e.read, e.write, e.timeout))
end
