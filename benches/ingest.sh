#!/usr/bin/env bash
# End-to-end durable ingest benchmark, as recorded in BENCHMARKS.md:
#   ferry serve (release) on SQLite and on PostgreSQL, and python-hl7's asyncio MLLP server (the
#   peer, which stores nothing), each loaded by `ferry bench mllp` in the same run. Each receiver
#   runs alone, on an empty store: the one before it is stopped and its writes flushed first.
# Usage: benches/ingest.sh [MESSAGES] [CONNECTIONS]
#   ROUNDS=7 benches/ingest.sh …  runs the whole sequence 7 times (fresh stores each round, one
#   PostgreSQL cluster) and ends with each receiver's runs and median: the machine's speed moves
#   by a quarter within minutes, so one run proves little.
#   VARY=900001 benches/ingest.sh …  makes every message a new patient and visit (`--vary`): new
#   read-model resources per message instead of one patient updated over and over.
set -euo pipefail
cd "$(dirname "$0")/.."
messages=${1:-50000}
connections=${2:-8}
rounds=${ROUNDS:-1}
work=$(mktemp -d /tmp/ferry-bench.XXXXXX)
cleanup() {
  # start() runs in command substitutions (subshells), so the pids go through a file.
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

if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv" >&2
  "$work/venv/bin/pip" install -q hl7 >&2
fi

start() { # name, then the command; waits for its "listening on" line
  local name=$1; shift
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  echo $! >>"$work/pids"
  for _ in $(seq 1 100); do
    if grep -q "mllp listening on" "$work/$name.out"; then break; fi
    sleep 0.1
  done
  grep "mllp listening on" "$work/$name.out" | head -n 1 | awk '{print $NF}'
}

settle() { # stops the receiver started last, and lets what it wrote reach the disk: without this,
  # the kernel's write-back of one run's data competed with the next run's fsyncs.
  local pid
  pid=$(tail -n 1 "$work/pids")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "ingest.sh: receiver $pid still running 30 s after SIGTERM; killing it" >&2
    kill -9 "$pid" 2>/dev/null || true
  fi
  # PostgreSQL's dirty buffers, likewise, go to disk now rather than during the next run.
  if [ -n "${pg_url:-}" ]; then psql -q "$pg_url" -c CHECKPOINT; fi
  sync
}

run() { # label, address; also notes msg/s and p99 in $work/results for the summary
  echo "== $1"
  "$ferry" bench mllp --to "$2" --connections "$connections" --messages "$messages" \
    ${VARY:+--vary "$VARY"} | tee "$work/last"
  printf '%s\t%s\t%s\n' "$1" "$(grep -o '[0-9]* msg/s' "$work/last" | cut -d' ' -f1)" \
    "$(grep -o 'p99 [0-9.]* ms' "$work/last" | cut -d' ' -f2)" >>"$work/results"
}

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r)"
echo "commit: $(git rev-parse --short HEAD)"
# On a VM, how long an idle core polls before it halts decides how fast it wakes for an fsync's
# completion or a packet: on the 2-core VM of BENCHMARKS.md it moved SQLite ingest by 15-25 %.
poll=/sys/module/haltpoll/parameters/guest_halt_poll_ns
if [ -r "$poll" ]; then
  echo "cpuidle: $(cat /sys/devices/system/cpu/cpuidle/current_driver), guest_halt_poll_ns=$(cat "$poll")"
fi

for round in $(seq 1 "$rounds"); do
  if [ "$rounds" -gt 1 ]; then echo "#### round $round of $rounds, $(date -u +%H:%M:%S) UTC"; fi
  # With the shipped mappings (mappings/): every message becomes a PatientAdmitted event committed
  # with it. Then the same without mappings (messages stored unmapped), to show what mapping costs.
  sqlite_addr=$(FERRY_LOG=warn FERRY_DATABASE_URL="sqlite://$work/sqlite-$round/ferry.db" \
    FERRY_MAPPINGS_DIR=mappings \
    FERRY_MLLP_LISTEN=127.0.0.1:0 FERRY_HTTP_LISTEN=127.0.0.1:0 start "sqlite-$round" "$ferry" serve)
  run "ferry, SQLite (WAL, synchronous=FULL), mapping on" "$sqlite_addr"
  settle

  unmapped_addr=$(FERRY_LOG=warn FERRY_DATABASE_URL="sqlite://$work/sqlite-unmapped-$round/ferry.db" \
    FERRY_MAPPINGS_DIR="$work/no-mappings" \
    FERRY_MLLP_LISTEN=127.0.0.1:0 FERRY_HTTP_LISTEN=127.0.0.1:0 start "sqlite-unmapped-$round" "$ferry" serve)
  run "ferry, SQLite (WAL, synchronous=FULL), no mappings" "$unmapped_addr"
  settle

  # pg-start initialises with --no-sync for speed; the server itself runs with fsync=on and
  # synchronous_commit=on (the defaults), so every commit is durable. Each run gets a database of
  # its own, empty like the SQLite runs' files.
  if [ -z "${pg_url:-}" ]; then pg_url=$(PGDIR_FILE="$work/pgdir" .ci/pg-start); fi
  psql -q "$pg_url" -c "CREATE DATABASE ferry_mapped_$round" -c "CREATE DATABASE ferry_unmapped_$round"
  pg_addr=$(FERRY_LOG=warn FERRY_DATABASE_URL="${pg_url%/*}/ferry_mapped_$round" FERRY_MAPPINGS_DIR=mappings \
    FERRY_MLLP_LISTEN=127.0.0.1:0 FERRY_HTTP_LISTEN=127.0.0.1:0 start "postgres-$round" "$ferry" serve)
  run "ferry, PostgreSQL 15 (fsync=on, synchronous_commit=on), mapping on" "$pg_addr"
  settle

  pg_unmapped_addr=$(FERRY_LOG=warn FERRY_DATABASE_URL="${pg_url%/*}/ferry_unmapped_$round" FERRY_MAPPINGS_DIR="$work/no-mappings" \
    FERRY_MLLP_LISTEN=127.0.0.1:0 FERRY_HTTP_LISTEN=127.0.0.1:0 start "postgres-unmapped-$round" "$ferry" serve)
  run "ferry, PostgreSQL 15 (fsync=on, synchronous_commit=on), no mappings" "$pg_unmapped_addr"
  settle

  peer_addr=$(start "peer-$round" "$work/venv/bin/python" benches/peers/python_hl7_server.py 127.0.0.1 0)
  run "peer: python-hl7 asyncio MLLP server (stores nothing)" "$peer_addr"
  settle
done

if [ "$rounds" -gt 1 ]; then
  echo "#### each receiver: msg/s of every round (p99 in brackets), and the median"
  awk -F'\t' '
    !($1 in n) { order[++k] = $1 }
    { n[$1]++; v[$1, n[$1]] = $2; runs[$1] = runs[$1] sprintf(" %s (%s ms)", $2, $3) }
    END {
      for (i = 1; i <= k; i++) {
        l = order[i]; m = n[l]
        for (a = 1; a <= m; a++) s[a] = v[l, a]
        for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++) if (s[b] + 0 < s[a] + 0) { t = s[a]; s[a] = s[b]; s[b] = t }
        med = (m % 2) ? s[(m + 1) / 2] : (s[m / 2] + s[m / 2 + 1]) / 2
        printf "%s\n  runs:%s\n  median: %s msg/s\n", l, runs[l], med
      }
    }' "$work/results"
fi
