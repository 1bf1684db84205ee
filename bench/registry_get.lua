-- wrk script: GET one path (default /api/v1/services/svc10) over and over, counting the
-- answers that are not 2xx.
--
--   wrk -t1 -c32 -d5s --latency -s bench/registry_get.lua http://127.0.0.1:PORT -- PATH

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
dofile(here .. "registry_stats.lua")

local req

function init(args)
   req = wrk.format("GET", args[1] or "/api/v1/services/svc10")
end

function request()
   return req
end

function response(status, headers, body)
   count_status(status)
end
