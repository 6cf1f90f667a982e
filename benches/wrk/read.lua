-- wrk script: GET /fhir/Patient/<id> over the ids in $FERRY_BENCH_IDS (one per line), round robin
-- from a per-thread random start, so reads spread over the whole store.
local ids = {}
local n = 0
local i = 0

function init(args)
  for line in io.lines(os.getenv("FERRY_BENCH_IDS")) do
    n = n + 1
    ids[n] = line
  end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  i = math.random(n)
end

function request()
  i = i % n + 1
  return wrk.format("GET", "/fhir/Patient/" .. ids[i], { ["Accept"] = "application/fhir+json" })
end

function response(status, headers, body)
  if status ~= 200 then
    error("status " .. status .. " for " .. ids[i])
  end
end
