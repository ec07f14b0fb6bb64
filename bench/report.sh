#!/usr/bin/env bash
# Renders one bench/run.sh result (BASE.tsv, BASE.env, BASE.head.md) as markdown on stdout:
#   bash bench/report.sh bench/results/latest
set -euo pipefail
BASE=$1
# shellcheck disable=SC1090
source "$BASE.env"
cat "$BASE.head.md"
echo
awk -F'\t' -v tck="$CLK_TCK" -v big_idle="$BIG_IDLE_KIB" -v max_req="$MAX_REQ" -v max_resp="$MAX_RESP" -v conn_buf="$CONN_BUF" '
    function ms(us) { return sprintf("%.2f", us / 1000) }
    NR == 1 { next }
    {
      n++; row[n] = $1; c[n] = $2; body[n] = $3; req[n] = $4; rps[n] = $4 / ($5 / 1e6)
      p50[n] = $6; p99[n] = $7; p999[n] = $8; err[n] = $10
      gcpu[n] = ($4 > 0) ? ($11 / tck) / $4 * 10000 : 0; hwm[n] = $12 / 1024
      ucpu[n] = ($4 > 0) ? ($13 / tck) / $4 * 10000 : 0
      if ($1 == "direct") { drps[$2] = rps[n]; dp99[$2] = $7 }
      if ($1 == "nginx") { nrps[$2] = rps[n]; np99[$2] = $7; ncpu[$2] = gcpu[n] }
    }
    END {
      print "| row | conns | req/s | vs direct | vs nginx | p50 ms | p99 ms | p99.9 ms | p99 over direct ms | gateway CPU s / 10k req | vs nginx CPU | gateway peak RSS MiB | upstream CPU s / 10k req | errors |"
      print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      for (i = 1; i <= n; i++) {
        if (body[i] != 1024) continue
        isdirect = (row[i] == "direct"); isnginx = (row[i] == "nginx")
        printf "| %s | %d | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.3f | %d |\n",
          row[i], c[i], rps[i],
          sprintf("%.2f", rps[i] / drps[c[i]]),
          isdirect ? "-" : sprintf("%.2f", rps[i] / nrps[c[i]]),
          ms(p50[i]), ms(p99[i]), ms(p999[i]),
          isdirect ? "-" : sprintf("%+.2f", (p99[i] - dp99[c[i]]) / 1000),
          isdirect ? "-" : sprintf("%.3f", gcpu[i]),
          (isdirect || isnginx) ? "-" : sprintf("%.2f", gcpu[i] / ncpu[c[i]]),
          isdirect ? "-" : sprintf("%.1f", hwm[i]),
          ucpu[i], err[i]
      }
      hdr = 0
      for (i = 1; i <= n; i++) {
        if (body[i] == 1024) continue
        if (!hdr) {
          print ""
          printf "Memory with %d-byte bodies (limits: max_request_body_bytes %d, max_response_body_bytes %d; fixed buffers per connection %d; idle RSS %.1f MiB):\n\n", body[i], max_req, max_resp, conn_buf, big_idle / 1024
          print "| row | conns | req/s | p50 ms | p99 ms | gateway peak RSS MiB | (peak - idle) / conns MiB | bound: idle + conns x (max_request + max_response + fixed buffers) MiB | peak / bound | errors |"
          print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
          hdr = 1
        }
        bound = big_idle / 1024 + c[i] * (max_req + max_resp + conn_buf) / 1048576
        printf "| %s | %d | %.0f | %s | %s | %.1f | %.2f | %.1f | %.2f | %d |\n", row[i], c[i], rps[i], ms(p50[i]), ms(p99[i]), hwm[i], (hwm[i] - big_idle / 1024) / c[i], bound, hwm[i] / bound, err[i]
      }
    }' "$BASE.tsv"
