#!/usr/bin/env bash
# Fetches GitHub's own descriptions of its webhooks and API, which the tests check Slipway
# against: every example payload of @octokit/webhooks-examples, and the REST API description of
# @octokit/openapi. They are too big to commit (the OpenAPI package is ~385 MB unpacked), so the
# tests run this once per target directory; it keeps only the files they read (~17 MB).
#
# Usage: fetch-fixtures.sh DIR   (the tests use <target dir>/forge-fixtures)
# Needs npm and access to the npm registry. Exits at once when DIR already holds these versions.
set -euo pipefail

WEBHOOKS_EXAMPLES=7.6.1
OPENAPI=23.0.2

dest="${1:?usage: fetch-fixtures.sh DIR}"
stamp="@octokit/webhooks-examples@$WEBHOOKS_EXAMPLES @octokit/openapi@$OPENAPI"
if [ -f "$dest/STAMP" ] && [ "$(cat "$dest/STAMP")" = "$stamp" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "fetch-fixtures.sh: npm is needed to fetch the GitHub test fixtures (Debian: apt-get install npm)" >&2
  exit 1
fi

parent="$(dirname "$dest")"
mkdir -p "$parent"
tmp="$(mktemp -d "$parent/.forge-fixtures.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-fixtures.sh: installing $stamp into $dest" >&2
npm install --prefix "$tmp/npm" --no-save --no-audit --no-fund --ignore-scripts --loglevel=error \
  "@octokit/webhooks-examples@$WEBHOOKS_EXAMPLES" "@octokit/openapi@$OPENAPI" >&2

out="$tmp/out"
mkdir -p "$out/webhooks-examples" "$out/openapi"
examples="$tmp/npm/node_modules/@octokit/webhooks-examples"
for index in "$examples"/*/index.json; do
  name="$(basename "$(dirname "$index")")"
  mkdir -p "$out/webhooks-examples/$name"
  cp "$index" "$out/webhooks-examples/$name/index.json"
done
cp "$tmp/npm/node_modules/@octokit/openapi/generated/api.github.com.json" "$out/openapi/"
printf '%s' "$stamp" >"$out/STAMP"

rm -rf "$dest"
mv "$out" "$dest"
