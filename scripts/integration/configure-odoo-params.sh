#!/usr/bin/env bash
# Set ipai.webhook.url and ipai.webhook.secret in an Odoo database. Idempotent; never echoes the
# secret. Usage:
#   configure-odoo-params.sh --database postgresql://odoo@localhost/odoo \
#       --url https://bus.example.ph/functions/v1/odoo-webhook [--secret-file FILE]
# Defaults come from ODOO_DATABASE_URL, IPAI_WEBHOOK_URL, and IPAI_WEBHOOK_SECRET (or
# IPAI_WEBHOOK_SECRET_FILE). The secret is read from a file or the environment, never an argument,
# so it does not show in the process list or the shell history.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

help() {
  cat <<'EOF'
Usage: configure-odoo-params.sh --database URL --url WEBHOOK_URL [--secret-file FILE]

Sets ipai.webhook.url and ipai.webhook.secret in an Odoo database (idempotent), as Odoo's
Settings > IPAI Bus would. Needs psql (Debian: postgresql-client).

  --database URL      the Odoo database (default ODOO_DATABASE_URL)
  --url WEBHOOK_URL   the bus's webhook URL (default IPAI_WEBHOOK_URL), e.g.
                      http://127.0.0.1:8787/functions/v1/odoo-webhook
  --secret-file FILE  the file holding the secret (default IPAI_WEBHOOK_SECRET_FILE); or set
                      IPAI_WEBHOOK_SECRET. `ipai-bus up` keeps the secret it generated in
                      ~/.config/ipai-bus/webhook-secret. The secret is never an argument (it
                      would show in the process list and the shell history) and never echoed.
EOF
}
usage() { help >&2; exit 2; }
fail() { echo "configure-odoo-params: $*" >&2; exit 1; }

database="${ODOO_DATABASE_URL:-}"
url="${IPAI_WEBHOOK_URL:-}"
secret_file="${IPAI_WEBHOOK_SECRET_FILE:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --database) database="${2:?--database needs a value}"; shift 2 ;;
    --url) url="${2:?--url needs a value}"; shift 2 ;;
    --secret-file) secret_file="${2:?--secret-file needs a value}"; shift 2 ;;
    -h|--help) help; exit 0 ;;
    *) echo "configure-odoo-params: unknown argument $1" >&2; usage ;;
  esac
done

[ -n "$database" ] || fail "no database: pass --database or set ODOO_DATABASE_URL"
[ -n "$url" ] || fail "no webhook URL: pass --url or set IPAI_WEBHOOK_URL"
if [ -z "${IPAI_WEBHOOK_SECRET:-}" ]; then
  [ -n "$secret_file" ] || fail "no secret: set IPAI_WEBHOOK_SECRET or pass --secret-file"
  [ -r "$secret_file" ] || fail "cannot read the secret file $secret_file"
  IPAI_WEBHOOK_SECRET="$(head -n 1 "$secret_file" | cut -d, -f1 | tr -d '[:space:]')"
fi
command -v psql >/dev/null || fail "psql is not installed"

IPAI_WEBHOOK_URL="$url" IPAI_WEBHOOK_SECRET="$IPAI_WEBHOOK_SECRET" \
  psql "$database" --no-psqlrc -X -q -v ON_ERROR_STOP=1 -f "$here/configure-odoo-params.sql"
