#!/usr/bin/env bash
# The binary embeds playground/dist, which is committed so that `cargo run` needs no Node.
# This rebuilds the playground from its sources into a scratch folder and fails when the
# result differs from playground/dist: a change to playground/ must come with its build.
# Needs `npm ci --prefix playground` first (scripts/test.sh does it).
set -euo pipefail
cd "$(dirname "$0")/../playground"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

npx --no-install vite build --outDir "$scratch/dist" --emptyOutDir --logLevel error

if ! diff -r "$scratch/dist" dist >"$scratch/diff" 2>&1; then
  echo "playground/dist is not the build of playground/ as it stands:" >&2
  head -n 20 "$scratch/diff" | cut -c1-200 >&2
  echo >&2
  echo "Rebuild it with 'npm run build --prefix playground' and commit playground/dist." >&2
  exit 1
fi
echo "playground/dist matches a fresh build of playground/"
