#!/usr/bin/env bash
# Usage: benches/scripts/demo_cpu_per_txn.sh BINARY DIR LABEL — runs `BINARY demo` in DIR, then pgbench SELECT 1 at -c 1 (fixed count)
# and -S -c 8 through acme (the demo pool holds 10), printing Sluice's CPU µs per transaction and pgbench's latency/TPS.
set -euo pipefail
bin=$1; dir=$2; label=$3
"$bin" demo --dir "$dir" --listen 127.0.0.1:0 > "$dir.out" 2>/dev/null &
pid=$!
for i in $(seq 1 100); do grep -q "listening on" "$dir.out" 2>/dev/null && break; sleep 0.2; done
conn=$(python3 -c "import json;d=json.load(open('$dir/demo.json'));t=d['tenants'][0];print(t['connection_string'].replace('verify-full','require'))")
pw=$(python3 -c "import json;d=json.load(open('$dir/demo.json'));print(d['tenants'][0]['password'])")
echo 'SELECT 1;' > /tmp/select1.sql
ticks() { awk '{print $14+$15}' /proc/$pid/stat; }
hz=$(getconf CLK_TCK)
PGPASSWORD=$pw pgbench -i -s 1 -q "$conn" >/dev/null 2>&1 || true
for run in 1 2; do
  t0=$(ticks)
  out=$(PGPASSWORD=$pw pgbench -n -c 1 -t 20000 -M simple -f /tmp/select1.sql "$conn" 2>&1)
  t1=$(ticks)
  lat=$(echo "$out" | grep "latency average" | awk '{print $4}')
  echo "$label c1 run$run: latency avg ${lat} ms, sluice CPU $(( (t1-t0)*1000000/hz/20000 )) us/txn"
done
t0=$(ticks)
out=$(PGPASSWORD=$pw pgbench -n -S -c 8 -j 2 -T 8 "$conn" 2>&1)
t1=$(ticks)
n=$(echo "$out" | grep "actually processed" | awk '{print $NF}')
tps=$(echo "$out" | grep "^tps" | awk '{print $3}')
echo "$label S c8: tps $tps, sluice CPU $(( (t1-t0)*1000000/hz/n )) us/txn"
kill -INT $pid; wait $pid || true
