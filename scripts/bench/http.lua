-- wrk script of scripts/bench/http.py: one route per wrk run, chosen by environment variables.
--
--   BENCH_ROUTE    healthz | get | upsert | reveal | list
--   BENCH_TOKEN    the API key (sent on every route, the baseline included, so requests weigh the same)
--   BENCH_SECRETS  how many secrets were seeded (names BENCH_PREFIX .. zero-padded index)
--   BENCH_WIDTH    digits of the index in a name
--   BENCH_PREFIX   prefix of the names
--   BENCH_CURSORS  for `list`: a file of cursors, one a line, `*` for the first page (no file: first page)
--   BENCH_SEED     added to the random seed
--
-- At the end it prints one line, `BENCH_JSON {...}`, with the counts and latency percentiles (µs).

local route = os.getenv("BENCH_ROUTE") or "healthz"
local token = os.getenv("BENCH_TOKEN") or ""
local count = tonumber(os.getenv("BENCH_SECRETS") or "10000")
local width = tonumber(os.getenv("BENCH_WIDTH") or "5")
local prefix = os.getenv("BENCH_PREFIX") or "bench-"
local name_format = prefix .. "%0" .. width .. "d"

local headers = {
   ["Authorization"] = "Bearer " .. token,
   ["User-Agent"] = "keyledger-bench/1 (wrk)",
   ["Accept"] = "application/json",
}
local json_headers = {
   ["Authorization"] = "Bearer " .. token,
   ["User-Agent"] = "keyledger-bench/1 (wrk)",
   ["Accept"] = "application/json",
   ["Content-Type"] = "application/json",
}

local cursors = {}
local cursor_file = os.getenv("BENCH_CURSORS")
if route == "list" and cursor_file and cursor_file ~= "" then
   local f = io.open(cursor_file, "r")
   if f then
      for line in f:lines() do
         if line ~= "" then
            cursors[#cursors + 1] = line
         end
      end
      f:close()
   end
end

math.randomseed(os.time() + tonumber(os.getenv("BENCH_SEED") or "0"))

local function random_name()
   return string.format(name_format, math.random(0, count - 1))
end

local builders = {
   healthz = function()
      return wrk.format("GET", "/healthz", headers)
   end,
   get = function()
      return wrk.format("GET", "/v1/secrets/" .. random_name(), headers)
   end,
   reveal = function()
      -- An empty body (Content-Length: 0): the reason is optional.
      return wrk.format("POST", "/v1/secrets/" .. random_name() .. "/reveal", headers, "")
   end,
   upsert = function()
      local body = string.format('{"name":"%s","value":"bench-value-%08x%08x"}', random_name(),
         math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
      return wrk.format("POST", "/v1/secrets", json_headers, body)
   end,
   list = function()
      local cursor = "*"
      if #cursors > 0 then
         cursor = cursors[math.random(1, #cursors)]
      end
      if cursor == "*" then
         return wrk.format("GET", "/v1/secrets?limit=100", headers)
      end
      return wrk.format("GET", "/v1/secrets?limit=100&cursor=" .. cursor, headers)
   end,
}

local build = builders[route]
if build == nil then
   error("unknown BENCH_ROUTE " .. route)
end

request = build

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"route":"%s","requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      route, summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end
