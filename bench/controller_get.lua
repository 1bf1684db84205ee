-- wrk script for bench/controller: GET one path over and over, counting every answer that is
-- not a 200 or whose body is not the expected length, and print one machine-readable line
--
--   WRK_JSON {"requests":N,"duration_us":N,"rps":F,"p50_us":N,"p90_us":N,"p99_us":N,
--             "max_us":N,"bad_status":N,"first_bad_status":N,"bad_length":N,
--             "socket_errors":{...}}
--
-- when the run is over (wrk's own summary and --latency table are printed too).
--
--   wrk -t1 -c32 -d5s --latency -s bench/controller_get.lua http://127.0.0.1:PORT -- PATH [BYTES]

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local req
local expected = nil
bad_status = 0
first_bad_status = 0
bad_length = 0

function init(args)
   req = wrk.format("GET", args[1] or "/v1/rules")
   if args[2] then
      expected = tonumber(args[2])
   end
end

function request()
   return req
end

function response(status, headers, body)
   if status ~= 200 then
      bad_status = bad_status + 1
      if first_bad_status == 0 then
         first_bad_status = status
      end
   elseif expected and #body ~= expected then
      bad_length = bad_length + 1
   end
end

function done(summary, latency, requests)
   local status, first, length = 0, 0, 0
   for _, thread in ipairs(threads) do
      status = status + (thread:get("bad_status") or 0)
      length = length + (thread:get("bad_length") or 0)
      if first == 0 then
         first = thread:get("first_bad_status") or 0
      end
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"rps":%.3f,"p50_us":%d,"p90_us":%d,' ..
      '"p99_us":%d,"max_us":%d,"bad_status":%d,"first_bad_status":%d,"bad_length":%d,' ..
      '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      status, first, length, e.connect, e.read, e.write, e.timeout))
end
