-- Per request (rewrite phase): the destination from the first path segment, the route
-- rule and backend, the action rule and its faults. Everything it reads was compiled once
-- per state version (amalgam8.compile, kept by amalgam8.state).
local state = require "amalgam8.state"
local balancer = require "amalgam8.balancer"

local ngx = ngx
local var = ngx.var
local re_find = ngx.re.find
local random = math.random
local sub, find = string.sub, string.find
local ipairs, type = ipairs, type
local concat = table.concat

local _M = {}

-- The status nginx closes a connection with instead of answering; with
-- reset_timedout_connection on (nginx.conf), the close is a reset.
local RESET = 444

-- The answer before the first state was pushed to this nginx (at start, and after a
-- restart until the sidecar pushes again): no destination is known yet, so a 404 would be
-- a lie clients do not retry.
local NOT_READY = '{"error":"proxy_not_ready","description":"the proxy has no routing state yet"}'

local function not_ready()
    ngx.status = 503
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Retry-After"] = "1"
    ngx.say(NOT_READY)
    return ngx.exit(503)
end

local function headers_match(headers)
    if not headers then return true end
    for i = 1, #headers do
        local h = headers[i]
        local value = var[h.var]
        if value == nil or not re_find(value, h.pattern, "jo") then return false end
    end
    return true
end

local function condition_matches(c)
    if c.source_ok == false then return false end
    return headers_match(c.headers)
end

local function rule_matches(m)
    if not headers_match(m.headers) then return false end
    if m.all then
        for _, c in ipairs(m.all) do
            if not condition_matches(c) then return false end
        end
    end
    if m.any then
        local any = false
        for _, c in ipairs(m.any) do
            if condition_matches(c) then any = true; break end
        end
        if not any then return false end
    end
    if m.none then
        for _, c in ipairs(m.none) do
            if condition_matches(c) then return false end
        end
    end
    return true
end

local function pick_backend(backends)
    local n = #backends
    if n == 1 then return backends[1] end
    local sticky = var.cookie_version
    if sticky then
        for i = 1, n do
            if backends[i].label == sticky then return backends[i] end
        end
    end
    local r = random()
    for i = 1, n do
        if r < backends[i].upto then return backends[i] end
    end
    return backends[n]
end

local function carries(backend_tags, wanted)
    if not wanted then return true end
    for _, t in ipairs(wanted) do
        local found = false
        for _, have in ipairs(backend_tags) do
            if have == t then found = true; break end
        end
        if not found then return false end
    end
    return true
end

local function delay_of(a)
    local d = a.duration
    local dist = a.distribution
    if dist == nil or dist == "fixed" then return d end
    if dist == "uniform" then
        if a.stddev then
            local half = a.stddev * 1.7320508
            return math.max(0, d - half + random() * 2 * half)
        end
        return random() * 2 * d
    end
    if dist == "exponential" then
        return -d * math.log(1 - random())
    end
    -- normal (Box-Muller), clipped at zero
    local sd = a.stddev or d / 4
    local z = math.sqrt(-2 * math.log(1 - random())) * math.cos(2 * math.pi * random())
    return math.max(0, d + sd * z)
end

-- The actions of the first matching action rule: every delay (in order), then the abort,
-- while a trace always goes into the log record. Returns the abort code or nil.
local function apply_actions(rules, backend, ctx)
    for i = 1, #rules do
        local rule = rules[i]
        if rule_matches(rule.match) then
            local delay, abort, trace_key, trace_value = 0, nil, nil, nil
            local fired = {}
            for _, a in ipairs(rule.actions) do
                if carries(backend.tags, a.tags)
                        and (a.probability >= 1 or random() < a.probability) then
                    local kind = a.action
                    if kind == "delay" then
                        delay = delay + delay_of(a)
                        fired.delay = true
                    elseif kind == "abort" then
                        if not abort then abort = a.return_code end
                        fired.abort = true
                    elseif kind == "trace" then
                        trace_key, trace_value = a.log_key, a.log_value
                        fired.trace = true
                    end
                end
            end
            local names = {}
            if fired.delay then names[#names + 1] = "delay" end
            if fired.abort then names[#names + 1] = "abort" end
            if fired.trace then names[#names + 1] = "trace" end
            if #names > 0 then ctx.a8_fired = concat(names, ",") end
            if trace_key then
                ctx.a8_trace_key, ctx.a8_trace_value = trace_key, trace_value
            end
            if fired.delay then
                -- The delay chosen, for the access log (its distribution is observable
                -- apart from the machine's load).
                ctx.a8_delay = delay
                if delay > 0 then ngx.sleep(delay) end
            end
            return abort
        end
    end
    return nil
end

-- Request ids: a random per-worker prefix and a counter (nginx's $request_id reads 16
-- random bytes for every request, about a tenth of the proxy's CPU per request).
local id_prefix, id_count = nil, 0

local function fresh_request_id()
    if not id_prefix then
        -- 16 hex digits: random, and the worker's pid (ids stay unique across workers).
        local parts = {}
        for i = 1, 2 do parts[i] = string.format("%04x", math.random(0, 65535)) end
        id_prefix = table.concat(parts) .. string.format("%08x", ngx.worker.pid() % 4294967296)
    end
    id_count = id_count + 1
    -- 32 hex digits in all, like nginx's $request_id.
    return id_prefix .. string.format("%016x", id_count)
end

function _M.route()
    -- The raw path (as the client sent it, escapes kept), without the query: nginx adds
    -- $is_args$args itself.
    local uri = var.request_uri
    local q = find(uri, "?", 1, true)
    if q then uri = sub(uri, 1, q - 1) end
    local slash = find(uri, "/", 2, true)
    local dest, rest
    if slash then
        dest = sub(uri, 2, slash - 1)
        rest = sub(uri, slash)
    else
        dest = sub(uri, 2)
        rest = "/"
    end
    local rid = var.http_x_request_id
    if not rid or rid == "" then
        rid = fresh_request_id()
    end
    var.a8_request_id = rid
    var.a8_dst = dest
    if not state.loaded() then
        return not_ready()
    end
    if dest == "" then
        return ngx.exit(404)
    end
    local s = state.current()
    local ctx = ngx.ctx
    local backend
    local rules = s.routes[dest]
    if rules then
        for i = 1, #rules do
            local rule = rules[i]
            if rule_matches(rule.match) then
                backend = pick_backend(rule.backends)
                break
            end
        end
        if not backend then
            return ngx.exit(412)
        end
    else
        backend = s.defaults[dest]
        if not backend then
            return ngx.exit(404)
        end
    end
    ctx.a8_backend = backend
    var.a8_dst = backend.dst
    local cookie = backend.cookie
    if cookie then
        -- nginx adds it to the response (add_header ... always): no header filter phase.
        var.a8_cookie = cookie
    end

    local actions = s.actions[dest]
    if actions then
        local code = apply_actions(actions, backend, ctx)
        if code then
            -- A code that is no HTTP status (negative, as SPEC A3 has it, or below 100)
            -- resets the connection instead of answering.
            if code < 100 then
                ctx.a8_reset = code
                return ngx.exit(RESET)
            end
            return ngx.exit(code)
        end
    end

    if #backend.pool == 0 then
        return ngx.exit(503)
    end
    var.a8_dst_name = dest
    balancer.started(dest)
    var.a8_path = rest
end

return _M
