-- The sidecar's identity and the data plane's defaults, filled in by the rendered nginx.conf
-- (init_by_lua_block) before any request. The defaults come from
-- amalgam8/schemas/dataplane.json (their one home); no Lua module repeats them.
local _M = {
    source_name = "",       -- this sidecar's service name
    source_tags = {},       -- and its tags
    source_label = "",      -- "name:tag1,tag2" for the access log
    source_tag_set = {},
    -- lb, retries_max, connect_timeout, consecutive_errors, ejection_time,
    -- max_ejected_fraction, retry_budget_ratio, retry_budget_floor, retry_budget_window
    defaults = {},
}

function _M.set(settings)
    for k, v in pairs(settings) do
        _M[k] = v
    end
    local tags = _M.source_tags or {}
    _M.source_tag_set = {}
    for _, t in ipairs(tags) do
        _M.source_tag_set[t] = true
    end
    if _M.source_name ~= "" then
        _M.source_label = _M.source_name .. ":" .. table.concat(tags, ",")
    else
        _M.source_label = ""
    end
end

return _M
