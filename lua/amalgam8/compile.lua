-- The compile step: a decoded state {"instances": [...], "rules": [...]} into the routing
-- tables the router and the balancer read (per destination: route rules with their backends,
-- action rules, the default route). Pure: no shared dict, no version; amalgam8.state stores
-- and swaps what this returns.
--
-- The proxy checks only structure. The rule format's semantics (weights adding up to 1,
-- ranges, ...) are the controller's (amalgam8/rules.py); what arrives is normalized (weights
-- scaled, retries capped, probabilities clipped) rather than refused. A rule or an instance
-- whose structure is bad, or that this proxy cannot compile (a header pattern PCRE refuses),
-- is skipped and reported in the list of rejected entries, {id, error}; the rest is used.
local cjson = require "cjson.safe"
local config = require "amalgam8.config"
local balancer = require "amalgam8.balancer"

local ngx = ngx
local type, pairs, ipairs, tostring, tonumber, next = type, pairs, ipairs, tostring, tonumber, next
local table_sort, table_concat = table.sort, table.concat
local min, max = math.min, math.max
local re_find = ngx.re.find
local null = cjson.null

local _M = {}

local EMPTY = {}

-- structure ----------------------------------------------------------------------------

local function fail(path, message)
    error({a8 = path .. ": " .. message}, 0)
end

local function is_array(v)
    if type(v) ~= "table" then return false end
    if next(v) == nil then return true end
    return #v > 0 and v[1] ~= nil
end
_M.is_array = is_array

local function is_object(v)
    return type(v) == "table" and (next(v) == nil or not is_array(v))
end

local function absent(v)
    return v == nil or v == null
end

local function check_string(v, path, optional)
    if optional and absent(v) then return end
    if type(v) ~= "string" then fail(path, "must be a string") end
end

local function check_strings(v, path, optional)
    if optional and absent(v) then return end
    if not is_array(v) then fail(path, "must be a list of strings") end
    for i, s in ipairs(v) do
        if type(s) ~= "string" then fail(path .. "[" .. (i - 1) .. "]", "must be a string") end
    end
end

local function check_number(v, path, optional)
    if optional and absent(v) then return end
    if type(v) ~= "number" or v ~= v then fail(path, "must be a number") end
end

local function check_regex(pattern, path)
    if type(pattern) ~= "string" then fail(path, "must be a string") end
    -- ngx.re.find returns from, to, err: a pattern matching "" returns 1, 0 and no error.
    -- No "o" flag here: patterns that fail must not fill the regex cache.
    local ok, from, _, err = pcall(re_find, "", pattern, "j")
    if not ok then err = from end
    if not ok or err then
        fail(path, "not a valid regular expression (" .. tostring(err) .. ")")
    end
end

local function check_condition(c, path)
    if not is_object(c) then fail(path, "must be an object") end
    if not absent(c.source) then
        if not is_object(c.source) then fail(path .. ".source", "must be an object") end
        check_string(c.source.name, path .. ".source.name", true)
        check_strings(c.source.tags, path .. ".source.tags", true)
    end
    if not absent(c.headers) then
        if not is_object(c.headers) then fail(path .. ".headers", "must be an object") end
        for name, pattern in pairs(c.headers) do
            check_regex(pattern, path .. ".headers." .. tostring(name))
        end
    end
end

local function check_backend(b, path)
    if not is_object(b) then fail(path, "must be an object") end
    check_strings(b.tags, path .. ".tags")
    check_string(b.name, path .. ".name", true)
    check_string(b.lb, path .. ".lb", true)
    check_string(b.lb_type, path .. ".lb_type", true)
    for _, key in ipairs({"weight", "timeout", "retries", "consecutive_errors",
                          "ejection_time"}) do
        check_number(b[key], path .. "." .. key, true)
    end
    if not absent(b.resilience) then
        if not is_object(b.resilience) then fail(path .. ".resilience", "must be an object") end
        check_number(b.resilience.consecutive_errors, path .. ".resilience.consecutive_errors",
                     true)
        check_number(b.resilience.sleep_window, path .. ".resilience.sleep_window", true)
    end
end

