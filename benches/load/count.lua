-- wrk script for benches/load/run.py: counts responses by status code (and, with the
-- argument `per-second`, 200s per epoch second) and prints one machine-readable line
-- at the end:  WRK_JSON {...}
-- Usage: wrk -t1 -c50 -d10s --latency -s count.lua http://127.0.0.1:PORT/a/x [-- per-second]

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  per_second = {}
  track_seconds = args[1] == "per-second"
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if track_seconds and status == 200 then
    local now = os.time()
    per_second[now] = (per_second[now] or 0) + 1
  end
end

local function merge(into, from)
  for k, v in pairs(from or {}) do
    into[k] = (into[k] or 0) + v
  end
end

local function json_counts(t)
  local parts = {}
  for k, v in pairs(t) do
    parts[#parts + 1] = string.format('"%d": %d', k, v)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local all_statuses, all_seconds = {}, {}
  for _, thread in ipairs(threads) do
    merge(all_statuses, thread:get("statuses"))
    merge(all_seconds, thread:get("per_second"))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, '
      .. '"statuses": %s, "ok_per_second": %s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    json_counts(all_statuses), json_counts(all_seconds)))
end
