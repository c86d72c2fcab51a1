-- wrk script for `make bench`.
--
-- Usage: wrk ... -s bench/wrk.lua URL -- PATH [TOKENS_FILE]
--   PATH         the request path with its query string
--   TOKENS_FILE  request tokens, one a line: each request carries the next one as
--                `Authorization: Bearer <token>`, so every connection goes through them all
--
-- done() prints one line `BENCH_RESULT {json}` with the counts and latency percentiles
-- (microseconds) that bench/load.py parses. Non-2xx answers are counted here, because wrk
-- itself only counts statuses above 399.

local threads = {}
local prepared = {}
local next_index = 0
non2xx = 0

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function init(args)
  local path = args[1] or wrk.path
  local tokens_file = args[2]
  if tokens_file then
    for line in io.lines(tokens_file) do
      if #line > 0 then
        local headers = { Authorization = "Bearer " .. line }
        table.insert(prepared, wrk.format("GET", path, headers))
      end
    end
  end
  if #prepared == 0 then
    prepared[1] = wrk.format("GET", path, {})
  end
  -- Threads start at different tokens.
  next_index = (thread_index or 0) % #prepared
end

function request()
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d,' ..
    '"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, bad,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end
