-- The proxy's state: validated and stored by the admin endpoint in a shared dict (so
-- every worker sees the same version), compiled by each worker once per version into
-- per-destination structures. Requests never decode JSON or compile rules.

local cjson = require "cjson.safe"
local config = require "amalgam8.config"

local ngx = ngx
local shared = ngx.shared.a8_state
local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local table_sort, table_concat = table.sort, table.concat
local re_find = ngx.re.find

local _M = {}

local EMPTY_STATE = {services = {}, routes = {}, actions = {}, defaults = {}, version = 0}
local compiled = EMPTY_STATE  -- this worker's compiled view
local compiled_version = -1   -- and the version it was compiled from (nil: no state yet)

local EMPTY = {}

-- validation ---------------------------------------------------------------------------

local function fail(path, message)
    error({a8 = path .. ": " .. message}, 0)
end

local function is_array(v)
    if type(v) ~= "table" then return false end
    if next(v) == nil then return true end
    return #v > 0 and v[1] ~= nil
end

local function check_string(v, path, optional)
    if v == nil and optional then return end
    if type(v) ~= "string" then fail(path, "must be a string") end
end

local function check_strings(v, path, optional)
    if v == nil and optional then return end
    if v == cjson.null and optional then return end
    if not is_array(v) then fail(path, "must be a list of strings") end
    for i, s in ipairs(v) do
        if type(s) ~= "string" then fail(path .. "[" .. (i - 1) .. "]", "must be a string") end
    end
end

local function check_number(v, path, optional, low, high)
    if v == nil and optional then return end
    if type(v) ~= "number" then fail(path, "must be a number") end
    if (low and v < low) or (high and v > high) then
        fail(path, "out of range")
    end
end

local function check_regex(pattern, path)
    if type(pattern) ~= "string" then fail(path, "must be a string") end
    -- ngx.re.find returns from, to, err: a pattern matching "" returns 1, 0 and no error.
    -- No "o" flag here: patterns that fail validation must not fill the regex cache.
    local ok, from, _, err = pcall(re_find, "", pattern, "j")
    if not ok then err = from end
    if not ok or err then
        fail(path, "not a valid regular expression (" .. tostring(err) .. ")")
    end
end

local function check_condition(c, path)
    if type(c) ~= "table" or is_array(c) and next(c) ~= nil then
        fail(path, "must be an object")
    end
    if c.source ~= nil then
        if type(c.source) ~= "table" then fail(path .. ".source", "must be an object") end
        check_string(c.source.name, path .. ".source.name", true)
        check_strings(c.source.tags, path .. ".source.tags", true)
    end
    if c.headers ~= nil then
        if type(c.headers) ~= "table" or (is_array(c.headers) and next(c.headers) ~= nil) then
            fail(path .. ".headers", "must be an object")
        end
        for name, pattern in pairs(c.headers) do
            check_regex(pattern, path .. ".headers." .. tostring(name))
        end
    end
end

