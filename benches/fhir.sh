#!/usr/bin/env bash
# FHIR read benchmark, as recorded in BENCHMARKS.md: a store of PATIENTS patients (seeded over
# MLLP with the synthetic ADT^A01, one distinct MRN and visit each), then wrk on loopback:
#   * Patient read by id (benches/wrk/read.lua),
#   * Patient search by identifier (benches/wrk/search.lua),
#   * the peer: `ferry bench http-peer`, a minimal axum handler returning a fixed Patient JSON,
#     measured in the same run as the ceiling.
# Usage: benches/fhir.sh [PATIENTS] [SECONDS] [CONNECTIONS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
patients=${1:-100000}
seconds=${2:-20}
connections=${3:-16}
threads=${4:-2}
work=$(mktemp -d /tmp/ferry-fhir-bench.XXXXXX)
cleanup() {
  if [ -f "$work/pids" ]; then
    while read -r p; do kill "$p" 2>/dev/null || true; done <"$work/pids"
  fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
command -v wrk >/dev/null || { echo "fhir.sh: wrk is missing (apt-get install wrk)" >&2; exit 1; }

cargo build --release --bin ferry >&2
ferry=target/release/ferry

start() { # name, what to wait for ("mllp" or "http"), then the command; prints that address
  local name=$1 what=$2; shift 2
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  echo $! >>"$work/pids"
  for _ in $(seq 1 200); do
    if grep -q "$what listening on" "$work/$name.out"; then break; fi
    sleep 0.1
  done
  grep "$what listening on" "$work/$name.out" | head -n 1 | awk '{print $NF}'
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
echo "commit: $(git rev-parse --short HEAD)"

export FERRY_LOG=warn FERRY_DATABASE_URL="sqlite://$work/ferry.db" FERRY_MAPPINGS_DIR=mappings \
  FERRY_MLLP_LISTEN=127.0.0.1:0 FERRY_HTTP_LISTEN=127.0.0.1:0
start ferry mllp "$ferry" serve >/dev/null
mllp=$(grep "mllp listening on" "$work/ferry.out" | awk '{print $NF}')
http=$(grep "http listening on" "$work/ferry.out" | awk '{print $NF}')

echo "== seeding $patients patients over MLLP"
"$ferry" bench mllp --to "$mllp" --connections 8 --messages "$patients" --vary 900001

# Ids to read: 20,000 of them, spread over the store.
python3 - "$http" "$work/ids" <<'PY'
import json, sys, urllib.request
base, out = sys.argv[1], sys.argv[2]
ids, url = [], f"http://{base}/fhir/Patient?_count=1000"
while url and len(ids) < 20000:
    bundle = json.load(urllib.request.urlopen(url))
    ids += [e["resource"]["id"] for e in bundle.get("entry", [])]
    url = next((l["url"] for l in bundle["link"] if l["relation"] == "next"), None)
    if url:
        url = url.replace("http://" + url.split("/")[2], "http://" + base)
open(out, "w").write("\n".join(ids) + "\n")
print(f"{len(ids)} ids to read; store total", bundle["total"])
PY

bench() { # label, url, script
  echo "== $1"
  FERRY_BENCH_IDS="$work/ids" FERRY_BENCH_SYSTEM="urn:ferry:authority:FERRY" \
    FERRY_BENCH_FIRST=900001 FERRY_BENCH_COUNT="$patients" \
    wrk --latency -t "$threads" -c "$connections" -d "${seconds}s" -s "$3" "$2" \
    | grep -E "Requests/sec|Latency|50%|99%|requests in|Non-2xx|errors"
}

bench "ferry: Patient read by id" "http://$http" benches/wrk/read.lua
bench "ferry: Patient search by identifier" "http://$http" benches/wrk/search.lua
peer=$(start peer http "$ferry" bench http-peer)
bench "peer: minimal axum handler, fixed JSON body" "http://$peer" benches/wrk/read.lua
