#!/usr/bin/env bash
# Times one `olps worker --until-empty --batch-size 1000` over a backlog written as plain SQL:
# MODELS logistic models, EVENTS events in all (10 features each, from 1,000 names). Run it against
# a single server and a Citus coordinator back to back to compare them (docs/SCALING.md).
#
#   scripts/compare-drain.sh DATABASE_URL MODELS EVENTS
#
# It uses target/debug/olps (or OLPS=path) and a database you created for it: it deletes all
# feedback in it first.
set -euo pipefail
url=$1; models=$2; total=$3; per=$((total / models))
olps=${OLPS:-$(cd "$(dirname "$0")/.." && pwd)/target/debug/olps}
psql "$url" -qc "DELETE FROM feedback_events" >/dev/null 2>&1 || true
for i in $(seq 1 "$models"); do
  id=$(DATABASE_URL=$url "$olps" model create --name "compare-$models-$i-$RANDOM" --kind logistic 2>/dev/null | tail -1)
  psql "$url" -qc "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, metadata)
    SELECT '$id', 'e'||g, 'explicit', (g%2)::float,
      jsonb_build_object('features', (SELECT jsonb_object_agg('f'||((g*7+k*13)%1000), random())
                                      FROM generate_series(1,10) k))
    FROM generate_series(1,$per) g" >/dev/null
done
start=$(date +%s.%N)
DATABASE_URL=$url "$olps" worker --until-empty --batch-size 1000 </dev/null >/dev/null 2>&1
end=$(date +%s.%N)
pending=$(psql "$url" -Atc "SELECT count(*) FROM feedback_queue WHERE status = 'pending'")
echo "models=$models events=$total seconds=$(echo "$end - $start" | bc) events_per_s=$(echo "$total / ($end - $start)" | bc) pending_after=$pending"
