-- The proxy admin endpoint (SPEC A4): POST/PUT take the whole state, GET returns it.
local cjson = require "cjson.safe"
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

function _M.handle()
    local method = ngx.req.get_method()
    if method == "GET" or method == "HEAD" then
        -- The state exactly as it was pushed, plus its version and when it was applied.
        local body, version = state.raw()
        local _, applied = state.version()
        local head = '{"version":' .. (version or 0) .. ',"applied_at":' .. (applied or "null")
        local rest = body and body:match("^%s*{(.*)$") or '"instances":[],"rules":[]}'
        if not rest:match("^%s*}") then head = head .. "," end
        ngx.status = 200
        ngx.header["Content-Type"] = "application/json"
        ngx.print(head, rest)
        return ngx.exit(200)
    end
    if method ~= "POST" and method ~= "PUT" then
        ngx.header["Allow"] = "GET, POST, PUT"
        return answer(405, {error = "method not allowed"})
    end
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
    local problem = state.validate(decoded)
    if problem then
        return answer(400, {error = problem})
    end
    local compiled, compile_err = state.compile(decoded)
    if not compiled then
        return answer(400, {error = "the state cannot be used: " .. compile_err})
    end
    -- Keep the state as it was pushed: workers decode exactly what was validated.
    local version, store_err = state.store(body, compiled)
    if not version then
        return answer(500, {error = store_err})
    end
    return answer(200, {version = version})
end

return _M
