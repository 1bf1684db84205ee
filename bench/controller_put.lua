-- wrk script for bench/controller_stores: PUT the route rules of one destination over and
-- over (each PUT replaces them: one change, the revision + 1, the rule count unchanged),
-- counting every answer that is not a 201; when the run is over it prints the WRK_JSON line
-- of wrk_json.lua with
--
--   "bad_status":N,"first_bad_status":N
--
--   wrk -t1 -c4 -d3s --latency -s bench/controller_put.lua http://127.0.0.1:PORT -- DEST

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
dofile(here .. "wrk_json.lua")

local req
bad_status = 0
first_bad_status = 0

function init(args)
   local destination = args[1] or "bench-writes"
   local body = string.format(
      '{"rules":[{"destination":"%s","priority":1,' ..
      '"route":{"backends":[{"tags":["v2"],"weight":0.25},{"tags":["v1"]}]}}]}',
      destination)
   req = wrk.format("PUT", "/v1/rules/routes/" .. destination,
                    {["Content-Type"] = "application/json"}, body)
end

function request()
   return req
end

function response(status, headers, body)
   if status ~= 201 then
      bad_status = bad_status + 1
      if first_bad_status == 0 then
         first_bad_status = status
      end
   end
end

function done(summary, latency, requests)
   write_json(summary, latency, {{"bad_status", thread_sum("bad_status")},
                                 {"first_bad_status", thread_first("first_bad_status")}})
end
