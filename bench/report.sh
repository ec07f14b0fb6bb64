#!/usr/bin/env bash
# Renders one bench/run.sh result (BASE.tsv, BASE.env, BASE.head.md, and BASE.idle.tsv when
# the idle-connection rows ran) as markdown on stdout:
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
      if ($1 == "nginx-lua") { lrps[$2] = rps[n]; lcpu[$2] = gcpu[n] }
    }
    function ratio(a, b) { return (b > 0) ? sprintf("%.2f", a / b) : "-" }
    END {
      # "vs nginx-lua": against the peer that does the whole job (the targets of issue 17 compare
      # nxgate-md5 with it); "-" where the run has no nginx-lua row.
      print "| row | conns | req/s | vs direct | vs nginx | vs nginx-lua | p50 ms | p99 ms | p99.9 ms | p99 over direct ms | gateway CPU s / 10k req | vs nginx CPU | vs nginx-lua CPU | gateway peak RSS MiB | upstream CPU s / 10k req | errors |"
      print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      for (i = 1; i <= n; i++) {
        if (body[i] != 1024) continue
        isdirect = (row[i] == "direct"); isnginx = (row[i] == "nginx"); islua = (row[i] == "nginx-lua")
        printf "| %s | %d | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.3f | %d |\n",
          row[i], c[i], rps[i],
          ratio(rps[i], drps[c[i]]),
          isdirect ? "-" : ratio(rps[i], nrps[c[i]]),
          (isdirect || isnginx) ? "-" : ratio(rps[i], lrps[c[i]]),
          ms(p50[i]), ms(p99[i]), ms(p999[i]),
          isdirect ? "-" : sprintf("%+.2f", (p99[i] - dp99[c[i]]) / 1000),
          isdirect ? "-" : sprintf("%.3f", gcpu[i]),
          (isdirect || isnginx) ? "-" : ratio(gcpu[i], ncpu[c[i]]),
          (isdirect || isnginx || islua) ? "-" : ratio(gcpu[i], lcpu[c[i]]),
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

if [ -s "$BASE.pairs.tsv" ] && [ "$(wc -l <"$BASE.pairs.tsv")" -gt 1 ]; then
  echo
  echo "A configured rate limit against none (\`rate_limit\` 10M/s and \`max_in_flight\` 100,000, never refusing): nxgate-md5-limits and nxgate-md5 measured in alternating pairs, the order swapped every pair; ratio = limits / none within the pair. Target: median req/s ratio at least 0.95."
  echo
  awk -F'\t' -v tck="$CLK_TCK" '
    NR == 1 { next }
    {
      split($1, p, "-"); pair = p[1]; lim = ($1 ~ /-limits$/)
      rps = $4 / ($5 / 1e6); cpu = ($4 > 0) ? ($11 / tck) / $4 * 10000 : 0
      k = $2 SUBSEP pair
      if (!(k in seen)) { seen[k] = 1; order[++n] = k }
      if (lim) { lr[k] = rps; lc[k] = cpu } else { nr[k] = rps; nc[k] = cpu }
    }
    function median(a, m,   i, j, t) {
      for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    END {
      print "| conns | pair | no limit req/s | limits req/s | req/s ratio | no limit CPU s / 10k req | limits CPU s / 10k req | CPU ratio |"
      print "|---:|---|---:|---:|---:|---:|---:|---:|"
      for (i = 1; i <= n; i++) {
        k = order[i]; split(k, kk, SUBSEP)
        r = (nr[k] > 0) ? lr[k] / nr[k] : 0; cr = (nc[k] > 0) ? lc[k] / nc[k] : 0
        printf "| %d | %s | %.0f | %.0f | %.3f | %.3f | %.3f | %.3f |\n", kk[1], kk[2], nr[k], lr[k], r, nc[k], lc[k], cr
        cnt[kk[1]]++; rr[kk[1], cnt[kk[1]]] = r; cc[kk[1], cnt[kk[1]]] = cr
        if (!(kk[1] in cseen)) { cseen[kk[1]] = 1; corder[++nc_] = kk[1] }
      }
      print ""
      print "| conns | pairs | median req/s ratio | median CPU ratio | target: req/s within 5 % |"
      print "|---:|---:|---:|---:|---|"
      for (i = 1; i <= nc_; i++) {
        c = corder[i]; delete a; delete b
        for (j = 1; j <= cnt[c]; j++) { a[j] = rr[c, j]; b[j] = cc[c, j] }
        mr = median(a, cnt[c]); mcpu = median(b, cnt[c])
        printf "| %d | %d | %.3f | %.3f | %s |\n", c, cnt[c], mr, mcpu, (mr >= 0.95) ? "met" : "missed"
      }
    }' "$BASE.pairs.tsv"
fi

if [ -s "$BASE.inflight.tsv" ]; then
  echo
  awk -F'\t' -v slow_ms="${SLOW_MS:-?}" '
    NR == 1 { next }
    { n++; line[n] = $0; split($0, f, "\t"); if (f[2] == "nginx-lua") peer = (f[10] - f[9]) / f[3] }
    END {
      printf "Requests in flight: NXCloud %s ms away (the emulator'"'"'s slow fault on every request), wrk -t1 with that many connections (1 KiB POSTs), so each caller has one request outstanding; RSS (VmRSS over the server'"'"'s processes) sampled every 0.5 s over the measured seconds, the largest sample kept; per request = (that sample - RSS before the load) / conns, covering the caller'"'"'s connection, the request and its upstream connection. Target: at most 20 KiB.\n", slow_ms
      print ""
      print "| row | server | conns | req/s | p50 ms | p99 ms | errors | RSS before KiB | RSS in flight (max) KiB | mean KiB | samples | per request KiB | vs nginx-lua | target ≤ 20 KiB |"
      print "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
      for (i = 1; i <= n; i++) {
        split(line[i], f, "\t")
        per = (f[10] - f[9]) / f[3]
        printf "| %s | %s | %d | %.0f | %.2f | %.2f | %d | %d | %d | %d | %d | %.1f | %s | %s |\n", f[1], f[2], f[3],
          (f[5] > 0) ? f[4] / (f[5] / 1e6) : 0, f[6] / 1000, f[7] / 1000, f[8], f[9], f[10], f[11], f[12], per,
          (peer > 0) ? sprintf("%.2f", per / peer) : "-", (per <= 20 && f[4] > 0) ? "met" : "missed"
      }
    }' "$BASE.inflight.tsv"
fi

[ -s "$BASE.idle.tsv" ] || exit 0
echo
awk -F'\t' -v flood_secs="${FLOOD_SECS:-?}" -v idle_secs="${IDLE_SECS:-?}" '
    NR == 1 { next }
    $1 ~ /^idle-/ { ni++; irow[ni] = $0 }
    $1 ~ /^flood-/ { nf++; frow[nf] = $0 }
    END {
      if (ni) {
        print "Idle keep-alive caller connections: each connection sends one request (1 KiB POST) and reads the answer, then stays open, idle; RSS (VmRSS over the server'"'"'s processes) read 2 s after the last answer, then again 2 s after the connections closed. Target: at most 4 KiB per connection."
        print ""
        print "| row | server | conns | answered | errors | idle RSS KiB | RSS with conns KiB | per conn KiB | target ≤ 4 KiB | RSS after close KiB |"
        print "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"
        for (i = 1; i <= ni; i++) {
          split(irow[i], f, "\t")
          per = (f[4] > 0) ? (f[7] - f[6]) / f[4] : 0
          printf "| %s | %s | %d | %d | %d | %d | %d | %.2f | %s | %d |\n", f[1], f[2], f[3], f[4], f[5], f[6], f[7], per,
            (f[4] > 0 && per <= 4) ? "met" : "missed", f[8]
        }
      }
      if (nf) {
        if (ni) print ""
        printf "Flood: wrk -t1 with that many connections for %s s (1 KiB POSTs), then RSS read again once the server has been left alone for the seconds shown. Idle RSS is the fresh instance'"'"'s, before the idle-connection row (the ratio'"'"'s base); RSS before flood is after that row. Target: RSS after / idle ≤ 1.20. (Idle and flood section: %s s.)\n", flood_secs, idle_secs
        print ""
        print "| row | server | conns | requests | errors | idle RSS KiB | RSS before flood KiB | peak RSS KiB | RSS after KiB | waited s | after / idle | target ≤ 1.20 |"
        print "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        for (i = 1; i <= nf; i++) {
          split(frow[i], f, "\t")
          r = (f[6] > 0) ? f[8] / f[6] : 0
          printf "| %s | %s | %d | %d | %d | %d | %s | %d | %d | %d | %.2f | %s |\n", f[1], f[2], f[3], f[4], f[5], f[6],
            (f[10] != "") ? f[10] : "-", f[7], f[8], f[9], r, (r > 0 && r <= 1.2) ? "met" : "missed"
        }
      }
    }' "$BASE.idle.tsv"
