-- wrk script for bench/proxy: no per-request Lua (no request() or response() callback, so wrk
-- runs at full C speed); when the run is over it prints the WRK_JSON line of wrk_json.lua with
--
--   "bad_status":N
--
-- wrk's own count of answers with a status above 399 (summary.errors.status).
--
--   wrk -t1 -c50 -d5s --latency -s bench/proxy_wrk.lua http://127.0.0.1:PORT/svc/bench

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
dofile(here .. "wrk_json.lua")

function done(summary, latency, requests)
   write_json(summary, latency, {{"bad_status", summary.errors.status}})
end
