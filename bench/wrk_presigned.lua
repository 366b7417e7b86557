-- wrk driving pre-signed requests (written by portcullis-loadgen --wrk): each request is
-- sent once, in order, by one thread (`wrk -t1`: a second thread would repeat the first's
-- ids, duplicates answered 200). Past the end of the file the requests repeat, and the
-- repeats show up as statuses other than 202.
local requests, count, next_index = {}, 0, 0
statuses = {}

function init(args)
  local file = assert(io.open(os.getenv("WRK_REQUESTS"), "rb"))
  local all = file:read("*a")
  file:close()
  for raw in all:gmatch("([^%z]+)%z") do
    count = count + 1
    requests[count] = raw
  end
end

function request()
  next_index = next_index % count + 1
  return requests[next_index]
end

function response(status)
  statuses[status] = (statuses[status] or 0) + 1
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, _)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local codes = {}
  for status, n in pairs(merged) do
    table.insert(codes, status .. ":" .. n)
  end
  table.sort(codes)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format("WRK requests=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f p999_ms=%.2f statuses=%s socket_errors=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    table.concat(codes, ","), errors))
end
