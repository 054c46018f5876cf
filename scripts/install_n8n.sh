#!/usr/bin/env bash
# Usage: install_n8n.sh    (N8N_PATH=DIR to install elsewhere)
# Install n8n 2.8.4 (the newest that runs on Node 20) at N8N_PATH (default ~/n8n) for the
# n8n integration tests, offline from the npm registry. Takes several minutes and ~1 GB;
# `make test` never runs it: the tests use n8n when it is there and say on one line when not.
#   --ignore-scripts  native builds (sqlite3 among them) cannot be made here; the tests give
#                     n8n a PostgreSQL database (DB_TYPE=postgresdb) instead
#   overrides xlsx    n8n pins xlsx to a tarball URL outside the registry; 0.18.5 is the
#                     registry's newest
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
N8N_PATH="${N8N_PATH:-$HOME/n8n}"
command -v npm >/dev/null || { echo "install_n8n: npm is not installed (Node.js 20 and npm are needed)" >&2; exit 1; }
mkdir -p "$N8N_PATH"
cd "$N8N_PATH"
cat > package.json <<'JSON'
{
  "name": "ipai-bus-n8n",
  "private": true,
  "dependencies": { "n8n": "2.8.4" },
  "overrides": { "xlsx": "0.18.5" }
}
JSON
npm install --ignore-scripts --no-audit --no-fund --loglevel=error
test -x node_modules/.bin/n8n
echo "n8n $(node -p 'require("./node_modules/n8n/package.json").version') installed at $N8N_PATH"
