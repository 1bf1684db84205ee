-- The sidecar's identity and settings, filled in by the rendered nginx.conf
-- (init_by_lua_block) before any request.
local _M = {
    source_name = "",       -- this sidecar's service name
    source_tags = {},       -- and its tags
    source_label = "",      -- "name:tag1,tag2" for the access log
    default_consecutive_errors = 5,
    default_ejection_time = 30,
    retry_budget_ratio = 0.2,
    retry_budget_floor = 3,
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
    end
end

return _M
