-- One JSON access-log line per request (log phase): the SPEC A4 fields, the actions that
-- fired (comma-separated, "" when none), the retries and the trace key/value; written by
-- nginx's access_log from $a8_log.
local cjson = require "cjson.safe"
local config = require "amalgam8.config"
local balancer = require "amalgam8.balancer"

local ngx = ngx
local var = ngx.var
local encode = cjson.encode
local tonumber = tonumber
local concat = table.concat

local _M = {}

local function nonempty(value)
    if value == nil or value == "" then return nil end
    return value
end

function _M.log()
    local ctx = ngx.ctx
    if ctx.a8_backend then
        balancer.after()
    end
    if not (ctx.a8_fired or ctx.a8_retries or ctx.a8_budget_exhausted or ctx.a8_reset)
            and var.a8_request_id ~= "" then
        -- Nothing beyond the standard fields: nginx writes the line itself (log_format
        -- a8_plain, escape=json), which costs a fraction of building it here.
        var.a8_plain = "1"
        return
    end
    local upstream_addr = var.upstream_addr or ""
    local upstream_status = var.upstream_status or ""
    local upstream_response_time = var.upstream_response_time or ""
    if ctx.a8_budget_exhausted then
        -- The refused retry left an entry of its own in nginx's lists: not an attempt.
        local addrs, statuses, times = {}, {}, {}
        local all_times = {}
        for t in upstream_response_time:gmatch("[^,%s]+") do all_times[#all_times + 1] = t end
        for i, attempt in ipairs(balancer.attempts()) do
            addrs[i], statuses[i], times[i] = attempt[1], attempt[2] or "-", all_times[i] or "-"
        end
        upstream_addr = concat(addrs, ", ")
        upstream_status = concat(statuses, ", ")
        upstream_response_time = concat(times, ", ")
    end
    local record = {
        -- A reset has no HTTP status: the rule's code stands in for it.
        status = ctx.a8_reset or tonumber(var.status),
        timestamp_in_ms = math.floor(ngx.req.start_time() * 1000),
        request_time = tonumber(var.request_time),
        upstream_response_time = upstream_response_time,
        src = config.source_label,
        dst = var.a8_dst or "",
        upstream_addr = upstream_addr,
        upstream_status = upstream_status,
        method = var.request_method or "",
        path = var.uri or "",
        request_id = nonempty(var.a8_request_id) or var.request_id,
        actions = ctx.a8_fired or "",
        retries = ctx.a8_retries or 0,
    }
    if ctx.a8_budget_exhausted then record.retry_budget_exhausted = true end
    -- The delay a delay action chose, in seconds (request_time also holds the upstream's).
    if ctx.a8_delay then record.delay = ctx.a8_delay end
    local key = ctx.a8_trace_key
    if key and record[key] == nil then record[key] = ctx.a8_trace_value end
    var.a8_log = encode(record)
end

return _M
