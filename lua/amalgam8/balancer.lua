-- The instance for each attempt (balancer phase): round robin, random or least request
-- (power of two choices) over the backend's pool, skipping ejected instances; retries on
-- another instance after a connection failure or timeout, within the destination's retry
-- budget. After the request (log phase): outlier ejection and least-request bookkeeping.
--
-- Shared dict a8_health, for every worker:
--   req:<dest>:<second>, rt:<dest>:<second>  requests sent upstream and retries, per second,
--                                            kept for the budget's window
--   act:<addr>                               attempts in flight on an instance (least_request)
--   err:<addr>                               consecutive errors of an instance
--   ej:<addr>                                present while the instance is ejected
local balancer = require "ngx.balancer"
local config = require "amalgam8.config"

local ngx = ngx
local shared = ngx.shared.a8_health
local random = math.random
local floor = math.floor
local ipairs, tonumber, next, setmetatable = ipairs, tonumber, next, setmetatable

local _M = {}

-- NGX_BUSY: the balancer's way to end the request with 502 ("no live upstreams") without
-- another attempt. (ngx.exit(502) here turns into a 500.)
local NO_MORE_TRIES = -3

local function ejected(inst)
    return shared:get("ej:" .. inst.addr) ~= nil
end

local function active(inst)
    return shared:get("act:" .. inst.addr) or 0
end

local function usable(inst, tried)
    return not tried[inst.addr] and not ejected(inst)
end

-- The balancing methods. Each is a class of objects of one shape:
--   Method.new(pool)      an object balancing over pool (a list of {host, port, addr, ...})
--   object:pick(tried)    the instance for the next attempt, skipping those in tried
--                         (addr -> true) and the ejected ones; nil for an empty pool
--   object:reinit(pool)   the same object over another pool (a new state version)
-- One object per backend and worker, made by the compile step (amalgam8.compile).

-- What every method falls back to: the next usable instance in turn (round robin). Only
-- first attempts move the turn on: if retries did, with one instance of two down every
-- request would start on the dead one.
local function in_turn(self, tried)
    local pool, n = self.pool, self.n
    local start = self.turn
    local first = next(tried) == nil
    for i = 0, n - 1 do
        local index = (start + i - 1) % n + 1
        local pick = pool[index]
        if usable(pick, tried) then
            if first then self.turn = index % n + 1 end
            return pick
        end
    end
    -- everything tried or ejected: an untried one, ejected or not, then anything
    for i = 0, n - 1 do
        local index = (start + i - 1) % n + 1
        local pick = pool[index]
        if not tried[pick.addr] then
            if first then self.turn = index % n + 1 end
            return pick
        end
    end
    return pool[(start - 1) % n + 1]
end

local function method(choose)
    local class = {}
    class.__index = class

    function class.new(pool)
        return setmetatable({}, class):reinit(pool)
    end

    function class:reinit(pool)
        self.pool = pool
        self.n = #pool
        -- A random first turn, so that workers (and fresh versions) do not all start at the
        -- first instance; kept while it still points into the pool.
        if not self.turn or self.turn > self.n then
            self.turn = self.n > 0 and random(self.n) or 1
        end
        return self
    end

    function class:pick(tried)
        if self.n == 0 then return nil end
        return (self.n > 1 and choose(self, tried)) or in_turn(self, tried)
    end

    return class
end

_M.methods = {
    round_robin = method(function() return nil end),

    random = method(function(self, tried)
        local pool, n = self.pool, self.n
        for _ = 1, n do
            local pick = pool[random(n)]
            if usable(pick, tried) then return pick end
        end
        return nil
    end),

    -- Power of two choices: two distinct instances at random, the less busy one (attempts
    -- in flight, counted in a8_health by every worker).
    least_request = method(function(self, tried)
        local pool, n = self.pool, self.n
        for _ = 1, 4 do
            local i = random(n)
            local j = random(n - 1)
            if j >= i then j = j + 1 end
            local a, b = pool[i], pool[j]
            local ua, ub = usable(a, tried), usable(b, tried)
            if ua and ub then
                return active(b) < active(a) and b or a
            elseif ua then
                return a
            elseif ub then
                return b
            end
        end
        return nil
    end),
}

-- A balancing object for pool by the method's name; an unknown name gets the default
-- method (config.defaults.lb).
function _M.new(name, pool)
    local class = _M.methods[name] or _M.methods[config.defaults.lb]
    return class.new(pool)
end

-- The budget: the retries of the last retry_budget_window seconds may not exceed
-- retry_budget_ratio of the requests of those seconds, plus retry_budget_floor.
local function window_sum(prefix, now)
    local total = 0
    for second = now - config.defaults.retry_budget_window + 1, now do
        total = total + (shared:get(prefix .. second) or 0)
    end
    return total
end

