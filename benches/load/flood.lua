-- wrk script for benches/load/flood.py: every request comes from a new client address
-- (X-Forwarded-For, believed from the trusted local peer), except every 20th, which comes
-- from one heavy hitter, 192.0.2.1. Prints WRK_JSON {...} like count.lua.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  n = 0
  offset = (id or 0) * 16777216
end

function request()
  n = n + 1
  local ip
  if n % 20 == 0 then
    ip = "192.0.2.1"
  else
    local i = offset + n
    ip = string.format("%d.%d.%d.%d", 10 + math.floor(i / 16777216) % 200,
      math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
  end
  return wrk.format("GET", nil, { ["X-Forwarded-For"] = ip })
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses") or {}) do
      total[k] = (total[k] or 0) + v
    end
  end
  local parts = {}
  for k, v in pairs(total) do
    table.insert(parts, string.format('"%d": %d', k, v))
  end
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, table.concat(parts, ", ")))
end
