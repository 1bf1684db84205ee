-- Unit tests of lua/amalgam8/balancer.lua without nginx (busted, with tests/lua/ngx_stub.lua).
package.path = "tests/lua/?.lua;lua/?.lua;" .. package.path
local stub = require "ngx_stub"
local balancer = require "amalgam8.balancer"
local config = require "amalgam8.config"

local health = ngx.shared.a8_health

local function pool_of(n)
    local pool = {}
    for i = 1, n do pool[i] = stub.instance("10.0.0." .. i .. ":80") end
    return pool
end

local function counts(picker, times, tried_of)
    local seen = {}
    for _ = 1, times do
        local inst = picker:pick(tried_of and tried_of() or {})
        seen[inst.addr] = (seen[inst.addr] or 0) + 1
    end
    return seen
end

describe("balancing methods", function()
    before_each(function()
        stub.reset()
        math.randomseed(7)
    end)

    it("have one shape and are chosen by name", function()
        for _, name in ipairs({"round_robin", "random", "least_request"}) do
            local class = balancer.methods[name]
            assert.is_function(class.new, name)
            local picker = balancer.new(name, pool_of(3))
            assert.are.equal(class, getmetatable(picker), name)
            assert.is_function(picker.pick, name)
            assert.is_function(picker.reinit, name)
            assert.is_table(picker:pick({}), name)
        end
    end)

    it("fall back to the default method for an unknown name", function()
        local picker = balancer.new("fastest", pool_of(2))
        assert.are.equal(balancer.methods[config.defaults.lb], getmetatable(picker))
    end)

    it("pick nothing from an empty pool", function()
        for name in pairs(balancer.methods) do
            assert.is_nil(balancer.new(name, {}):pick({}), name)
        end
    end)

    it("round robin takes every instance in turn", function()
        local picker = balancer.new("round_robin", pool_of(3))
        local first = picker:pick({}).addr
        local order = {first}
        for i = 2, 6 do order[i] = picker:pick({}).addr end
        assert.are.equal(order[1], order[4])
        assert.are.equal(order[2], order[5])
        assert.are.equal(order[3], order[6])
        assert.are_not.equal(order[1], order[2])
        assert.are_not.equal(order[2], order[3])
        assert.are_not.equal(order[1], order[3])
    end)

    it("round robin: a retry does not move the turn on", function()
        local picker = balancer.new("round_robin", pool_of(2))
        local first = picker:pick({})
        local retry = picker:pick({[first.addr] = true})
        assert.are_not.equal(first.addr, retry.addr)
        -- The next first attempt takes the instance after `first`, which is `retry`.
        assert.are.equal(retry.addr, picker:pick({}).addr)
    end)

    it("skip ejected instances, and take an ejected one when nothing else is left", function()
        for name in pairs(balancer.methods) do
            stub.reset()
            local pool = pool_of(3)
            health:set("ej:" .. pool[1].addr, true, 30)
            local seen = counts(balancer.new(name, pool), 300)
            assert.is_nil(seen[pool[1].addr], name)
            assert.is_true((seen[pool[2].addr] or 0) > 50, name)
            assert.is_true((seen[pool[3].addr] or 0) > 50, name)
            local tried = {[pool[2].addr] = true, [pool[3].addr] = true}
            assert.are.equal(pool[1].addr, balancer.new(name, pool):pick(tried).addr, name)
        end
    end)

    it("never pick a tried instance while an untried one is left", function()
        for name in pairs(balancer.methods) do
            local pool = pool_of(4)
            local picker = balancer.new(name, pool)
            for _ = 1, 50 do
                local tried = {[pool[1].addr] = true, [pool[3].addr] = true}
                local addr = picker:pick(tried).addr
                assert.is_true(addr == pool[2].addr or addr == pool[4].addr, name)
            end
        end
    end)

    it("random spreads over the pool", function()
        local pool = pool_of(4)
        local seen = counts(balancer.new("random", pool), 4000)
        for _, inst in ipairs(pool) do
            assert.is_true(seen[inst.addr] > 800 and seen[inst.addr] < 1200, inst.addr)
        end
    end)

    it("least request takes the less busy of two", function()
        local pool = pool_of(2)
        health:set("act:" .. pool[1].addr, 5)
        health:set("act:" .. pool[2].addr, 1)
        local seen = counts(balancer.new("least_request", pool), 100)
        assert.are.same({[pool[2].addr] = 100}, seen)
    end)

    it("least request of many avoids the busiest", function()
        local pool = pool_of(3)
        health:set("act:" .. pool[1].addr, 9)
        local seen = counts(balancer.new("least_request", pool), 300)
        -- Two distinct instances of three always include one that is not pool[1].
        assert.is_nil(seen[pool[1].addr])
    end)

    it("reinit moves an object to another pool, keeping it usable", function()
        local picker = balancer.new("round_robin", pool_of(3))
        picker:pick({})
        local other = {stub.instance("10.0.1.1:80")}
        assert.are.equal(picker, picker:reinit(other))
        for _ = 1, 3 do assert.are.equal("10.0.1.1:80", picker:pick({}).addr) end
        assert.is_nil(picker:reinit({}):pick({}))
    end)
end)

