-- The proxy's state, stored and swapped: the admin endpoint stores each pushed state in a
-- shared dict under a new version (so every worker sees the same version), and each worker
-- compiles that version once (amalgam8.compile) into the tables requests read. Requests
-- never decode JSON or compile rules.
--
-- Shared dict a8_state:
--   version                the current version (absent before the first push)
--   state:<version>        the state as pushed (the current and the previous one)
--   rejected:<version>     what the compile step skipped, as a JSON list of {id, error}
--   applied_at             when the current version was stored
--   lock                   held by the worker storing a push
local cjson = require "cjson.safe"
local compile = require "amalgam8.compile"

local ngx = ngx
local shared = ngx.shared.a8_state

local _M = {}

local EMPTY_STATE = {services = {}, routes = {}, actions = {}, defaults = {}, pickers = {},
                     version = 0}
local compiled = EMPTY_STATE  -- this worker's compiled view
local compiled_version = -1   -- and the version it was compiled from (nil: no state yet)

-- Pushes may reach several workers at once: one stores at a time.
local function lock()
    for _ = 1, 2500 do
        if shared:add("lock", true, 10) then return true end
        ngx.sleep(0.002)
    end
    return false
end

local function install(result, version)
    result.version = version
    compiled = result
    compiled_version = version
    ngx.log(ngx.NOTICE, "amalgam8: worker ", ngx.worker.id(), " uses state version ", version)
end

-- Store a state for every worker: the body and its rejected list under a new version, then
-- the version itself, so that a worker never sees a version whose state is not there yet.
-- The current and the previous state are kept (a worker may be compiling the previous
-- one). Returns the new version, or nil and a message. result: the state as this worker
-- compiled it (installed here at once); rejected_json: its rejected list as JSON.
function _M.store(body, result, rejected_json)
    if not lock() then return nil, "timed out waiting for another push" end
    local version = (shared:get("version") or 0) + 1
    -- safe_set: fail rather than evict anything (such as the version) to make room.
    local ok, err = shared:safe_set("state:" .. version, body)
    if ok then
        ok, err = shared:safe_set("rejected:" .. version, rejected_json or "[]")
    end
    if ok then
        shared:set("applied_at", ngx.now())
        shared:set("version", version)
        shared:delete("state:" .. (version - 2))
        shared:delete("rejected:" .. (version - 2))
    else
        shared:delete("state:" .. version)
    end
    shared:delete("lock")
    if not ok then return nil, "cannot keep the state: " .. tostring(err) end
    if result then install(result, version) end
    return version
end

-- The compiled view of the current version (compiled at most once per version and worker).
function _M.current()
    local version = shared:get("version")
    if version == compiled_version then return compiled end
    if version == nil then
        compiled, compiled_version = EMPTY_STATE, nil
        return compiled
    end
    local body = shared:get("state:" .. version)
    local decoded = body and cjson.decode(body)
    local ok, result
    if decoded and not compile.check(decoded) then
        ok, result = pcall(compile.compile, decoded, compiled)
    else
        result = "the state is missing"
    end
    if ok then
        install(result, version)
    else
        -- Keep serving the previous state; do not try again on every request.
        ngx.log(ngx.ERR, "amalgam8: cannot use state version ", version, ": ", tostring(result))
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

-- Whether a state was ever stored in this nginx (a restarted nginx starts without one).
function _M.loaded()
    return shared:get("version") ~= nil
end

function _M.version()
    return shared:get("version") or 0, shared:get("applied_at")
end

-- The current state as pushed, its version and its rejected list (JSON); nil before the
-- first push.
function _M.raw()
    local version = shared:get("version")
    if not version then return nil end
    return shared:get("state:" .. version), version, shared:get("rejected:" .. version)
end

return _M
