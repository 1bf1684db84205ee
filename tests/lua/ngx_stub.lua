-- A small stand-in for the parts of lua-nginx-module's API that lua/amalgam8 uses, so that
-- the router, the compile step and the balancer run under plain Lua (busted) without nginx.
-- Require it before any amalgam8 module (they keep references to ngx.* when loaded):
--
--   package.path = "tests/lua/?.lua;lua/?.lua;" .. package.path
--   local stub = require "ngx_stub"
--
-- Regular expressions are PCRE2's (lua-rex-pcre2), the engine Debian's nginx uses. Time
-- stands still unless a test moves it (stub.advance); ngx.sleep only records its argument.
-- stub.reset() empties the shared dicts, ngx.var and ngx.ctx and the records between tests.
local cjson = require "cjson.safe"
local rex = require "rex_pcre2"

local _M = {}

local clock = 1000000

-- A lua_shared_dict: values with an optional time to live (seconds, 0 or nil: forever).
local Dict = {}
Dict.__index = Dict

local function new_dict()
    return setmetatable({data = {}, expiry = {}}, Dict)
end

function Dict:get(key)
    local expires = self.expiry[key]
    if expires and expires <= clock then
        self.data[key], self.expiry[key] = nil, nil
    end
    return self.data[key]
end

function Dict:set(key, value, ttl)
    self.data[key] = value
    self.expiry[key] = (ttl and ttl > 0) and clock + ttl or nil
    return true
end

Dict.safe_set = Dict.set

function Dict:add(key, value, ttl)
    if self:get(key) ~= nil then return false, "exists" end
    return self:set(key, value, ttl)
end

function Dict:incr(key, by, init, ttl)
    local value = self:get(key)
    if value == nil then
        if init == nil then return nil, "not found" end
        self:set(key, init + by, ttl)
        return init + by
    end
    self.data[key] = value + by
    return value + by
end

function Dict:delete(key)
    self.data[key], self.expiry[key] = nil, nil
end

function Dict:clear()
    self.data, self.expiry = {}, {}
end

-- What the code under test did: log lines, sleeps, exits, the balancer's calls.
_M.logs, _M.sleeps, _M.exits, _M.peers = {}, {}, {}, {}

local function re_find(subject, pattern, options)
    local flags = 0
    if options and options:find("i", 1, true) then flags = rex.flags().CASELESS end
    local ok, from, to = pcall(rex.find, subject, pattern, 1, flags)
    if not ok then return nil, nil, tostring(from) end
    return from, to
end

ngx = {
    DEBUG = 8, INFO = 7, NOTICE = 6, WARN = 5, ERR = 4, CRIT = 3, ALERT = 2, EMERG = 1,
    null = cjson.null,
    shared = {a8_state = new_dict(), a8_health = new_dict()},
    var = {},
    ctx = {},
    header = {},
    status = 0,
    worker = {
        id = function() return 0 end,
        pid = function() return 4242 end,
    },
    re = {find = re_find},
    req = {
        start_time = function() return clock end,
        get_method = function() return "GET" end,
    },
    timer = {every = function() return true end},
}

function ngx.now() return clock end

function ngx.log(level, ...)
    _M.logs[#_M.logs + 1] = {level = level, message = table.concat({...})}
end

function ngx.sleep(seconds)
    _M.sleeps[#_M.sleeps + 1] = seconds
end

function ngx.exit(code)
    _M.exits[#_M.exits + 1] = code
    return code
end

-- What a handler wrote as the response body (ngx.say adds a newline).
_M.body = ""

function ngx.say(...)
    _M.body = _M.body .. table.concat({...}) .. "\n"
    return 1
end

package.loaded["ngx.balancer"] = {
    set_current_peer = function(host, port)
        _M.peers[#_M.peers + 1] = host .. ":" .. port
        return true
    end,
    set_more_tries = function(n)
        _M.more_tries = n
        return true
    end,
    set_timeouts = function(connect, send, read)
        _M.timeouts = {connect, send, read}
        return true
    end,
}

-- Move the clock on (shared-dict entries expire, the retry budget's window slides).
function _M.advance(seconds)
    clock = clock + seconds
end

-- The data plane's defaults as nginx.conf sets them: from amalgam8/schemas/dataplane.json.
function _M.dataplane_defaults()
    local f = assert(io.open("amalgam8/schemas/dataplane.json", "rb"))
    local text = f:read("*a")
    f:close()
    return assert(cjson.decode(text))
end

-- A fresh request and empty dicts; config.set({defaults = ...}) as init_by_lua does.
function _M.reset(settings)
    for _, dict in pairs(ngx.shared) do dict:clear() end
    for k in pairs(ngx.var) do ngx.var[k] = nil end
    _M.new_request()
    _M.logs, _M.sleeps, _M.exits, _M.peers = {}, {}, {}, {}
    _M.more_tries, _M.timeouts = nil, nil
    local config = require "amalgam8.config"
    local values = {source_name = "", source_tags = {}, defaults = _M.dataplane_defaults()}
    for k, v in pairs(settings or {}) do values[k] = v end
    config.set(values)
end

-- A new request: an empty ngx.ctx and the given variables (ngx.var is kept as one table,
-- which the modules hold on to).
function _M.new_request(vars)
    ngx.ctx = {}
    for k in pairs(ngx.var) do ngx.var[k] = nil end
    for k, v in pairs(vars or {}) do ngx.var[k] = v end
    _M.exits, _M.sleeps = {}, {}
    ngx.header, ngx.status, _M.body = {}, 0, ""
end

-- An instance as the compile step makes it.
function _M.instance(addr)
    local host, port = addr:match("^(.*):(%d+)$")
    return {host = host, port = tonumber(port), addr = addr, tags = {}, tag_list = ""}
end

return _M
