-- Replays pre-rendered requests from a file, round robin from a random start per thread,
-- and reports status counts and latency percentiles as one JSON line (done()).
-- File format: one request per line, fields separated by \x1e:
--   METHOD \x1e PATH \x1e Name: value\x1fName: value \x1e BODY
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local function split(text, sep)
  local out, start = {}, 1
  while true do
    local i = string.find(text, sep, start, true)
    if not i then table.insert(out, string.sub(text, start)); return out end
    table.insert(out, string.sub(text, start, i - 1))
    start = i + #sep
  end
end

function init(args)
  counts = {}
  requests_ = {}
  for line in io.lines(args[1]) do
    local f = split(line, "\30")
    local headers = {}
    if f[3] and #f[3] > 0 then
      for _, h in ipairs(split(f[3], "\31")) do
        local name, value = string.match(h, "^([^:]+): (.*)$")
        if name then headers[name] = value end
      end
    end
    local body = f[4]
    if body == "" then body = nil end
    table.insert(requests_, wrk.format(f[1], f[2], headers, body))
  end
  index = math.random(#requests_)
end

function request()
  index = index % #requests_ + 1
  return requests_[index]
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(total) do table.insert(parts, string.format('"%d":%d', status, n)) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"socket_errors":%d,"status":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, table.concat(parts, ",")))
end
