-- Shared by the registry_*.lua wrk scripts (loaded with dofile): counts the responses that
-- are not 2xx in every thread and, when the run is over, prints the WRK_JSON line of
-- wrk_json.lua with
--
--   "non2xx":N,"first_bad_status":N
--
-- which bench/registry reads. wrk's own summary (and --latency table) is printed too.

local here = debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./"
dofile(here .. "wrk_json.lua")

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
   write_json(summary, latency, {{"non2xx", thread_sum("non2xx")},
                                 {"first_bad_status", thread_first("first_bad_status")}})
end
