-- wrk script for benches/load/run.py's key-spread run: count.lua's counting, with every
-- request from one of N client addresses (X-Forwarded-For, believed from the trusted
-- local peer), picked at random, so a fleet tracks N distinct keys at once.
-- Usage: wrk ... -s keys.lua URL -- N

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "count.lua")

local count_setup, count_init = setup, init
local seeds = 0

function setup(thread)
  seeds = seeds + 1
  thread:set("seed", seeds)
  count_setup(thread)
end

function init(args)
  count_init({})
  keys = tonumber(args[1]) or 100000
  math.randomseed(os.time() * 1000 + (seed or 0))
end

function request()
  local i = math.random(0, keys - 1)
  local ip = string.format("10.%d.%d.%d", math.floor(i / 65536) % 256,
    math.floor(i / 256) % 256, i % 256)
  return wrk.format(nil, nil, { ["X-Forwarded-For"] = ip })
end
