-- wrk script for benchmarks/http_front.py: one signed Stream-shaped event per POST /events.
--
-- The file named after `--` holds one "<hex HMAC-SHA256> <body>" per line, signed beforehand
-- (Lua has no HMAC). X-Webhook-Id is not signed (Stream signs the body only), so each request
-- carries a fresh one: "<thread>-<n>", never a duplicate the ingest would answer without
-- storing. Bodies repeat once the file is used up; each request is still a new delivery.

local bodies, signatures = {}, {}
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", tostring(threads))
end

function init(args)
  local file = assert(io.open(args[1], "r"))
  for line in file:lines() do
    local signature, body = line:match("^(%x+) (.*)$")
    signatures[#signatures + 1] = signature
    bodies[#bodies + 1] = body
  end
  file:close()
  sent = 0
end

function request()
  sent = sent + 1
  local index = sent % #bodies + 1
  return wrk.format("POST", "/events", {
    ["Content-Type"] = "application/json",
    ["X-Signature"] = signatures[index],
    ["X-Webhook-Id"] = "wrk-" .. thread_id .. "-" .. sent,
  }, bodies[index])
end
