#!/usr/bin/env bash
# Records `upak redis monitor` in tmux against a private redis-server under load, and writes
# the captured screen to docs/ops/monitor-capture.txt. Run from the repository root.
set -euo pipefail
PORT=${PORT:-16479}
WORK=$(mktemp -d)
APP_PORT=${APP_PORT:-18479}
trap 'kill "${APP_PID:-0}" 2>/dev/null || true; tmux kill-session -t upak-monitor 2>/dev/null || true; redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
redis-server --port "$PORT" --bind 127.0.0.1 --dir "$WORK" --save '' --maxmemory 64mb \
  --maxmemory-policy noeviction --daemonize yes --logfile "$WORK/redis.log"
sleep 0.5
# Some UPAK-shaped keys, then steady traffic with hits and misses.
.venv/bin/python - "$PORT" <<'PY'
import sys, redis
r = redis.Redis(port=int(sys.argv[1]))
p = r.pipeline(transaction=False)
for i in range(300): p.set(f"upak:replay:yk:{i}", 1, ex=3600)
for i in range(120): p.set(f"upak:sessions:{{u{i}}}:s", "x" * 200, ex=86400)
for i in range(800): p.set(f"upak:ratelimit:ip:10.0.{i // 250}.{i % 250}", i, ex=60)
for i in range(50): p.set(f"upak:cache:plans:{i}", "y" * 500, ex=300)
p.execute()
PY
( .venv/bin/python - "$PORT" <<'PY'
import sys, time, redis
r = redis.Redis(port=int(sys.argv[1]))
end = time.time() + 8
i = 0
while time.time() < end:
    p = r.pipeline(transaction=False)
    for j in range(200):
        p.get(f"upak:cache:plans:{(i + j) % 70}")
        p.incr(f"upak:ratelimit:ip:10.0.0.{j % 250}")
    p.execute(); i += 1; time.sleep(0.01)
PY
) &
LOAD_PID=$!
# The service itself, so the dashboard shows its /health store mode.
(cd "$WORK" && REDIS_URL=redis://127.0.0.1:$PORT/0 exec "$OLDPWD/.venv/bin/upak" serve --port "$APP_PORT" \
  >"$WORK/app.log" 2>&1) &
APP_PID=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$APP_PORT/health" >/dev/null && break; sleep 0.2; done
tmux new-session -d -s upak-monitor -x 100 -y 24 \
  "REDIS_URL=redis://127.0.0.1:$PORT/0 .venv/bin/upak redis --env-file /nonexistent monitor --app http://127.0.0.1:$APP_PORT"
sleep 5
tmux capture-pane -p -t upak-monitor > docs/ops/monitor-capture.txt
wait "$LOAD_PID"
echo "wrote docs/ops/monitor-capture.txt"
