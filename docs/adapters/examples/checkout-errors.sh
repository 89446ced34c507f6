#!/usr/bin/env bash
# immunity `command` signal: checkout attempts and failures of one cohort, from a plain
# access log with lines "<unix seconds> <host> <path> <status> <latency ms>".
# immunity passes the cohort in IMMUNITY_HOSTS (comma-separated names) and the window in
# IMMUNITY_START_EPOCH / IMMUNITY_END_EPOCH; we print one JSON object on stdout.
set -euo pipefail
log=${CHECKOUT_LOG:-/var/log/shop/access.log}
[ -r "$log" ] || { echo "cannot read $log" >&2; exit 1; }
awk -v hosts="$IMMUNITY_HOSTS" -v start="$IMMUNITY_START_EPOCH" -v end="$IMMUNITY_END_EPOCH" '
  BEGIN { n = split(hosts, h, ","); for (i = 1; i <= n; i++) want[h[i]] = 1 }
  $1 >= start && $1 < end && ($2 in want) && $3 == "/checkout" {
    requests++
    if ($4 >= 500 || $4 == 402) errors++        # 402: payment declined by our own bug
  }
  END { printf "{\"requests\": %d, \"errors\": %d}\n", requests, errors }
' "$log"
