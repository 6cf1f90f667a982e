-- wrk script: GET /fhir/Patient?identifier=<system>|<value> for random MRNs of the seeded store
-- ($FERRY_BENCH_SYSTEM, values $FERRY_BENCH_FIRST .. $FERRY_BENCH_FIRST + $FERRY_BENCH_COUNT - 1).
local system, first, count

function init(args)
  system = os.getenv("FERRY_BENCH_SYSTEM")
  first = tonumber(os.getenv("FERRY_BENCH_FIRST"))
  count = tonumber(os.getenv("FERRY_BENCH_COUNT"))
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

function request()
  local mrn = string.format("%06d", first + math.random(count) - 1)
  return wrk.format("GET", "/fhir/Patient?identifier=" .. system .. "%7C" .. mrn,
    { ["Accept"] = "application/fhir+json" })
end

function response(status, headers, body)
  if status ~= 200 or not body:find('"total":1,', 1, true) then
    error("status " .. status .. ": " .. body:sub(1, 200))
  end
end
