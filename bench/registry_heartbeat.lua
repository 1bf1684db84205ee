-- wrk script: PUT /api/v1/instances/{id}/heartbeat, cycling over the ids in a file (one a
-- line; bench/registry writes it after registering the instances). Each thread starts at a
-- different place in the list.
--
--   wrk -t1 -c32 -d5s --latency -s bench/registry_heartbeat.lua http://127.0.0.1:PORT -- IDS

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
dofile(here .. "registry_stats.lua")

local requests = {}
local position = 0

function init(args)
   local path = assert(args[1], "usage: ... -- IDS_FILE")
   for id in io.lines(path) do
      if id ~= "" then
         table.insert(requests, wrk.format("PUT", "/api/v1/instances/" .. id .. "/heartbeat"))
      end
   end
   assert(#requests > 0, "no ids in " .. path)
   position = ((thread_id or 0) * 7919) % #requests
end

function request()
   position = position % #requests + 1
   return requests[position]
end

function response(status, headers, body)
   count_status(status)
end
