-- wrk script: replay pre-signed KMS requests (raw HTTP/1.1 text) round-robin, then print one
-- machine-readable RESULT line. The request file is written by bench/presign.py just before the
-- run (a SigV4 signature is accepted for 5 minutes). Usage: KMS_REQ=FILE wrk -s kms.lua URL
local SEPARATOR = "\n--KEYTRAIL-REQUEST--\n"
local requests_ = {}
local next_index = 0

function init(args)
  local path = os.getenv("KMS_REQ") or error("KMS_REQ is not set")
  local handle = assert(io.open(path, "rb"))
  local data = handle:read("*a")
  handle:close()
  local start = 1
  while true do
    local first, last = string.find(data, SEPARATOR, start, true)
    if not first then break end
    table.insert(requests_, string.sub(data, start, first - 1))
    start = last + 1
  end
  if #requests_ == 0 then error("no requests in " .. path) end
end

function request()
  next_index = next_index % #requests_ + 1
  return requests_[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d " ..
    "status_errors=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
