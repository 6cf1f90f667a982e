#!/usr/bin/env bash
# Outbound delivery benchmark, as recorded in BENCHMARKS.md. For SQLite and for PostgreSQL:
#   1. backlog: MESSAGES synthetic ADT^A01 (one patient each, so as many lanes) are ingested by
#      `ferry serve` (release) with delivery off: PatientAdmitted events with outbox rows for the
#      destination `his` (outbound/his_adt_a01);
#   2. drain: `ferry serve` restarted with delivery on, LANES lanes in parallel, to
#      `ferry bench sink` (a local ACKing MLLP receiver in its own process); throughput is
#      MESSAGES / time until the outbox is empty;
#   3. lag: another MESSAGES ingested while delivery runs; lag per message = ACK recorded −
#      queued (the outbox rows' finished_at − created_at), p50/p99/max.
# The peer measured in the same run: `ferry bench mllp` straight to the sink (the most this
# machine's loopback MLLP round trips allow with the same number of connections).
# Usage: benches/delivery.sh [MESSAGES] [LANES]
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-20000}
lanes=${2:-16}
work=$(mktemp -d /tmp/ferry-delivery-bench.XXXXXX)
cleanup() {
  if [ -f "$work/pids" ]; then
    while read -r p; do kill "$p" 2>/dev/null || true; done <"$work/pids"
  fi
  wait 2>/dev/null || true
  if [ -f "$work/pgdir" ]; then .ci/pg-stop "$(cat "$work/pgdir")" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --bin ferry >&2
ferry=target/release/ferry

start() { # name, what ("mllp", "sink"), then the command; prints the address it listens on
  local name=$1 what=$2; shift 2
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  echo $! >"$work/$name.pid"
  echo $! >>"$work/pids"
  for _ in $(seq 1 200); do
    if grep -q "$what listening on" "$work/$name.out"; then break; fi
    sleep 0.1
  done
  grep "$what listening on" "$work/$name.out" | head -n 1 | awk '{print $NF}'
}

stop() { # name
  kill "$(cat "$work/$1.pid")" 2>/dev/null || true
  while kill -0 "$(cat "$work/$1.pid")" 2>/dev/null; do sleep 0.1; done
}

config() { # url, sink address, delivery enabled (true/false) → config file
  local file="$work/ferry-$3.toml"
  cat >"$file" <<TOML
auth = "none"
[store]
url = "$1"
[http]
listen = "127.0.0.1:0"
[[listeners]]
type = "mllp"
name = "feed"
listen = "127.0.0.1:0"
[delivery]
enabled = $3
poll_interval_millis = 100
[[destinations]]
name = "his"
type = "mllp"
endpoint = "$2"
parallel_lanes = $lanes
[[subscriptions]]
destination = "his"
events = ["PatientAdmitted"]
mapping = "outbound/his_adt_a01"
TOML
  echo "$file"
}

pending() { # config → pending messages of "his" (0 when none are left; "?" when unreadable)
  local out
  out=$("$ferry" outbox status --json --config "$1" 2>/dev/null) || { echo "?"; return; }
  echo "$out" | awk '/"destination": "his"/ {f=1} f && /"pending"/ {gsub(/[^0-9]/, ""); print; exit}' |
    grep . || echo 0
}

now_ms() { date +%s%3N; }

lag() { # backend url → "p50 p99 max" in ms over the delivered rows queued after the backlog
  local sql
  if [[ $1 == sqlite* ]]; then
    sqlite3 "${1#sqlite://}" "SELECT (julianday(finished_at) - julianday(created_at)) * 86400000.0 \
      FROM outbox WHERE status = 'delivered' AND id > $messages ORDER BY 1"
  else
    psql -qAt "$1" -c "SELECT extract(epoch FROM finished_at - created_at) * 1000 \
      FROM outbox WHERE status = 'delivered' AND id > $messages ORDER BY 1"
  fi | awk '{v[NR]=$1} END {if (NR) printf "p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d messages)\n", v[int(NR*0.5)+1], v[int(NR*0.99)+1], v[NR], NR}'
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
echo "commit: $(git rev-parse --short HEAD)"

sink=$(start sink sink "$ferry" bench sink --listen 127.0.0.1:0 --report-every-secs 60)

bench() { # label, store url
  local label=$1 url=$2 off on addr started ended
  echo "== $label: $messages messages, $lanes lanes"
  off=$(config "$url" "$sink" false)
  addr=$(FERRY_LOG=warn start ingest mllp "$ferry" serve --config "$off")
  "$ferry" bench mllp --to "$addr" --connections 8 --messages "$messages" --vary 700001 |
    grep -E "msg/s|throughput" | sed 's/^/  backlog ingest: /'
  stop ingest
  echo "  queued: $(pending "$off")"
  on=$(config "$url" "$sink" true)
  started=$(now_ms)
  addr=$(FERRY_LOG=warn start deliver mllp "$ferry" serve --config "$on")
  while [ "$(pending "$on")" != 0 ]; do sleep 0.1; done
  ended=$(now_ms)
  echo "  drain: $messages messages in $(( ended - started )) ms (start-up included) = $(( messages * 1000 / (ended - started) )) msg/s"
  "$ferry" bench mllp --to "$addr" --connections 8 --messages "$messages" --vary 800001 |
    grep -E "msg/s|throughput" | sed 's/^/  ingest while delivering: /'
  while [ "$(pending "$on")" != 0 ]; do sleep 0.1; done
  echo "  lag (queued → ACK recorded): $(lag "$url")"
  stop deliver
}

bench "ferry, SQLite" "sqlite://$work/sqlite/ferry.db"
pg_url=$(PGDIR_FILE="$work/pgdir" .ci/pg-start)
bench "ferry, PostgreSQL 15" "$pg_url"

echo "== peer: ferry bench mllp straight to the sink, $lanes connections"
"$ferry" bench mllp --to "$sink" --connections "$lanes" --messages "$messages" | grep -E "msg/s|throughput"
