-- The proxy admin endpoint (SPEC A4): POST/PUT take the whole state, GET returns it.
--
-- A state that is not an object with "instances" and "rules" lists is refused (400). Inside
-- it, a rule or an instance the proxy cannot use is skipped, logged (WARN) and reported:
--   200 {"version": N, "rejected": [{"id": "<rule id, or rules[i] / instances[i]>",
--                                    "error": "<why>"}]}
-- and GET returns the loaded state with the same "rejected" list.
local cjson = require "cjson.safe"
local compile = require "amalgam8.compile"
local state = require "amalgam8.state"

local ngx = ngx
local _M = {}

local MAX_BODY = 64 * 1024 * 1024

local function answer(status, value)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(value))
    return ngx.exit(status)
end

local function show()
    -- The state exactly as it was pushed, plus its version, when it was applied and what
    -- was rejected.
    local body, version, rejected = state.raw()
    local _, applied = state.version()
    local head = '{"version":' .. (version or 0) .. ',"applied_at":' .. (applied or "null")
        .. ',"rejected":' .. (rejected or "[]")
    local rest = body and body:match("^%s*{(.*)$") or '"instances":[],"rules":[]}'
    if not rest:match("^%s*}") then head = head .. "," end
    ngx.status = 200
    ngx.header["Content-Type"] = "application/json"
    ngx.print(head, rest)
    return ngx.exit(200)
end

local function read_body()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if not body then
        local file = ngx.req.get_body_file()
        if file then
            local f = io.open(file, "rb")
            if f then
                body = f:read("*a")
                f:close()
            end
        end
    end
    return body
end

function _M.handle()
    local method = ngx.req.get_method()
    if method == "GET" or method == "HEAD" then
        return show()
    end
    if method ~= "POST" and method ~= "PUT" then
        ngx.header["Allow"] = "GET, POST, PUT"
        return answer(405, {error = "method not allowed"})
    end
    local body = read_body()
    if not body or #body == 0 then
        return answer(400, {error = "the body must be the state {\"instances\":[...],\"rules\":[...]}"})
    end
    if #body > MAX_BODY then
        return answer(413, {error = "the state is too large"})
    end
    local decoded, err = cjson.decode(body)
    if decoded == nil then
        return answer(400, {error = "the body is not valid JSON: " .. tostring(err)})
    end
    if not body:find("^%s*{") then
        return answer(400, {error = "the state must be an object {\"instances\":[...],\"rules\":[...]}"})
    end
    local problem = compile.check(decoded)
    if problem then
        return answer(400, {error = problem})
    end
    local ok, compiled, rejected = pcall(compile.compile, decoded)
    if not ok then
        -- A bug of the compile step, not of the state: say so, and keep the old state.
        ngx.log(ngx.ERR, "amalgam8: cannot compile the state: ", tostring(compiled))
        return answer(500, {error = "the proxy cannot compile the state: " .. tostring(compiled)})
    end
    for _, r in ipairs(rejected) do
        ngx.log(ngx.WARN, "amalgam8: skipped ", r.id, ": ", r.error)
    end
    local rejected_json = compile.encode_rejected(rejected)
    -- Keep the state as it was pushed: workers decode exactly what was checked.
    local version, store_err = state.store(body, compiled, rejected_json)
    if not version then
        return answer(500, {error = store_err})
    end
    ngx.status = 200
    ngx.header["Content-Type"] = "application/json"
    ngx.say('{"version":', version, ',"rejected":', rejected_json, '}')
    return ngx.exit(200)
end

return _M
