#!/usr/bin/env bash
# The writer's ceiling on `checkouts`, the unpartitioned table (migration 0001
# alone) against the partitioned one (0001-0004 and today's partition): ROUNDS
# rounds, order alternating, each one 200 binary COPY batches of 5,000 rows in
# one transaction each with synchronous_commit off, as the writer commits them
# (1,000,000 rows). Prints rows/s (wall) and the backend's CPU (user+system from
# /proc, so other databases' work is not counted) per run, then the medians.
#
#   ROUNDS=12 bash bench/checkouts_copy_compare.sh
#
# Needs Postgres on PG_PORT (user flashsale, may create databases) on this host.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
ROUNDS="${ROUNDS:-12}"
PG_PORT="${PG_PORT:-5432}"
U="postgres://flashsale@127.0.0.1:$PG_PORT"
WORK="$(mktemp -d /tmp/checkouts_copy.XXXXXX)"
trap 'rm -rf "$WORK"; psql -qX "$U/postgres" -c "DROP DATABASE IF EXISTS fscopy_plain WITH (FORCE)" -c "DROP DATABASE IF EXISTS fscopy_part WITH (FORCE)" >/dev/null 2>&1' EXIT

for db in fscopy_plain fscopy_part; do
  psql -qX "$U/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" 2>/dev/null
  psql -qX "$U/$db" -f "$ROOT/migrations/0001_init.sql"
done
for m in 0002_checkouts_bound 0003_checkouts_bound_validate 0004_checkouts_partitioned; do
  psql -qX "$U/fscopy_part" -f "$ROOT/migrations/$m.sql"
done
psql -qX "$U/fscopy_part" -c "CREATE TABLE checkouts_today PARTITION OF checkouts FOR VALUES
  FROM (date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
  TO ((date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC')"

# 5,000 rows like the crowd's: random users and items, a third with a code
psql -qX "$U/fscopy_plain" -c "\copy (SELECT 7::bigint, (random() * 1e6)::bigint,
  7000000 + (random() * 9999)::bigint, CASE WHEN g % 3 = 0 THEN md5(g::text) || md5(g::text) END,
  (ARRAY['ok', 'item_sold', 'limit_reached', 'item_not_found'])[1 + g % 4], now()
  FROM generate_series(1, 5000) g) TO '$WORK/rows.bin' WITH (FORMAT binary)"
{
  echo "SET synchronous_commit = off;"
  echo "SELECT pg_backend_pid() AS pid \\gset"
  for _ in $(seq 200); do echo "\\copy checkouts FROM '$WORK/rows.bin' WITH (FORMAT binary)"; done
  echo "\\setenv BACKEND_PID :pid"
  echo "\\! cut -d')' -f2- /proc/\$BACKEND_PID/stat | awk '{print \$12 + \$13}'"
} >"$WORK/copy.sql"

HZ="$(getconf CLK_TCK)"
one() { # table-kind round
  local db=fscopy_$1 t0 t1 ticks rows
  psql -qX "$U/$db" -c "TRUNCATE checkouts" >/dev/null
  t0="$(date +%s.%N)"
  ticks="$(psql -qX "$U/$db" -f "$WORK/copy.sql" | tail -n 1)"
  t1="$(date +%s.%N)"
  rows="$(psql -qXAt "$U/$db" -c "SELECT count(*) FROM checkouts")"
  python3 -c "import sys; k, r, n, a, b, t, hz = sys.argv[1:]; s = float(b) - float(a); print(f'{k}\t{r}\t{n}\t{s:.2f}\t{int(n) / s:.0f}\t{int(t) / int(hz):.2f}')" \
    "$1" "$2" "$rows" "$t0" "$t1" "$ticks" "$HZ"
}

printf 'table\tround\trows\tsecs\trows_per_s\tbackend_cpu_s\n' | tee "$WORK/runs.tsv"
for r in $(seq "$ROUNDS"); do
  if ((r % 2)); then order=(plain part); else order=(part plain); fi
  for k in "${order[@]}"; do one "$k" "$r" | tee -a "$WORK/runs.tsv"; done
done
python3 - "$WORK/runs.tsv" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda k, f: statistics.median(float(r[f]) for r in rows if r["table"] == k)
p, q = med("plain", "rows_per_s"), med("part", "rows_per_s")
c, d = med("plain", "backend_cpu_s"), med("part", "backend_cpu_s")
print(f"median rows/s: plain {p:.0f}, partitioned {q:.0f}, ratio {q / p:.3f}")
print(f"median backend CPU per 1M rows: plain {c:.2f} s, partitioned {d:.2f} s, ratio {d / c:.3f}")
EOF