local function check_rule(rule, path)
    if type(rule) ~= "table" or is_array(rule) then fail(path, "must be an object") end
    check_string(rule.destination, path .. ".destination")
    check_string(rule.id, path .. ".id", true)
    check_number(rule.priority, path .. ".priority", true)
    if rule.match ~= nil and rule.match ~= cjson.null then
        check_condition(rule.match, path .. ".match")
        for _, comb in ipairs({"all", "any", "none"}) do
            local list = rule.match[comb]
            if list ~= nil then
                if not is_array(list) then fail(path .. ".match." .. comb, "must be a list") end
                for i, c in ipairs(list) do
                    check_condition(c, path .. ".match." .. comb .. "[" .. (i - 1) .. "]")
                end
            end
        end
    end
    if (rule.route == nil) == (rule.actions == nil) then
        fail(path, "needs exactly one of route or actions")
    end
    if rule.route ~= nil then
        local backends = type(rule.route) == "table" and rule.route.backends
        if not is_array(backends) or #backends == 0 then
            fail(path .. ".route.backends", "must be a non-empty list")
        end
        local total = 0
        for i, b in ipairs(backends) do
            local bp = path .. ".route.backends[" .. (i - 1) .. "]"
            if type(b) ~= "table" then fail(bp, "must be an object") end
            check_strings(b.tags, bp .. ".tags")
            check_string(b.name, bp .. ".name", true)
            check_number(b.weight, bp .. ".weight", true, 0, 1)
            check_number(b.timeout, bp .. ".timeout", true, 0)
            check_number(b.retries, bp .. ".retries", true, 0, 10)
            total = total + (b.weight or 0)
        end
        if total > 1.000001 then fail(path .. ".route.backends", "weights add up to more than 1") end
    else
        if not is_array(rule.actions) then fail(path .. ".actions", "must be a list") end
        for i, a in ipairs(rule.actions) do
            local ap = path .. ".actions[" .. (i - 1) .. "]"
            if type(a) ~= "table" then fail(ap, "must be an object") end
            if a.action == "delay" then
                check_number(a.duration, ap .. ".duration", false, 0)
            elseif a.action == "abort" then
                check_number(a.return_code, ap .. ".return_code", false, -5, 599)
            elseif a.action == "trace" then
                check_string(a.log_key, ap .. ".log_key")
                if a.log_value == nil then fail(ap .. ".log_value", "is required") end
            else
                fail(ap .. ".action", "must be delay, abort or trace")
            end
            check_number(a.probability, ap .. ".probability", true, 0, 1)
            check_strings(a.tags, ap .. ".tags", true)
        end
    end
end

local function check_instance(inst, path)
    if type(inst) ~= "table" or is_array(inst) then fail(path, "must be an object") end
    check_string(inst.service_name, path .. ".service_name")
    if type(inst.endpoint) ~= "table" then fail(path .. ".endpoint", "must be an object") end
    check_string(inst.endpoint.value, path .. ".endpoint.value")
    check_strings(inst.tags, path .. ".tags", true)
    check_string(inst.status, path .. ".status", true)
end

-- Validate a decoded state; returns nil or an error message.
function _M.validate(state)
    -- An empty object decodes like an empty list: the admin endpoint checks the "{" itself.
    if type(state) ~= "table" or (is_array(state) and next(state) ~= nil) then
        return "the state must be an object"
    end
    local ok, err = pcall(function()
        local instances = state.instances
        if instances == nil then instances = {} end
        if not is_array(instances) then fail("instances", "must be a list") end
        for i, inst in ipairs(instances) do check_instance(inst, "instances[" .. (i - 1) .. "]") end
        local rules = state.rules
        if rules == nil then rules = {} end
        if not is_array(rules) then fail("rules", "must be a list") end
        for i, rule in ipairs(rules) do check_rule(rule, "rules[" .. (i - 1) .. "]") end
    end)
    if ok then return nil end
    if type(err) == "table" and err.a8 then return err.a8 end
    return "invalid state: " .. tostring(err)
end

-- Pushes may reach several workers at once: one stores at a time.
local function lock()
    for _ = 1, 2500 do
        if shared:add("lock", true, 10) then return true end
        ngx.sleep(0.002)
    end
    return false
end

local install

-- Store a validated state for every worker: the body under a new version, then the version
-- itself, so that a worker never sees a version whose state is not there yet. The current
-- and the previous state are kept (a worker may be compiling the previous one). Returns the
-- new version, or nil and a message. C{result} is the state compiled by this worker.
function _M.store(body, result)
    if not lock() then return nil, "timed out waiting for another push" end
    local version = (shared:get("version") or 0) + 1
    -- safe_set: fail rather than evict anything (such as the version) to make room.
    local ok, err = shared:safe_set("state:" .. version, body)
    if ok then
        shared:set("applied_at", ngx.now())
        shared:set("version", version)
        shared:delete("state:" .. (version - 2))
    end
    shared:delete("lock")
    if not ok then return nil, "cannot keep the state: " .. tostring(err) end
    if result then install(result, version) end
    return version
end

-- compiling ----------------------------------------------------------------------------

local function header_var(name)
    return "http_" .. name:lower():gsub("-", "_")
end