describe("balance and after", function()
    local backend

    before_each(function()
        stub.reset()
        math.randomseed(3)
        local pool = pool_of(4)
        backend = {pool = pool, lb = "round_robin", retries = 3, timeout = 2,
                   consecutive_errors = 2, ejection_time = 30,
                   picker = balancer.new("round_robin", pool)}
    end)

    it("sets the peer, the retries and the timeouts of the first attempt", function()
        stub.new_request({a8_dst_name = "reviews"})
        ngx.ctx.a8_backend = backend
        balancer.balance()
        assert.are.equal(1, #stub.peers)
        assert.are.equal(3, stub.more_tries)
        assert.are.same({2, 2, 2}, stub.timeouts)
        assert.are.equal(1, ngx.ctx.a8_attempts)
    end)

    it("retries on another instance within the budget, then refuses", function()
        stub.new_request({a8_dst_name = "reviews"})
        ngx.ctx.a8_backend = backend
        balancer.balance()
        -- No request counted yet: the budget allows retry_budget_floor retries.
        local floor = config.defaults.retry_budget_floor
        for _ = 1, floor do balancer.balance() end
        assert.are.equal(floor + 1, #stub.peers)
        assert.are.equal(floor, ngx.ctx.a8_retries)
        local seen = {}
        for _, p in ipairs(stub.peers) do
            assert.is_nil(seen[p])
            seen[p] = true
        end
        balancer.balance()
        assert.is_true(ngx.ctx.a8_budget_exhausted)
        assert.are.same({-3}, stub.exits)
    end)

    it("counts requests for the budget over its window", function()
        for _ = 1, 10 do balancer.started("reviews") end
        stub.new_request({a8_dst_name = "reviews"})
        ngx.ctx.a8_backend = backend
        balancer.balance()
        local allowed = math.floor(10 * config.defaults.retry_budget_ratio)
            + config.defaults.retry_budget_floor
        for _ = 1, allowed do balancer.balance() end
        assert.is_nil(ngx.ctx.a8_budget_exhausted)
        balancer.balance()
        assert.is_true(ngx.ctx.a8_budget_exhausted)
        -- Once the window has passed, neither those requests nor those retries count.
        stub.advance(config.defaults.retry_budget_window)
        stub.new_request({a8_dst_name = "reviews"})
        ngx.ctx.a8_backend = backend
        balancer.balance()
        balancer.balance()
        assert.is_nil(ngx.ctx.a8_budget_exhausted)
        assert.are.equal(1, ngx.ctx.a8_retries)
    end)

    local function one_request(addr, status)
        stub.new_request({upstream_status = tostring(status), upstream_addr = addr})
        ngx.ctx.a8_backend = backend
        ngx.ctx.a8_tried = {[addr] = true}
        ngx.ctx.a8_attempts = 1
        ngx.ctx.a8_peer = addr
        balancer.after()
    end

    it("ejects an instance after consecutive errors, for ejection_time", function()
        local addr = backend.pool[1].addr
        one_request(addr, 500)
        assert.is_nil(health:get("ej:" .. addr))
        one_request(addr, 502)
        assert.is_true(health:get("ej:" .. addr))
        stub.advance(backend.ejection_time)
        assert.is_nil(health:get("ej:" .. addr))
    end)

    it("a success resets the count of errors", function()
        local addr = backend.pool[1].addr
        one_request(addr, 500)
        one_request(addr, 200)
        one_request(addr, 500)
        assert.is_nil(health:get("ej:" .. addr))
    end)

    -- Two errors on every instance of the pool; how many are ejected then.
    local function fail_all()
        for _, inst in ipairs(backend.pool) do
            one_request(inst.addr, 500)
            one_request(inst.addr, 500)
        end
        local out = 0
        for _, inst in ipairs(backend.pool) do
            if health:get("ej:" .. inst.addr) then out = out + 1 end
        end
        return out
    end

    it("never ejects more than max_ejected_fraction of the pool", function()
        assert.are.equal(#backend.pool * config.defaults.max_ejected_fraction, fail_all())
    end)

    it("reads the budget and the ejection cap from config.defaults", function()
        local defaults = stub.dataplane_defaults()
        defaults.retry_budget_floor = 1
        defaults.max_ejected_fraction = 0.25
        config.set({defaults = defaults})
        stub.new_request({a8_dst_name = "reviews"})
        ngx.ctx.a8_backend = backend
        balancer.balance()
        balancer.balance()
        assert.is_nil(ngx.ctx.a8_budget_exhausted)
        balancer.balance()
        assert.is_true(ngx.ctx.a8_budget_exhausted)
        assert.are.equal(1, fail_all())
    end)

    it("least request counts the attempts in flight and releases them", function()
        backend.lb = "least_request"
        backend.picker = balancer.new("least_request", backend.pool)
        stub.new_request({a8_dst_name = "reviews", upstream_status = "200"})
        ngx.ctx.a8_backend = backend
        balancer.balance()
        local addr = ngx.ctx.a8_peer
        assert.are.equal(1, health:get("act:" .. addr))
        ngx.var.upstream_addr = addr
        balancer.after()
        assert.are.equal(0, health:get("act:" .. addr))
    end)

    it("lists the attempts from nginx's variables", function()
        stub.new_request({upstream_addr = "10.0.0.1:80, 10.0.0.2:80 : 10.0.0.3:80",
                          upstream_status = "502, 504 : 200"})
        assert.are.same({{"10.0.0.1:80", "502"}, {"10.0.0.2:80", "504"},
                         {"10.0.0.3:80", "200"}}, balancer.attempts())
        ngx.ctx.a8_attempts = 2
        assert.are.same({{"10.0.0.1:80", "502"}, {"10.0.0.2:80", "504"}}, balancer.attempts())
    end)
end)
