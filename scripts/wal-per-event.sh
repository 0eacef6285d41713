#!/usr/bin/env bash
# WAL bytes per event and drain time of one `olps worker --until-empty --batch-size B` over a
# backlog of N plain-SQL events (one logistic model, 10 features each from 10,000 names, drift
# detection off), for each feedback_events fillfactor given. WAL is read from
# pg_current_wal_lsn(), which counts every writer of the server: run it on a private cluster, e.g.
#
#   runuser -u postgres -- initdb -D /tmp/wal/pg -U postgres -A trust
#   runuser -u postgres -- pg_ctl -D /tmp/wal/pg -l /tmp/wal/log \
#       -o "-p 5499 -k /tmp/wal -c listen_addresses=127.0.0.1 -c autovacuum=off" start
#   PORT=5499 scripts/wal-per-event.sh 100 50 100 50
#
# It creates and drops databases named walexp_ff<FF> on that server. OLPS=path picks the binary
# (default target/debug/olps), so two builds can be compared in one run.
set -euo pipefail
OLPS=${OLPS:-$(cd "$(dirname "$0")/.." && pwd)/target/debug/olps}
N=${N:-50000}; B=${B:-5000}; PORT=${PORT:-5499}
SETTINGS=${SETTINGS:-'{"drift":{"detector":"none"}}'}
for ff in "$@"; do
  db=walexp_ff$ff
  psql -h 127.0.0.1 -p "$PORT" -U postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
  url=postgres://postgres@127.0.0.1:$PORT/$db
  DATABASE_URL=$url "$OLPS" migrate >/dev/null 2>&1
  psql "$url" -qc "ALTER TABLE feedback_events SET (fillfactor = $ff)"
  DATABASE_URL=$url "$OLPS" model create --name m --kind logistic --settings "$SETTINGS" >/dev/null 2>&1
  psql "$url" -qc "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, metadata)
    SELECT (SELECT model_id FROM models), 'e' || g, 'explicit', (g % 2)::float8,
           jsonb_build_object('features', (SELECT jsonb_object_agg('f' || ((g * 7 + k * 131) % 10000), k::float8 / 10)
                                           FROM generate_series(1, 10) k))
    FROM generate_series(1, $N) g"
  psql "$url" -qc "VACUUM ANALYZE" -c "CHECKPOINT"
  lsn0=$(psql "$url" -XAtc "SELECT pg_current_wal_lsn()")
  t0=$(date +%s.%N)
  DATABASE_URL=$url "$OLPS" worker --until-empty --batch-size "$B" >/dev/null 2>&1
  t1=$(date +%s.%N)
  wal=$(psql "$url" -XAtc "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')::bigint")
  left=$(psql "$url" -XAtc "SELECT count(*) FROM feedback_events WHERE NOT processed")
  stats=$(psql "$url" -XAtc "SELECT n_tup_hot_upd || ' of ' || n_tup_upd || ' updates HOT, heap '
             || pg_size_pretty(pg_table_size('feedback_events')) || ', indexes '
             || pg_size_pretty(pg_indexes_size('feedback_events'))
             FROM pg_stat_user_tables WHERE relname = 'feedback_events'")
  echo "fillfactor $ff: $N events, batch $B: $(python3 -c "print(f'{$N/($t1-$t0):.0f} ev/s, {$t1-$t0:.2f} s')"), WAL $((wal / N)) B/event, unprocessed $left; feedback_events: $stats"
  psql -h 127.0.0.1 -p "$PORT" -U postgres -qc "DROP DATABASE $db"
done
