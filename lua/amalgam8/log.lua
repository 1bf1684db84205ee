-- One JSON access-log line per request (log phase): the SPEC A4 fields, the actions that
-- fired and the trace key/value; written by nginx's access_log from $a8_log.
local cjson = require "cjson.safe"
local config = require "amalgam8.config"
local balancer = require "amalgam8.balancer"

local ngx = ngx
local var = ngx.var
local encode = cjson.encode
local tonumber = tonumber

local _M = {}

function _M.log()
    local ctx = ngx.ctx
    local dest = var.a8_dst_name
    if dest and dest ~= "" and ctx.a8_counted then
        balancer.after(dest)
    end
    local record = {
        status = tonumber(var.status),
        timestamp_in_ms = math.floor(ngx.req.start_time() * 1000),
        request_time = tonumber(var.request_time),
        upstream_response_time = var.upstream_response_time or "",
        src = config.source_label,
        dst = var.a8_dst,
        upstream_addr = var.upstream_addr or "",
        upstream_status = var.upstream_status or "",
        method = var.request_method,
        path = var.uri,
        request_id = var.a8_request_id,
    }
    local fired = ctx.a8_fired
    if fired then record.actions = fired end
    if ctx.a8_retries then record.retries = ctx.a8_retries end
    if ctx.a8_budget_exhausted then record.retry_budget_exhausted = true end
    local key = ctx.a8_trace_key
    if key and record[key] == nil then record[key] = ctx.a8_trace_value end
    var.a8_log = encode(record)
end

return _M
