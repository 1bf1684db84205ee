-- wrk script for bench/proxy: no per-request Lua (no request() or response() callback, so wrk
-- runs at full C speed); when the run is over it prints one machine-readable line
--
--   WRK_JSON {"requests":N,"duration_us":N,"rps":F,"p50_us":N,"p90_us":N,"p99_us":N,
--             "max_us":N,"bad_status":N,"socket_errors":{...}}
--
-- bad_status is wrk's own count of answers with a status above 399 (summary.errors.status).
--
--   wrk -t1 -c50 -d5s --latency -s bench/proxy_wrk.lua http://127.0.0.1:PORT/svc/bench

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"rps":%.3f,"p50_us":%d,"p90_us":%d,' ..
      '"p99_us":%d,"max_us":%d,"bad_status":%d,' ..
      '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.status, e.connect, e.read, e.write, e.timeout))
end