local function check_action(a, path)
    if not is_object(a) then fail(path, "must be an object") end
    if a.action == "delay" then
        check_number(a.duration, path .. ".duration")
        check_string(a.distribution, path .. ".distribution", true)
        check_number(a.stddev, path .. ".stddev", true)
    elseif a.action == "abort" then
        check_number(a.return_code, path .. ".return_code")
        -- nginx can only answer an HTTP status, or reset (a code below 100).
        if a.return_code > 599 then fail(path .. ".return_code", "is no HTTP status") end
    elseif a.action == "trace" then
        check_string(a.log_key, path .. ".log_key")
        if a.log_value == nil then fail(path .. ".log_value", "is required") end
    else
        fail(path .. ".action", "must be delay, abort or trace")
    end
    check_number(a.probability, path .. ".probability", true)
    check_strings(a.tags, path .. ".tags", true)
end

-- The structure of one rule; raises {a8 = message}.
local function check_rule(rule, path)
    if not is_object(rule) then fail(path, "must be an object") end
    check_string(rule.destination, path .. ".destination")
    check_number(rule.priority, path .. ".priority", true)
    if not absent(rule.match) then
        check_condition(rule.match, path .. ".match")
        for _, comb in ipairs({"all", "any", "none"}) do
            local list = rule.match[comb]
            if not absent(list) then
                if not is_array(list) then fail(path .. ".match." .. comb, "must be a list") end
                for i, c in ipairs(list) do
                    check_condition(c, path .. ".match." .. comb .. "[" .. (i - 1) .. "]")
                end
            end
        end
    end
    if absent(rule.route) == absent(rule.actions) then
        fail(path, "needs exactly one of route or actions")
    end
    if not absent(rule.route) then
        if not is_object(rule.route) then fail(path .. ".route", "must be an object") end
        local backends = rule.route.backends
        if not is_array(backends) or #backends == 0 then
            fail(path .. ".route.backends", "must be a non-empty list")
        end
        check_number(rule.route.http_req_timeout, path .. ".route.http_req_timeout", true)
        check_number(rule.route.http_req_retries, path .. ".route.http_req_retries", true)
        for i, b in ipairs(backends) do
            check_backend(b, path .. ".route.backends[" .. (i - 1) .. "]")
        end
    else
        if not is_array(rule.actions) then fail(path .. ".actions", "must be a list") end
        for i, a in ipairs(rule.actions) do
            check_action(a, path .. ".actions[" .. (i - 1) .. "]")
        end
    end
end

-- The structure of one instance; raises {a8 = message}.
local function check_instance(inst, path)
    if not is_object(inst) then fail(path, "must be an object") end
    check_string(inst.service_name, path .. ".service_name")
    if not is_object(inst.endpoint) then fail(path .. ".endpoint", "must be an object") end
    check_string(inst.endpoint.value, path .. ".endpoint.value")
    check_strings(inst.tags, path .. ".tags", true)
    check_string(inst.status, path .. ".status", true)
end

-- Whether a decoded state has the shape the proxy needs: nil, or the reason it has not.
-- Only this refuses a whole state; everything inside is checked entry by entry.
function _M.check(state)
    -- An empty object decodes like an empty list: the admin endpoint checks the "{" itself.
    if type(state) ~= "table" or (is_array(state) and next(state) ~= nil) then
        return "the state must be an object {\"instances\":[...],\"rules\":[...]}"
    end
    if not absent(state.instances) and not is_array(state.instances) then
        return "instances: must be a list"
    end
    if not absent(state.rules) and not is_array(state.rules) then
        return "rules: must be a list"
    end
    return nil
end

-- compiling ----------------------------------------------------------------------------

local function header_var(name)
    return "http_" .. name:lower():gsub("-", "_")
end

local function compile_condition(c)
    local out = {}
    if not absent(c.source) then
        out.source_name = not absent(c.source.name) and c.source.name or nil
        out.source_tags = not absent(c.source.tags) and c.source.tags or nil
    end
    if not absent(c.headers) then
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

local function compile_match(rule)
    local m = rule.match
    if absent(m) then return {} end
    local out = compile_condition(m)
    if not source_matches(out) then return nil end
    for _, comb in ipairs({"all", "any", "none"}) do
        if not absent(m[comb]) then
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