local function budget_allows(dest)
    local now = floor(ngx.now())
    local requests = window_sum("req:" .. dest .. ":", now)
    local retries = window_sum("rt:" .. dest .. ":", now)
    local defaults = config.defaults
    return retries < requests * defaults.retry_budget_ratio + defaults.retry_budget_floor
end

local function release(ctx)
    local addr = ctx.a8_holding
    if addr then
        shared:incr("act:" .. addr, -1, 0)
        ctx.a8_holding = nil
    end
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
        -- A retry: the previous attempt is over; another only within the budget.
        release(ctx)
        local dest = ngx.var.a8_dst_name
        if not budget_allows(dest) then
            ctx.a8_budget_exhausted = true
            return ngx.exit(NO_MORE_TRIES)
        end
        shared:incr("rt:" .. dest .. ":" .. floor(ngx.now()), 1, 0,
                    config.defaults.retry_budget_window + 1)
        ctx.a8_retries = (ctx.a8_retries or 0) + 1
    end
    local inst = backend.picker:pick(tried)
    if not inst then
        return ngx.exit(NO_MORE_TRIES)
    end
    tried[inst.addr] = true
    ctx.a8_attempts = (ctx.a8_attempts or 0) + 1
    ctx.a8_peer = inst.addr
    if backend.lb == "least_request" then
        shared:incr("act:" .. inst.addr, 1, 0)
        ctx.a8_holding = inst.addr
    end
    local ok, err = balancer.set_current_peer(inst.host, inst.port)
    if not ok then
        ngx.log(ngx.ERR, "amalgam8: cannot set peer ", inst.addr, ": ", err)
        return ngx.exit(NO_MORE_TRIES)
    end
end

-- Instances this worker has counted errors for: a success resets their count. (With one
-- worker, the default, this is exact; with several, a success seen by one worker does not
-- reset what another counted, which only makes ejection a little quicker.)
local erred = {}

local function failed(backend, addr)
    erred[addr] = true
    local count = shared:incr("err:" .. addr, 1, 0)
    if count and count >= backend.consecutive_errors then
        -- Never more than max_ejected_fraction of the pool out at once.
        local pool = backend.pool
        local out = 0
        for _, inst in ipairs(pool) do
            if inst.addr ~= addr and ejected(inst) then out = out + 1 end
        end
        if out + 1 <= #pool * config.defaults.max_ejected_fraction then
            shared:set("ej:" .. addr, true, backend.ejection_time)
            ngx.log(ngx.WARN, "amalgam8: ejected ", addr, " for ", backend.ejection_time, " s")
        end
        shared:delete("err:" .. addr)
    end
end

-- The attempts of this request as {addr, status} lists, from $upstream_addr and
-- $upstream_status ("a, b : c" lists every attempt; " : " separates internal redirects).
-- A refused retry (retry budget) leaves one more entry, which is no attempt: only the first
-- ctx.a8_attempts count.
function _M.attempts()
    local addrs = ngx.var.upstream_addr
    local statuses = ngx.var.upstream_status
    local out = {}
    if not addrs or addrs == "" then return out end
    local status_list = {}
    for s in (statuses or ""):gmatch("[^,:%s]+") do status_list[#status_list + 1] = s end
    local i = 0
    for addr in addrs:gmatch("[^,%s]+") do
        if addr ~= ":" then
            i = i + 1
            out[i] = {addr, status_list[i]}
        end
    end
    local attempts = ngx.ctx.a8_attempts
    if attempts and #out > attempts then
        for k = #out, attempts + 1, -1 do out[k] = nil end
    end
    return out
end

-- After the request (log phase): outcome bookkeeping for ejection and least request.
-- One attempt's outcome. A connection failure is 502 and a timeout 504; no status at all
-- (the client went away first) says nothing about the instance.
local function outcome(backend, addr, code)
    if code and code >= 500 then
        failed(backend, addr)
    elseif code and erred[addr] then
        erred[addr] = nil
        shared:delete("err:" .. addr)
    end
end

function _M.after()
    local ctx = ngx.ctx
    release(ctx)
    local backend = ctx.a8_backend
    if not backend or not ctx.a8_tried then return end
    if ctx.a8_attempts == 1 and not ctx.a8_budget_exhausted then
        -- The common case, one attempt: its status alone, with no list to parse.
        outcome(backend, ctx.a8_peer, tonumber(ngx.var.upstream_status))
        return
    end
    for _, attempt in ipairs(_M.attempts()) do
        outcome(backend, attempt[1], tonumber(attempt[2]))
    end
end

-- A request of the destination goes upstream (rewrite phase): it counts for the budget.
function _M.started(dest)
    shared:incr("req:" .. dest .. ":" .. floor(ngx.now()), 1, 0,
                config.defaults.retry_budget_window + 1)
end

return _M
