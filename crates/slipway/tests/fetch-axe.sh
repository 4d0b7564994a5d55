#!/usr/bin/env bash
# Fetches axe-core, Deque's accessibility engine, which the UI tests run in Chromium on every
# page (WCAG 2.1 A and AA rules). It is an npm package, not committed: the tests run this once
# per target directory and read DIR/axe.min.js.
#
# Usage: fetch-axe.sh DIR   (the tests use <target dir>/axe-core)
# Needs npm and access to the npm registry. Exits at once when DIR already holds this version.
set -euo pipefail

AXE_CORE=4.14.1

dest="${1:?usage: fetch-axe.sh DIR}"
stamp="axe-core@$AXE_CORE"
if [ -f "$dest/STAMP" ] && [ "$(cat "$dest/STAMP")" = "$stamp" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch-axe.sh: npm is needed to fetch axe-core for the UI tests (Debian: apt-get install npm)" >&2
  exit 1
fi

parent="$(dirname "$dest")"
mkdir -p "$parent"
tmp="$(mktemp -d "$parent/.axe-core.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-axe.sh: installing $stamp into $dest" >&2
npm install --prefix "$tmp/npm" --no-save --no-audit --no-fund --ignore-scripts --loglevel=error \
  "axe-core@$AXE_CORE" >&2

mkdir -p "$tmp/out"
cp "$tmp/npm/node_modules/axe-core/axe.min.js" "$tmp/npm/node_modules/axe-core/LICENSE" "$tmp/out/"
echo "$stamp" > "$tmp/out/STAMP"
rm -rf "$dest"
mv "$tmp/out" "$dest"