local function positive(v)
    if type(v) == "number" and v > 0 then return v end
    return nil
end

-- The retries of a backend: as asked, but never more than the other instances of its pool
-- nor the data plane's cap.
local function retries_for(asked, pool)
    local cap = #pool > 0 and min(#pool - 1, config.defaults.retries_max) or 0
    if type(asked) ~= "number" then return cap end
    return max(0, min(asked, cap))
end

-- The balancing object of a backend: one per method and backend key (a key's pool is the
-- same wherever it is used), the previous version's reinitialized when there is one, so
-- that round robin keeps its turn across versions.
local function picker_for(into, lb, key, pool)
    local pkey = lb .. "|" .. key
    local picker = into.pickers[pkey]
    if picker then return picker end
    picker = into.previous[pkey]
    if picker then
        picker:reinit(pool)
    else
        picker = balancer.new(lb, pool)
    end
    into.pickers[pkey] = picker
    return picker
end

-- A backend as the balancer reads it.
local function make_backend(name, tags, pool, key, options, into)
    local tag_list = table_concat(tags, ",")
    local defaults = config.defaults
    local lb = options.lb or defaults.lb
    return {
        name = name,
        tags = tags,
        tag_list = tag_list,
        label = name .. "-" .. tag_list,
        cookie = #tags > 0 and ("version=" .. name .. "-" .. tag_list .. "; Path=/") or nil,
        dst = name .. ":" .. tag_list,
        weight = options.weight,
        timeout = options.timeout,
        retries = retries_for(options.retries, pool),
        lb = lb,
        consecutive_errors = positive(options.consecutive_errors) or defaults.consecutive_errors,
        ejection_time = positive(options.ejection_time) or defaults.ejection_time,
        pool = pool,
        key = key,
        picker = picker_for(into, lb, key, pool),
    }
end

