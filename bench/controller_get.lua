-- wrk script for bench/controller: GET one path over and over, counting every answer that is
-- not a 200 or whose body is not the expected length; when the run is over it prints the
-- WRK_JSON line of wrk_json.lua with
--
--   "bad_status":N,"first_bad_status":N,"bad_length":N
--
-- (wrk's own summary and --latency table are printed too).
--
--   wrk -t1 -c32 -d5s --latency -s bench/controller_get.lua http://127.0.0.1:PORT -- PATH [BYTES]

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
dofile(here .. "wrk_json.lua")

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
   write_json(summary, latency, {{"bad_status", thread_sum("bad_status")},
                                 {"first_bad_status", thread_first("first_bad_status")},
                                 {"bad_length", thread_sum("bad_length")}})
end
