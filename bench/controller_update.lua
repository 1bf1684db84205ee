-- wrk script for bench/controller's store rows: PUT /v1/rules with one body after another
-- from a file (one JSON body a line: {"rules":[one rule with its id]}), counting the 409s (a
-- change that met other changes too often: the controller's "the rules kept changing") and
-- every other answer that is not a 200; when the run is over it prints the WRK_JSON line of
-- wrk_json.lua with
--
--   "conflicts":N,"bad_status":N,"first_bad_status":N
--
-- Each thread starts at a different place in the file.
--
--   wrk -t2 -c4 -d2s --latency -s bench/controller_update.lua http://127.0.0.1:PORT -- BODIES

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
dofile(here .. "wrk_json.lua")

local requests = {}
local position = 0
local headers = {["Content-Type"] = "application/json"}
conflicts = 0
bad_status = 0
first_bad_status = 0

function init(args)
   local path = assert(args[1], "usage: ... -- BODIES_FILE")
   for body in io.lines(path) do
      if body ~= "" then
         table.insert(requests, wrk.format("PUT", "/v1/rules", headers, body))
      end
   end
   assert(#requests > 0, "no bodies in " .. path)
   position = ((thread_id or 0) * 7919) % #requests
end

function request()
   position = position % #requests + 1
   return requests[position]
end

function response(status, headers, body)
   if status == 409 then
      conflicts = conflicts + 1
   elseif status ~= 200 then
      bad_status = bad_status + 1
      if first_bad_status == 0 then
         first_bad_status = status
      end
   end
end

function done(summary, latency, requests)
   write_json(summary, latency, {{"conflicts", thread_sum("conflicts")},
                                 {"bad_status", thread_sum("bad_status")},
                                 {"first_bad_status", thread_first("first_bad_status")}})
end
