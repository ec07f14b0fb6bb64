-- wrk script: POST a JSON body of BODY_BYTES bytes (default 1024) to the URL given to wrk,
-- with `Authorization: Bearer $CLIENT_KEY` (when set), and print one machine-readable
-- RESULT line at the end (latencies in microseconds, from wrk's own histogram).
local size = tonumber(os.getenv("BODY_BYTES") or "1024")
local key = os.getenv("CLIENT_KEY") or ""
local head, tail = '{"data":"', '"}'
wrk.method = "POST"
wrk.body = head .. string.rep("x", size - #head - #tail) .. tail
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d p999_us=%d max_us=%d mean_us=%.1f "
      .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
