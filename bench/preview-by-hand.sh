#!/usr/bin/env bash
# The hand-written baseline of the preview benchmark (bench/run, section 5): what a team would
# script to bring a pushed branch up as a preview without slipway.
#
#   bench/preview-by-hand.sh REPO BRANCH COMMIT DIR PORT
#
# Makes BRANCH at COMMIT in REPO (the push), exports it into DIR/src with `git archive`, starts
# its three processes with nohup (the web one on 127.0.0.1:PORT, two workers; pids in
# DIR/*.pid, logs in DIR/*.log) and returns once the web one answers. Stopping them is the
# caller's job (bench/measure.py signals the script's process group, then checks the pids).
set -euo pipefail
repo=$1 branch=$2 commit=$3 dir=$4 port=$5

git -C "$repo" branch "$branch" "$commit"
mkdir -p "$dir/src"
git -C "$repo" archive "$branch" | tar -x -C "$dir/src"
cd "$dir/src"
nohup python3 "$dir/src/app.py" --port "$port" >"$dir/web.log" 2>&1 &
echo $! >"$dir/web.pid"
for w in a b; do
    nohup python3 "$dir/src/worker.py" "$w" >"$dir/worker-$w.log" 2>&1 &
    echo $! >"$dir/worker-$w.pid"
done
for _ in $(seq 1500); do # 30 s
    if curl -fs -o /dev/null "http://127.0.0.1:$port/"; then
        exit 0
    fi
    sleep 0.02
done
echo "preview-by-hand.sh: the web process did not answer on port $port within 30 s" >&2
exit 1
