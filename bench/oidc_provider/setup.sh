#!/usr/bin/env bash
# Installs node oidc-provider 9 and argon2 from npm into a scratch folder
# OUTSIDE the repository (node_modules is never committed) and copies
# server.mjs next to them, where node resolves its imports.
#
#   bench/oidc_provider/setup.sh [DIR]   # default: $BATON_BENCH_OIDC_DIR or /tmp/baton-bench-oidc-provider
#
# Idempotent: npm runs only when the pinned versions are not installed yet.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-${BATON_BENCH_OIDC_DIR:-/tmp/baton-bench-oidc-provider}}"
mkdir -p "$dir"

cat >"$dir/package.json" <<'JSON'
{
  "name": "baton-bench-oidc-provider",
  "private": true,
  "type": "module",
  "license": "Apache-2.0",
  "dependencies": {
    "argon2": "0.45.1",
    "oidc-provider": "9.13.3"
  }
}
JSON

if ! npm ls --prefix "$dir" >/dev/null 2>&1; then
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error
fi
cp "$here/server.mjs" "$dir/server.mjs"
