-- Unit tests of lua/amalgam8/compile.lua, state.lua and router.lua without nginx (busted,
-- with tests/lua/ngx_stub.lua): a decoded state is compiled and stored, then requests are
-- routed by setting ngx.var as nginx would.
package.path = "tests/lua/?.lua;lua/?.lua;" .. package.path
local stub = require "ngx_stub"
local compile = require "amalgam8.compile"
local config = require "amalgam8.config"
local state = require "amalgam8.state"
local router = require "amalgam8.router"
local cjson = require "cjson.safe"

local function instance(addr, tags, service, status)
    return {id = addr, service_name = service or "reviews", status = status or "UP",
            endpoint = {type = "http", value = addr}, tags = tags}
end

local INSTANCES = {
    instance("10.0.0.1:80", {"v1"}),
    instance("10.0.0.2:80", {"v2"}),
    instance("10.0.0.3:80", {"v2", "canary"}),
    instance("10.0.0.9:80", {"v1"}, "reviews", "OUT_OF_SERVICE"),
    instance("10.0.1.1:80", {}, "ratings"),
}

local function route(id, tags, extra)
    local rule = {id = id, destination = "reviews", route = {backends = {{tags = tags}}}}
    for k, v in pairs(extra or {}) do rule[k] = v end
    return rule
end

-- Compile and store the state as the admin endpoint does; the compiled tables and the
-- rejected list.
local function push(rules, instances)
    local decoded = {instances = instances or INSTANCES, rules = rules or {}}
    assert.is_nil(compile.check(decoded))
    local compiled, rejected = compile.compile(decoded)
    local version = state.store(cjson.encode(decoded), compiled,
                                compile.encode_rejected(rejected))
    assert.is_number(version)
    return compiled, rejected
end

local function request(path, headers)
    local vars = {request_uri = path}
    for name, value in pairs(headers or {}) do
        vars["http_" .. name:lower():gsub("-", "_")] = value
    end
    stub.new_request(vars)
    router.route()
    return ngx.ctx.a8_backend, stub.exits[1]
end

