-- wrk `done` hook: one machine-readable line with the run's figures (latency in µs).
-- Scripts that rotate credentials set `sent_total()` to report how many they generated.

function done(summary, latency, requests)
  local e = summary.errors
  local sent = -1
  if sent_total ~= nil then sent = sent_total() end
  io.write(string.format(
    'WRKJSON {"duration_us":%d,"requests":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
    '"timeouts":%d,"non_2xx":%d,"sent":%d}\n',
    summary.duration, summary.requests, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, e.connect, e.read, e.write, e.timeout, e.status, sent))
end
