-- wrk driving pre-signed requests (written by portcullis-loadgen --wrk): each request is
-- sent once, in order, by one thread (`wrk -t1`: a second thread would repeat the first's
-- ids, duplicates answered 200). Past the end of the file the requests repeat (loadgen warns).
--
-- There is deliberately no `response()` callback. With one, wrk hands every response's
-- headers and body to LuaJIT, which interns every string; the gateway's answers are unique
-- (x-request-id, the event id in the body), so LuaJIT's string table keeps growing, and each
-- time it doubles wrk stalls for ~50 ms rehashing it along with the requests held here. wrk's
-- coordinated-omission correction (`stats_correct`) then turns that one client-side stall into
-- ~1.5% of the samples: a p99 of 20-120 ms that no packet on the wire showed (bench/RESULTS.md,
-- 2026-12-03). Statuses are therefore counted as wrk counts them: 4xx/5xx against the rest.
local requests, count, next_index = {}, 0, 0

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

function done(summary, latency, _)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  local failed = summary.errors.status
  io.write(string.format("WRK requests=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f p999_ms=%.2f statuses=below400:%d,400up:%d socket_errors=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    summary.requests - failed, failed, errors))
end
