-- Shared by the registry_*.lua wrk scripts (loaded with dofile): counts the responses that
-- are not 2xx in every thread and, when the run is over, prints one machine-readable line
--
--   WRK_JSON {"requests":N,"duration_us":N,"rps":F,"p50_us":N,"p90_us":N,"p99_us":N,
--             "max_us":N,"non2xx":N,"first_bad_status":N,"socket_errors":{...}}
--
-- which bench/registry parses. wrk's own summary (and --latency table) is printed too.

local threads = {}

function setup(thread)
   thread:set("thread_id", #threads)
   table.insert(threads, thread)
end

non2xx = 0
first_bad_status = 0

function count_status(status)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      if first_bad_status == 0 then
         first_bad_status = status
      end
   end
end

function done(summary, latency, requests)
   local bad, first = 0, 0
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non2xx") or 0)
      local status = thread:get("first_bad_status") or 0
      if first == 0 then
         first = status
      end
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"rps":%.3f,"p50_us":%d,"p90_us":%d,' ..
      '"p99_us":%d,"max_us":%d,"non2xx":%d,"first_bad_status":%d,"socket_errors":' ..
      '{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      bad, first, e.connect, e.read, e.write, e.timeout))
end
