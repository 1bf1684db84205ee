-- The instance for each attempt (balancer phase): round robin, random or least request
-- (power of two choices) over the backend's pool, skipping ejected instances; retries on
-- another instance after a connection failure or timeout, within the destination's retry
-- budget.
local balancer = require "ngx.balancer"
local config = require "amalgam8.config"

local ngx = ngx
local shared = ngx.shared.a8_health
local random = math.random

local _M = {}

local rr = {}   -- per worker: backend key -> next index

local function ejected(inst)
    return shared:get("ej:" .. inst.addr) ~= nil
end

local function active(inst)
    return shared:get("act:" .. inst.addr) or 0
end

local function choose(backend, tried)
    local pool = backend.pool
    local n = #pool
    if n == 0 then return nil end
    local lb = backend.lb
    if lb == "least_request" and n > 1 then
        local best
        for _ = 1, 4 do
            local a = pool[random(n)]
            local b = pool[random(n)]
            if a == b and n > 1 then b = pool[(random(n - 1) + (a.index or 0)) % n + 1] end
            local pick = a
            if active(b) < active(a) then pick = b end
            if not tried[pick.addr] and not ejected(pick) then best = pick; break end
        end
        if best then return best end
    elseif lb == "random" and n > 1 then
        for _ = 1, n do
            local pick = pool[random(n)]
            if not tried[pick.addr] and not ejected(pick) then return pick end
        end
    end
    -- round robin (also the fallback of the others): the next usable instance
    local key = backend.key
    local start = rr[key] or random(n)
    for i = 0, n - 1 do
        local index = (start + i - 1) % n + 1
        local pick = pool[index]
        if not tried[pick.addr] and not ejected(pick) then
            rr[key] = index % n + 1
            return pick
        end
    end
    -- everything tried or ejected: an untried one, ejected or not, then anything
    for i = 0, n - 1 do
        local pick = pool[(start + i - 1) % n + 1]
        if not tried[pick.addr] then
            rr[key] = (start + i) % n + 1
            return pick
        end
    end
    return pool[(start - 1) % n + 1]
end

local function budget_allows(dest)
    local requests = shared:get("req:" .. dest) or 0
    local retries = shared:get("rt:" .. dest) or 0
    return retries < config.retry_budget_floor or retries < requests * config.retry_budget_ratio
end

function _M.balance()
    local ctx = ngx.ctx
    local backend = ctx.a8_backend
    local tried = ctx.a8_tried
    if not tried then
        tried = {}
        ctx.a8_tried = tried
        if backend.retries > 0 then
            balancer.set_more_tries(backend.retries)
        end
        local t = backend.timeout
        if t then
            balancer.set_timeouts(t, t, t)
        end
    else
        -- A retry: only within the destination's budget.
        local dest = ngx.var.a8_dst_name
        if not budget_allows(dest) then
            ctx.a8_budget_exhausted = true
            return ngx.exit(502)
        end
        shared:incr("rt:" .. dest, 1, 0)
        ctx.a8_retries = (ctx.a8_retries or 0) + 1
    end
    local inst = choose(backend, tried)
    if not inst then
        return ngx.exit(503)
    end
    tried[inst.addr] = true
    if backend.lb == "least_request" then
        shared:incr("act:" .. inst.addr, 1, 0)
        local held = ctx.a8_active
        if not held then held = {}; ctx.a8_active = held end
        held[#held + 1] = inst.addr
    end
    local ok, err = balancer.set_current_peer(inst.host, inst.port)
    if not ok then
        ngx.log(ngx.ERR, "amalgam8: cannot set peer ", inst.addr, ": ", err)
        return ngx.exit(502)
    end
end

-- After the request (log phase): outcome bookkeeping for ejection, budget, least request.
function _M.after(dest)
    local ctx = ngx.ctx
    local held = ctx.a8_active
    if held then
        for _, addr in ipairs(held) do shared:incr("act:" .. addr, -1, 0) end
    end
    local retries = ctx.a8_retries
    if retries then shared:incr("rt:" .. dest, -retries, 0) end
    shared:incr("req:" .. dest, -1, 0)
    local backend = ctx.a8_backend
    if not backend or not ctx.a8_tried then return end
    -- upstream_addr and upstream_status list every attempt, in order.
    local addrs = ngx.var.upstream_addr
    local statuses = ngx.var.upstream_status
    if not addrs or not statuses then return end
    local status_list = {}
    for s in statuses:gmatch("[^,%s:]+") do status_list[#status_list + 1] = s end
    local i = 0
    for addr in addrs:gmatch("[^,%s]+") do
        i = i + 1
        local status = status_list[i]
        local code = tonumber(status)
        if addr ~= ":" then
            if code == nil or code >= 500 then
                _M.failed(backend, addr)
            else
                shared:delete("err:" .. addr)
            end
        end
    end
end

function _M.failed(backend, addr)
    local count = shared:incr("err:" .. addr, 1, 0)
    if count and count >= backend.consecutive_errors then
        -- Never more than half of the pool out at once.
        local pool = backend.pool
        local out = 0
        for _, inst in ipairs(pool) do
            if inst.addr ~= addr and ejected(inst) then out = out + 1 end
        end
        if (out + 1) * 2 <= #pool then
            shared:set("ej:" .. addr, true, backend.ejection_time)
            ngx.log(ngx.WARN, "amalgam8: ejected ", addr, " for ", backend.ejection_time, " s")
        end
        shared:delete("err:" .. addr)
    end
end

function _M.started(dest)
    shared:incr("req:" .. dest, 1, 0)
end

return _M
