-- wrk script of ess_bench: POSTs JSON with a unique id per request, counts 2xx answers, and
-- prints one line "WRK_RESULT {...}" (JSON) at the end.
--
--   wrk -t2 -c64 -d10s -s post.lua URL -- KIND PREFIX [SIGNATURES]
--
-- KIND "webhook": {"id":"PREFIX-T-N","status":"confirmed"}      (a partner's callback)
-- KIND "partner": {"id":"PREFIX-T-N","inmate":"A123","slot":...} (what the outbound lane sends)
--
-- SIGNATURES: webhooks are signed (Standard Webhooks). wrk's Lua has no HMAC, so ess_bench
-- writes, per thread T, the file SIGNATURES-T whose line N is "TIMESTAMP v1,..." for request N;
-- the request carries webhook-id PREFIX-T-N, webhook-timestamp and webhook-signature.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  kind = args[1] or "webhook"
  prefix = (args[2] or "WRK") .. "-" .. tid .. "-"
  n = 0
  ok = 0
  bad = 0
  headers = { ["Content-Type"] = "application/json" }
  signatures = nil
  if args[3] then
    signatures = {}
    for line in io.lines(args[3] .. "-" .. tid) do
      table.insert(signatures, line)
    end
  end
end

function request()
  n = n + 1
  local body
  if kind == "partner" then
    body = '{"id":"' .. prefix .. n ..
        '","inmate":"A123","slot":"2026-12-01T15:00:00Z","sentNs":0}'
  else
    body = '{"id":"' .. prefix .. n .. '","status":"confirmed"}'
    local signed = signatures and signatures[n]
    if signed then
      local space = string.find(signed, " ", 1, true)
      headers["webhook-id"] = prefix .. n
      headers["webhook-timestamp"] = string.sub(signed, 1, space - 1)
      headers["webhook-signature"] = string.sub(signed, space + 1)
    else  -- past the signatures written for the run: unsigned (answered 401, counted non-2xx)
      headers["webhook-id"] = nil
      headers["webhook-timestamp"] = nil
      headers["webhook-signature"] = nil
    end
  end
  return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, body)
  if status >= 200 and status < 300 then
    ok = ok + 1
  else
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local ok_total, bad_total = 0, 0
  for _, t in ipairs(threads) do
    ok_total = ok_total + t:get("ok")
    bad_total = bad_total + t:get("bad")
  end
  local e = summary.errors
  io.write(string.format(
      'WRK_RESULT {"requests":%d,"duration_us":%d,"ok":%d,"non2xx":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
      '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"mean":%.1f,"max":%d}}\n',
      summary.requests, summary.duration, ok_total, bad_total,
      e.connect, e.read, e.write, e.timeout, e.status,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.mean, latency.max))
end