local function compile_route(rule, dest, services, into)
    local route = rule.route
    local backends, weighted, unweighted = {}, 0, 0
    for _, b in ipairs(route.backends) do
        local name = not absent(b.name) and b.name or dest
        local pool = {}
        for _, inst in ipairs(services[name] or EMPTY) do
            if carries(inst.tags, b.tags) then pool[#pool + 1] = inst end
        end
        local resilience = is_object(b.resilience) and b.resilience or EMPTY
        local weight = not absent(b.weight) and max(0, b.weight) or nil
        local timeout = positive(b.timeout) or positive(route.http_req_timeout)
        local retries = b.retries
        if absent(retries) then retries = route.http_req_retries end
        local lb = b.lb
        if absent(lb) then lb = b.lb_type end
        backends[#backends + 1] = make_backend(name, b.tags, pool,
            dest .. "|" .. name .. "|" .. table_concat(b.tags, ","), {
                weight = weight,
                timeout = timeout,
                retries = not absent(retries) and retries or nil,
                lb = not absent(lb) and lb or nil,
                consecutive_errors = b.consecutive_errors or resilience.consecutive_errors,
                ejection_time = b.ejection_time or resilience.sleep_window,
            }, into)
        if weight then weighted = weighted + weight else unweighted = unweighted + 1 end
    end
    -- Cumulative weights: unweighted backends share what is left; when every backend is
    -- weighted and the total is not 1, scale it to 1 (all zero: an equal share each).
    if unweighted == 0 and weighted == 0 then
        for _, b in ipairs(backends) do b.weight = nil end
        unweighted = #backends
    end
    local share, scale = 0, 1
    if unweighted > 0 then
        share = max(0, 1 - weighted) / unweighted
        if weighted > 1 then scale = 1 / weighted end
    else
        scale = 1 / weighted
    end
    local acc = 0
    for _, b in ipairs(backends) do
        acc = acc + (b.weight and b.weight * scale or share)
        b.upto = acc
    end
    backends[#backends].upto = 1
    return backends
end

local function compile_actions(rule)
    local acts = {}
    for _, a in ipairs(rule.actions) do
        local probability = a.probability
        if absent(probability) then probability = 1 end
        acts[#acts + 1] = {
            action = a.action,
            duration = a.duration and max(0, a.duration) or nil,
            distribution = not absent(a.distribution) and a.distribution or nil,
            stddev = positive(a.stddev),
            return_code = a.return_code,
            probability = min(1, max(0, probability)),
            log_key = a.log_key,
            log_value = not absent(a.log_value) and a.log_value or nil,
            tags = not absent(a.tags) and a.tags or nil,
        }
    end
    return acts
end

local function compile_instances(instances, rejected)
    local services = {}
    for i, inst in ipairs(instances) do
        local ok, err = pcall(check_instance, inst, "instances[" .. (i - 1) .. "]")
        local status = ok and inst.status
        if not ok then
            rejected[#rejected + 1] = {id = "instances[" .. (i - 1) .. "]",
                                       error = type(err) == "table" and err.a8 or tostring(err)}
        elseif absent(status) or status:upper() == "UP" then
            local value = inst.endpoint.value
            local host, port = value:match("^%[?([^%]]+)%]?:(%d+)$")
            if host then
                local svc = services[inst.service_name]
                if not svc then
                    svc = {}
                    services[inst.service_name] = svc
                end
                local tags = not absent(inst.tags) and inst.tags or EMPTY
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
    return services
end

local function rule_id(rule, index)
    if type(rule) == "table" and type(rule.id) == "string" and rule.id ~= "" then
        return rule.id
    end
    return "rules[" .. (index - 1) .. "]"
end

-- Compile a decoded state that passed _M.check. Returns the compiled tables and the list
-- of rejected entries ({id, error}: a rule's id, else "rules[i]"; "instances[i]"), which
-- the admin endpoint logs and reports. previous: the compiled tables
-- of the version before, whose balancing objects are taken over (reinitialized), or nil.
function _M.compile(state, previous)
    local rejected = {}
    local into = {pickers = {}, previous = previous and previous.pickers or EMPTY}
    local services = compile_instances(absent(state.instances) and EMPTY or state.instances,
                                       rejected)

    -- Structure first: only well-formed rules are sorted and compiled.
    local sorted = {}
    for i, rule in ipairs(absent(state.rules) and EMPTY or state.rules) do
        local ok, err = pcall(check_rule, rule, "rules[" .. (i - 1) .. "]")
        if ok then
            sorted[#sorted + 1] = {rule = rule, id = rule_id(rule, i),
                                   priority = absent(rule.priority) and 0 or rule.priority}
        else
            rejected[#rejected + 1] = {id = rule_id(rule, i),
                                       error = type(err) == "table" and err.a8 or tostring(err)}
        end
    end
    table_sort(sorted, function(a, b)
        if a.priority ~= b.priority then return a.priority > b.priority end
        return a.id < b.id
    end)

    local routes, actions = {}, {}
    for _, item in ipairs(sorted) do
        local rule = item.rule
        local dest = rule.destination
        local ok, err = pcall(function()
            local match = compile_match(rule)
            local entry = match and {id = item.id, match = match}
            if not absent(rule.route) then
                if entry then entry.backends = compile_route(rule, dest, services, into) end
                -- A destination with route rules is ruled even when none of them is for
                -- this source: its requests then match no rule (412) rather than taking
                -- the default.
                routes[dest] = routes[dest] or {}
                if entry then routes[dest][#routes[dest] + 1] = entry end
            elseif entry then
                entry.actions = compile_actions(rule)
                actions[dest] = actions[dest] or {}
                actions[dest][#actions[dest] + 1] = entry
            end
        end)
        if not ok then
            rejected[#rejected + 1] = {id = item.id, error = tostring(err)}
        end
    end

    -- The default route of a destination without route rules: all its instances.
    local defaults = {}
    for name, pool in pairs(services) do
        local backend = make_backend(name, EMPTY, pool, name .. "|" .. name .. "|", EMPTY, into)
        backend.upto = 1
        defaults[name] = backend
    end

    return {services = services, routes = routes, actions = actions, defaults = defaults,
            pickers = into.pickers}, rejected
end

-- The rejected list as JSON (an empty list is "[]", which cjson would write as "{}").
function _M.encode_rejected(rejected)
    local parts = {}
    for i, r in ipairs(rejected) do
        parts[i] = cjson.encode({id = r.id, error = r.error})
    end
    return "[" .. table_concat(parts, ",") .. "]"
end

return _M
