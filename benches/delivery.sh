#!/usr/bin/env bash
# Outbound delivery benchmark, as recorded in BENCHMARKS.md. For SQLite and for PostgreSQL, with
# `ferry serve` (release) delivering to `ferry bench sink` (a local ACKing MLLP receiver in its own
# process) over LANES parallel lanes:
#   1. 16 lanes: MESSAGES synthetic ADT^A01 for 16 patients (so 16 lanes) are ingested with
#      delivery off (PatientAdmitted events with outbox rows for `his`, outbound/his_adt_a01),
#      then Ferry is restarted with delivery on; throughput = MESSAGES / time to an empty outbox
#      (start-up included);
#   2. lag: another MESSAGES for the same 16 patients ingested while delivery runs; lag per message
#      = ACK recorded − queued (the outbox rows' finished_at − created_at), p50/p99/max;
#   3. every message its own patient (MESSAGES lanes of one message each: the most per-lane
#      overhead), drained as in 1.
# The peer measured in the same run: `ferry bench mllp` straight to the sink over LANES
# connections (what loopback MLLP round trips to that receiver allow at all).
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

span() { # store url, first id, last id → ms from the first to the last ACK recorded of those rows
  if [[ $1 == sqlite* ]]; then
    sqlite3 "${1#sqlite://}" "SELECT CAST((julianday(max(finished_at)) - julianday(min(finished_at))) \
      * 86400000 AS INTEGER) FROM outbox WHERE id BETWEEN $2 AND $3"
  else
    psql -qAt "$1" -c "SELECT (extract(epoch FROM max(finished_at) - min(finished_at)) * 1000)::bigint \
      FROM outbox WHERE id BETWEEN $2 AND $3"
  fi
}

lag() { # backend url → "p50 p99 max" in ms over the delivered rows queued after the backlog
  local sql
  if [[ $1 == sqlite* ]]; then
    sqlite3 "${1#sqlite://}" "SELECT (julianday(finished_at) - julianday(created_at)) * 86400000.0 \
      FROM outbox WHERE status = 'delivered' AND id > $messages AND id <= 2 * $messages ORDER BY 1"
  else
    psql -qAt "$1" -c "SELECT extract(epoch FROM finished_at - created_at) * 1000 \
      FROM outbox WHERE status = 'delivered' AND id > $messages AND id <= 2 * $messages ORDER BY 1"
  fi | awk '{v[NR]=$1} END {if (NR) printf "p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d messages)\n", v[int(NR*0.5)+1], v[int(NR*0.99)+1], v[NR], NR}'
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
echo "commit: $(git rev-parse --short HEAD)"

sink=$(start sink sink "$ferry" bench sink --listen 127.0.0.1:0 --report-every-secs 60)

# 16 patients: the synthetic A01 with 16 different MRNs and visit numbers.
mkdir -p "$work/corpus16"
for i in $(seq 10 25); do
  printf 'MSH|^~\\&|LOADGEN|FERRY-LAB|FERRY|GW|20261122083000||ADT^A01^ADT_A01|TEMPLATE|P|2.5.1|||AL|NE||UNICODE UTF-8\rEVN|A01|20261122083000\rPID|1||9000%s^^^FERRY&1.2.3.4&ISO^MR||Testpatient^Alex^J^^^^L||19800101|U\rPV1|1|I|WARD1^101^A^FERRY||||1234^Doctor^Dana^^^^MD|||MED||||7|||1234^Doctor^Dana^^^^MD|IN|V9000%s|||||||||||||||||||||||||20261122080000\r' \
    "$i" "$i" >"$work/corpus16/p$i.hl7"
done

ingest() { # address, what ("16" or "many"), label
  local load
  if [ "$2" = 16 ]; then load=(--corpus "$work/corpus16"); else load=(--vary 900001); fi
  "$ferry" bench mllp --to "$1" --connections 8 --messages "$messages" "${load[@]}" 2>/dev/null |
    grep "msg/s" | sed "s/^/  $3: /"
}

drain() { # config, url, first id, label: starts the delivering Ferry ("deliver"), waits for an
  # empty outbox; reports the first-to-last-ACK time and, in brackets, the time with start-up
  local started ended took
  started=$(now_ms)
  FERRY_LOG=warn start deliver mllp "$ferry" serve --config "$1" >/dev/null
  while [ "$(pending "$1")" != 0 ]; do sleep 0.1; done
  ended=$(now_ms)
  took=$(span "$2" "$3" $(( $3 + messages - 1 )))
  echo "  $4: $messages messages in $took ms = $(( messages * 1000 / took )) msg/s (first to last ACK; $(( ended - started )) ms with start-up = $(( messages * 1000 / (ended - started) )) msg/s)"
}

bench() { # label, store url
  local label=$1 url=$2 off on addr
  echo "== $label: $messages messages, $lanes lanes"
  off=$(config "$url" "$sink" false)
  on=$(config "$url" "$sink" true)
  addr=$(FERRY_LOG=warn start ingest mllp "$ferry" serve --config "$off")
  ingest "$addr" 16 "backlog ingest, 16 patients"
  stop ingest
  echo "  queued: $(pending "$off")"
  drain "$on" "$url" 1 "drain, 16 lanes"
  addr=$(grep "mllp listening on" "$work/deliver.out" | head -n 1 | awk '{print $NF}')
  ingest "$addr" 16 "ingest while delivering"
  while [ "$(pending "$on")" != 0 ]; do sleep 0.1; done
  echo "  lag (queued → ACK recorded): $(lag "$url")"
  stop deliver
  addr=$(FERRY_LOG=warn start ingest mllp "$ferry" serve --config "$off")
  ingest "$addr" many "backlog ingest, one patient per message"
  stop ingest
  echo "  queued: $(pending "$off")"
  drain "$on" "$url" $(( 2 * messages + 1 )) "drain, one-message lanes"
  stop deliver
}

bench "ferry, SQLite" "sqlite://$work/sqlite/ferry.db"
pg_url=$(PGDIR_FILE="$work/pgdir" .ci/pg-start)
bench "ferry, PostgreSQL 15" "$pg_url"

echo "== peer: ferry bench mllp straight to the sink, $lanes connections"
"$ferry" bench mllp --to "$sink" --connections "$lanes" --messages "$messages" | grep -E "msg/s|throughput"
