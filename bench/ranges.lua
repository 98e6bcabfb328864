-- W5 for wrk: GETs of random, block-aligned `Range`s of one file.
--   wrk -t2 -c16 -d6s -s bench/ranges.lua URL -- SIZE [BLOCK] [TOKEN]
-- Prints one JSON line at the end: requests per second, latency percentiles (ms), and the
-- count of answers that were not 2xx/3xx or failed, which must be 0 for a figure to count.
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
  table.insert(threads, thread)
end

function init(args)
  size = tonumber(args[1])
  block = tonumber(args[2] or "4096")
  token = args[3]
  -- Each thread its own sequence: two threads with one seed would ask for the same blocks.
  math.randomseed(seed * 7919 + os.time())
  blocks = math.floor(size / block)
end

function request()
  local first = math.random(0, blocks - 1) * block
  local headers = { Range = "bytes=" .. first .. "-" .. (first + block - 1) }
  if token and token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  return wrk.format("GET", nil, headers)
end

function done(summary, latency, requests)
  local e = summary.errors
  local bad = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format(
    '{"req_per_s": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "requests": %d, "errors": %d}\n',
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests, bad))
end
