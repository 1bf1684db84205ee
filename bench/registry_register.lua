-- wrk script: POST /api/v1/instances with a new endpoint in every request, so every request
-- registers a new instance (ids never repeat across threads, runs or connections).
--
--   wrk -t1 -c32 -d5s --latency -s bench/registry_register.lua http://127.0.0.1:PORT -- RUN
--
-- RUN (any short word, default "r") keeps the endpoints of separate runs apart.

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
dofile(here .. "registry_stats.lua")

local run = "r"
local counter = 0
local headers = {["Content-Type"] = "application/json"}

function init(args)
   run = args[1] or run
end

function request()
   counter = counter + 1
   local body = string.format(
      '{"service_name":"bench-reg","endpoint":{"type":"http","value":"%s-t%d-%d.bench:8080"},' ..
      '"tags":["bench","v1"]}', run, thread_id or 0, counter)
   return wrk.format("POST", "/api/v1/instances", headers, body)
end

function response(status, headers, body)
   count_status(status)
end
