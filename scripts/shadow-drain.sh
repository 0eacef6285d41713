#!/bin/bash
# Focused timing (docs/BENCHMARKS.md, "Shadow models"): a champion's drain with and without one
# challenger, in the same run on the same server. Creates and drops a database of its own.
# Usage: N=50000 scripts/shadow-drain.sh   (OLPS=path/to/olps, ADMIN_URL=postgres://…/postgres)
set -e
OLPS=${OLPS:-target/debug/olps}
ADMIN=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=olps_shadow_bench_$$
psql "$ADMIN" -qXc "CREATE DATABASE $DB"
trap 'psql "$ADMIN" -qXc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"' EXIT
export DATABASE_URL="${ADMIN%/*}/$DB" OLPS_LOG=warn
N=${N:-50000}
$OLPS migrate >/dev/null
load() { # model: N explicit events, 10 features from a pool of 1000, deterministic
  psql "$DATABASE_URL" -qX <<SQL
INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, metadata)
SELECT m.model_id, 'e' || i, 'explicit', (i % 7) / 7.0,
       jsonb_build_object('features', (SELECT jsonb_object_agg('f' || ((i * 37 + k * 101) % 1000), ((i + k) % 13) / 13.0)
                                       FROM generate_series(1, 10) k))
FROM generate_series(1, $N) i, models m WHERE m.name = '$1';
ANALYZE;
SQL
}
drain() { # worker over the given models; prints seconds
  local args=(); for m in "$@"; do args+=(--model "$m"); done
  local t0=$(date +%s.%N)
  $OLPS worker --until-empty --batch-size 1000 "${args[@]}" >/dev/null 2>&1
  echo "$(date +%s.%N) - $t0" | bc
}
for round in 1 2; do
  $OLPS model create --name plain$round --kind linear >/dev/null
  $OLPS model create --name champ$round --kind linear >/dev/null
  $OLPS model create --name chall$round --kind linear --optimizer adam >/dev/null
  $OLPS model challenger add --model champ$round --challenger chall$round >/dev/null
  load plain$round; a=$(drain plain$round)
  load champ$round; b=$(drain champ$round)
  c=$(drain chall$round)
  copies=$(psql "$DATABASE_URL" -tAXc "SELECT count(*) FROM feedback_events e JOIN models m USING (model_id) WHERE m.name = 'chall$round' AND processed")
  echo "round $round: N=$N  no challenger: ${a}s  with one challenger (champion's drain, copies included): ${b}s  challenger's own drain of its $copies copies: ${c}s"
done