describe("compile", function()
    before_each(function() stub.reset() end)

    it("refuses only a state that is no object with instances and rules lists", function()
        assert.is_string(compile.check("state"))
        assert.is_string(compile.check({1, 2}))
        assert.is_string(compile.check({instances = {a = 1}}))
        assert.is_string(compile.check({rules = "none"}))
        assert.is_nil(compile.check({}))
        assert.is_nil(compile.check({instances = {}, rules = {}}))
    end)

    it("skips and reports a rule PCRE cannot compile, keeping the others", function()
        local compiled, rejected = compile.compile({instances = INSTANCES, rules = {
            route("bad", {"v1"}, {priority = 9, match = {headers = {["X-User"] = "\\u0041"}}}),
            route("good", {"v2"}),
        }})
        assert.are.equal(1, #rejected)
        assert.are.equal("bad", rejected[1].id)
        assert.matches("rules%[0%]%.match%.headers%.X%-User: not a valid regular expression",
                       rejected[1].error)
        assert.are.equal(1, #compiled.routes.reviews)
        assert.are.equal("good", compiled.routes.reviews[1].id)
    end)

    it("reports bad structure by rule id, or by index without one", function()
        local _, rejected = compile.compile({instances = INSTANCES, rules = {
            {destination = "reviews"},
            {id = "a", destination = "reviews", actions = {{action = "explode"}}},
            {id = "b", destination = 5, route = {backends = {{tags = {"v1"}}}}},
            "not a rule",
        }})
        local ids = {}
        for i, r in ipairs(rejected) do ids[i] = r.id end
        assert.are.same({"rules[0]", "a", "b", "rules[3]"}, ids)
        assert.are.same({{id = "rules[0]", error = "rules[0]: needs exactly one of route or "
            .. "actions"}}, cjson.decode(compile.encode_rejected({rejected[1]})))
    end)

    it("skips and reports an instance of bad structure, keeping the others", function()
        local instances = {INSTANCES[1], {service_name = "reviews"}}
        local compiled, rejected = compile.compile({instances = instances, rules = {}})
        assert.are.same({{id = "instances[1]", error = "instances[1].endpoint: must be an object"}},
                        rejected)
        assert.are.equal(1, #compiled.services.reviews)
    end)

    it("encodes an empty rejected list as a JSON list", function()
        assert.are.equal("[]", compile.encode_rejected({}))
    end)

    it("normalizes weights rather than refusing them", function()
        local compiled, rejected = compile.compile({instances = INSTANCES, rules = {
            {id = "w", destination = "reviews", route = {backends = {
                {tags = {"v1"}, weight = 0.6}, {tags = {"v2"}, weight = 0.9}}}},
            {id = "z", destination = "ratings", route = {backends = {
                {tags = {}, weight = 0}, {name = "reviews", tags = {"v1"}, weight = 0}}}},
        }})
        assert.are.same({}, rejected)
        local w = compiled.routes.reviews[1].backends
        assert.is_true(math.abs(w[1].upto - 0.4) < 1e-9)
        assert.are.equal(1, w[2].upto)
        local z = compiled.routes.ratings[1].backends
        assert.are.equal(0.5, z[1].upto)
        assert.are.equal(1, z[2].upto)
    end)

    it("takes the data plane's defaults from config.defaults", function()
        local many = {}
        for i = 1, 20 do many[i] = instance("10.0.2." .. i .. ":80", {}, "wide") end
        config.set({defaults = {lb = "random", retries_max = 4, consecutive_errors = 7,
                                ejection_time = 9, connect_timeout = 1,
                                max_ejected_fraction = 0.5, retry_budget_ratio = 0.2,
                                retry_budget_floor = 3, retry_budget_window = 10}})
        local compiled = compile.compile({instances = many, rules = {
            {id = "r", destination = "wide", route = {backends = {{tags = {}, retries = 8}}}}}})
        local default = compiled.defaults.wide
        assert.are.same({"random", 4, 7, 9},
                        {default.lb, default.retries, default.consecutive_errors,
                         default.ejection_time})
        assert.are.equal(4, compiled.routes.wide[1].backends[1].retries)
    end)

    it("keeps a backend's balancing object across versions, reinitialized", function()
        local first = compile.compile({instances = INSTANCES, rules = {route("r", {"v2"})}})
        local picker = first.routes.reviews[1].backends[1].picker
        local second = compile.compile({instances = {INSTANCES[2]}, rules = {route("r", {"v2"})}},
                                       first)
        assert.are.equal(picker, second.routes.reviews[1].backends[1].picker)
        assert.are.equal(1, #picker.pool)
    end)
end)

describe("router", function()
    before_each(function()
        stub.reset()
        math.randomseed(11)
    end)

    it("routes a destination without rules over its UP instances", function()
        push()
        local seen = {}
        for _ = 1, 30 do
            local backend = request("/reviews/x?y=1")
            seen[backend.picker:pick({}).addr] = true
            assert.are.equal("/x", ngx.var.a8_path)
            assert.are.equal("reviews:", ngx.var.a8_dst)
        end
        assert.is_nil(seen["10.0.0.9:80"])
        assert.is_true(seen["10.0.0.1:80"] and seen["10.0.0.2:80"] and seen["10.0.0.3:80"])
    end)

    it("answers 503 proxy_not_ready, with Retry-After, before the first state", function()
        for _, path in ipairs({"/reviews/", "/", "/nothing/x"}) do
            assert.are.equal(503, select(2, request(path)))
            assert.are.equal(503, ngx.status)
            assert.are.equal("1", ngx.header["Retry-After"])
            assert.are.equal("application/json", ngx.header["Content-Type"])
            assert.are.same({error = "proxy_not_ready",
                             description = "the proxy has no routing state yet"},
                            cjson.decode(stub.body))
            assert.is_nil(ngx.ctx.a8_backend)
            assert.are.equal(32, #ngx.var.a8_request_id)
        end
        push()
        assert.is_table((request("/reviews/")))
        assert.are.equal(404, select(2, request("/nothing/")))
    end)

    it("answers 404 for an unknown destination and the root", function()
        push()
        assert.are.equal(404, select(2, request("/nothing/")))
        assert.are.equal(404, select(2, request("/")))
    end)

    it("answers 412 when route rules exist and none matches", function()
        push({route("r", {"v1"}, {match = {headers = {["X-User"] = "^jason$"}}})})
        assert.are.equal(412, select(2, request("/reviews/", {["X-User"] = "alice"})))
        local backend = request("/reviews/", {["X-User"] = "jason"})
        assert.are.equal("reviews:v1", backend.dst)
    end)

    it("tries route rules by descending priority", function()
        push({route("low", {"v1"}, {priority = 1}),
              route("high", {"v2"}, {priority = 5, match = {headers = {Cookie = "user=jason"}}})})
        assert.are.equal("reviews:v2", request("/reviews/", {Cookie = "user=jason"}).dst)
        assert.are.equal("reviews:v1", request("/reviews/").dst)
    end)

    it("skips rules for other sources", function()
        config.set({source_name = "productpage", source_tags = {"v1"}})
        push({route("other", {"v2"}, {priority = 5, match = {source = {name = "details"}}}),
              route("ours", {"v1"}, {match = {source = {name = "productpage", tags = {"v1"}}}})})
        assert.are.equal("reviews:v1", request("/reviews/").dst)
    end)

    it("chooses weighted backends and sets the version cookie", function()
        push({{id = "w", destination = "reviews", route = {backends = {
            {tags = {"v1"}, weight = 0.25}, {tags = {"v2"}}}}}})
        local v1 = 0
        for _ = 1, 2000 do
            if request("/reviews/").dst == "reviews:v1" then v1 = v1 + 1 end
        end
        assert.is_true(v1 > 400 and v1 < 600, v1)
        request("/reviews/")
        assert.matches("^version=reviews%-v[12]; Path=/$", ngx.var.a8_cookie)
        -- The cookie keeps a client on its version.
        for _ = 1, 50 do
            stub.new_request({request_uri = "/reviews/", cookie_version = "reviews-v1"})
            router.route()
            assert.are.equal("reviews:v1", ngx.ctx.a8_backend.dst)
        end
    end)

    it("answers 503 when the chosen backend has no instance", function()
        push({route("r", {"v9"})})
        assert.are.equal(503, select(2, request("/reviews/")))
    end)

    it("applies delays and aborts of the first matching action rule", function()
        push({route("r", {"v1"}),
              {id = "a", destination = "reviews", priority = 2, actions = {
                  {action = "delay", duration = 0.3},
                  {action = "abort", return_code = 503},
                  {action = "trace", log_key = "k", log_value = "v"}}},
              {id = "b", destination = "reviews", priority = 1, actions = {
                  {action = "abort", return_code = 500}}}})
        local _, code = request("/reviews/")
        assert.are.equal(503, code)
        assert.are.same({0.3}, stub.sleeps)
        assert.are.equal(0.3, ngx.ctx.a8_delay)
        assert.are.equal("delay,abort,trace", ngx.ctx.a8_fired)
        assert.are.same({"k", "v"}, {ngx.ctx.a8_trace_key, ngx.ctx.a8_trace_value})
    end)

    it("resets the connection for a negative abort code", function()
        push({route("r", {"v1"}),
              {id = "a", destination = "reviews", actions = {{action = "abort", return_code = -1}}}})
        local _, code = request("/reviews/")
        assert.are.equal(444, code)
        assert.are.equal(-1, ngx.ctx.a8_reset)
    end)

    it("applies tagged actions only to a backend with the tags", function()
        push({route("r", {"v2"}),
              {id = "a", destination = "reviews", actions = {
                  {action = "abort", return_code = 500, tags = {"v1"}}}}})
        local backend, code = request("/reviews/")
        assert.is_nil(code)
        assert.are.equal("reviews:v2", backend.dst)
    end)

    it("keeps routing by the good rules when a pushed rule cannot compile", function()
        local _, rejected = push({
            route("bad", {"v1"}, {priority = 9, match = {headers = {["X-User"] = "\\u0041"}}}),
            route("good", {"v2"})})
        assert.are.equal("bad", rejected[1].id)
        assert.are.equal("reviews:v2", request("/reviews/", {["X-User"] = "A"}).dst)
        local body, version, rejected_json = state.raw()
        assert.are.equal(1, version)
        assert.is_string(body)
        assert.are.equal("bad", cjson.decode(rejected_json)[1].id)
        -- A later push is taken.
        push({route("good", {"v1"})})
        assert.are.equal("reviews:v1", request("/reviews/").dst)
        assert.are.equal("[]", select(3, state.raw()))
    end)
end)