local function compile_condition(c)
    local out = {}
    if c.source and c.source ~= cjson.null then
        out.source_name = c.source.name
        out.source_tags = c.source.tags
    end
    if c.headers and c.headers ~= cjson.null then
        local headers = {}
        for name, pattern in pairs(c.headers) do
            headers[#headers + 1] = {var = header_var(name), pattern = pattern}
        end
        table_sort(headers, function(a, b) return a.var < b.var end)
        out.headers = headers
    end
    return out
end

-- A rule applies to this sidecar when its source condition names us; compile it away.
local function source_matches(cond)
    if cond.source_name and cond.source_name ~= config.source_name then return false end
    if cond.source_tags then
        for _, t in ipairs(cond.source_tags) do
            if not config.source_tag_set[t] then return false end
        end
    end
    return true
end

local function tagset(list)
    local set = {}
    for _, t in ipairs(list or EMPTY) do set[t] = true end
    return set
end

local function carries(instance_tags, wanted)
    for _, t in ipairs(wanted) do
        if not instance_tags[t] then return false end
    end
    return true
end

local function compile_match(rule)
    local m = rule.match
    if m == nil or m == cjson.null then return {} end
    local out = compile_condition(m)
    if not source_matches(out) then return nil end
    for _, comb in ipairs({"all", "any", "none"}) do
        if m[comb] then
            local list = {}
            for _, c in ipairs(m[comb]) do
                local cc = compile_condition(c)
                cc.source_ok = source_matches(cc)
                list[#list + 1] = cc
            end
            out[comb] = list
        end
    end
    return out
end

local function compile(state)
    local services = {}
    for _, inst in ipairs(state.instances or EMPTY) do
        local status = inst.status
        if status == nil or status == cjson.null or status:upper() == "UP" then
            local value = inst.endpoint.value
            local host, port = value:match("^%[?([^%]]+)%]?:(%d+)$")
            if host then
                local svc = services[inst.service_name]
                if not svc then
                    svc = {}
                    services[inst.service_name] = svc
                end
                local tags = inst.tags ~= cjson.null and inst.tags or EMPTY
                svc[#svc + 1] = {
                    host = host, port = tonumber(port), addr = value,
                    tags = tagset(tags), tag_list = table_concat(tags, ","),
                }
            end
        end
    end
    for _, list in pairs(services) do
        table_sort(list, function(a, b) return a.addr < b.addr end)
    end

    local routes, actions = {}, {}
    local rules = state.rules or EMPTY
    local sorted = {}
    for i, r in ipairs(rules) do sorted[i] = r end
    table_sort(sorted, function(a, b)
        local pa, pb = a.priority or 0, b.priority or 0
        if pa ~= pb then return pa > pb end
        return tostring(a.id or "") < tostring(b.id or "")
    end)

    for _, rule in ipairs(sorted) do
        local dest = rule.destination
        -- A destination with route rules is ruled even when none of them is for this
        -- source: its requests then match no rule (412) rather than taking the default.
        if rule.route and not routes[dest] then routes[dest] = {} end
        local match = compile_match(rule)
        if match then
            local entry = {id = rule.id, match = match}
            if rule.route then
                local route = rule.route
                local backends, weighted, unweighted = {}, 0, 0
                for _, b in ipairs(route.backends) do
                    local name = b.name or dest
                    local pool = {}
                    for _, inst in ipairs(services[name] or EMPTY) do
                        if carries(inst.tags, b.tags) then pool[#pool + 1] = inst end
                    end
                    local resilience = type(b.resilience) == "table" and b.resilience or EMPTY
                    local timeout = b.timeout or route.http_req_timeout
                    local retries = b.retries or route.http_req_retries
                    local pool_retries = #pool > 0 and math.min(#pool - 1, 10) or 0
                    backends[#backends + 1] = {
                        name = name,
                        tags = b.tags,
                        tag_list = table_concat(b.tags, ","),
                        label = name .. "-" .. table_concat(b.tags, ","),
                        cookie = #b.tags > 0 and ("version=" .. name .. "-" ..
                            table_concat(b.tags, ",") .. "; Path=/") or nil,
                        dst = name .. ":" .. table_concat(b.tags, ","),
                        weight = b.weight,
                        timeout = timeout,
                        retries = retries and math.min(retries, pool_retries) or pool_retries,
                        lb = b.lb or b.lb_type or "round_robin",
                        consecutive_errors = b.consecutive_errors or resilience.consecutive_errors
                            or config.default_consecutive_errors,
                        ejection_time = b.ejection_time or resilience.sleep_window
                            or config.default_ejection_time,
                        pool = pool,
                        key = dest .. "|" .. name .. "|" .. table_concat(b.tags, ","),
                    }
                    if b.weight then weighted = weighted + b.weight else unweighted = unweighted + 1 end
                end
                -- Cumulative weights: unweighted backends share what is left; when every
                -- backend is weighted and the total falls short of 1, scale it up.
                local share = unweighted > 0 and math.max(0, 1 - weighted) / unweighted or 0
                local scale = (unweighted == 0 and weighted > 0) and (1 / weighted) or 1
                local acc = 0
                for _, b in ipairs(backends) do
                    acc = acc + (b.weight or share) * scale
                    b.upto = acc
                end
                entry.backends = backends
                local list = routes[dest]
                if not list then list = {}; routes[dest] = list end
                list[#list + 1] = entry
            else
                local acts = {}
                for _, a in ipairs(rule.actions) do
                    acts[#acts + 1] = {
                        action = a.action,
                        duration = a.duration,
                        distribution = a.distribution,
                        stddev = a.stddev,
                        return_code = a.return_code,
                        probability = a.probability or 1,
                        log_key = a.log_key,
                        log_value = a.log_value ~= cjson.null and a.log_value or nil,
                        tags = a.tags,
                    }
                end
                entry.actions = acts
                local list = actions[dest]
                if not list then list = {}; actions[dest] = list end
                list[#list + 1] = entry
            end
        end
    end

    -- The default route of a destination without route rules: all its instances.
    local defaults = {}
    for name, pool in pairs(services) do
        defaults[name] = {
            name = name, tags = EMPTY, tag_list = "", label = name .. "-", dst = name .. ":",
            retries = math.min(#pool - 1, 10), lb = "round_robin",
            consecutive_errors = config.default_consecutive_errors,
            ejection_time = config.default_ejection_time,
            pool = pool, key = name .. "|" .. name .. "|", upto = 1,
        }
    end
    return {services = services, routes = routes, actions = actions, defaults = defaults}
end

install = function(result, version)
    result.version = version
    compiled = result
    compiled_version = version
    ngx.log(ngx.NOTICE, "amalgam8: worker ", ngx.worker.id(), " uses state version ", version)
end

-- Compile a decoded, validated state (the admin endpoint does it before storing, so that a
-- state this proxy cannot use is refused); returns the result or nil and a message.
function _M.compile(state)
    local ok, result = pcall(compile, state)
    if ok then return result end
    return nil, tostring(result)
end

-- The compiled view of the current version (rebuilt at most once per version and worker).
function _M.current()
    local version = shared:get("version")
    if version == compiled_version then return compiled end
    if version == nil then
        compiled, compiled_version = EMPTY_STATE, nil
        return compiled
    end
    local body = shared:get("state:" .. version)
    local state = body and cjson.decode(body)
    local result, err
    if state then
        result, err = _M.compile(state)
    else
        err = "the state is missing"
    end
    if result then
        install(result, version)
    else
        -- Keep serving the previous state; do not try again on every request.
        ngx.log(ngx.ERR, "amalgam8: cannot use state version ", version, ": ", err)
        compiled_version = version
    end
    return compiled
end

-- Each worker compiles a new version as soon as it is stored, not on its first request.
function _M.init_worker()
    local ok, err = ngx.timer.every(0.05, function(premature)
        if not premature then _M.current() end
    end)
    if not ok then ngx.log(ngx.ERR, "amalgam8: cannot start the state timer: ", err) end
end

function _M.version()
    return shared:get("version") or 0, shared:get("applied_at")
end

function _M.raw()
    local version = shared:get("version")
    if not version then return nil end
    return shared:get("state:" .. version), version
end

return _M
