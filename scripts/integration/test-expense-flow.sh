#!/usr/bin/env bash
# End-to-end check of a running bus: signs an expense.submitted with openssl, posts it with curl,
# then checks with psql that the outbox row and the event_log row exist, and that a resend is
# answered as a duplicate. Exits non-zero, with the reason, on any failure.
#
#   DATABASE_URL=postgresql://... IPAI_WEBHOOK_SECRET_FILE=~/.config/ipai-bus/webhook-secret \
#   scripts/integration/test-expense-flow.sh [WEBHOOK_URL]
#
# WEBHOOK_URL defaults to IPAI_WEBHOOK_URL, else http://127.0.0.1:$IPAI_RECEIVER_PORT (8787 when
# unset)/functions/v1/odoo-webhook.
set -euo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  cat <<'EOF'
Usage: test-expense-flow.sh [WEBHOOK_URL]

Checks a running bus end to end: signs an expense.submitted with openssl, posts it with curl,
checks with psql that its outbox row and event_log row exist, and that a resend is answered as
a duplicate. Needs openssl, curl and psql.

  WEBHOOK_URL                default IPAI_WEBHOOK_URL, else
                             http://127.0.0.1:$IPAI_RECEIVER_PORT/functions/v1/odoo-webhook
                             (port 8787 when IPAI_RECEIVER_PORT is unset)
  DATABASE_URL               the bus database (`ipai-bus db url` prints the embedded one's)
  IPAI_WEBHOOK_SECRET(_FILE) the secret; `ipai-bus up` keeps its own in
                             ~/.config/ipai-bus/webhook-secret
EOF
  exit 0
fi

fail() { echo "test-expense-flow: FAIL: $*" >&2; exit 1; }
for tool in openssl curl psql; do
  command -v "$tool" >/dev/null || fail "$tool is not installed"
done

url="${1:-${IPAI_WEBHOOK_URL:-http://127.0.0.1:${IPAI_RECEIVER_PORT:-8787}/functions/v1/odoo-webhook}}"
[ -n "${DATABASE_URL:-}" ] || fail "set DATABASE_URL to the bus database (ipai-bus db url prints it)"
secret="${IPAI_WEBHOOK_SECRET:-}"
if [ -z "$secret" ] && [ -n "${IPAI_WEBHOOK_SECRET_FILE:-}" ]; then
  secret="$(head -n 1 "$IPAI_WEBHOOK_SECRET_FILE" | cut -d, -f1 | tr -d '[:space:]')"
fi
secret="${secret%%,*}"
[ -n "$secret" ] || fail "set IPAI_WEBHOOK_SECRET or IPAI_WEBHOOK_SECRET_FILE"

expense_id=$(( (RANDOM << 15) | RANDOM ))
now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
body="{\"event_type\":\"expense.submitted\",\"aggregate_type\":\"hr.expense\",\"aggregate_id\":\"${expense_id}\",\"payload\":{\"expense_id\":${expense_id},\"employee_name\":\"Flow Test\",\"amount\":99.5,\"currency\":\"PHP\",\"description\":\"test-expense-flow.sh\",\"state\":\"submitted\"},\"occurred_at\":\"${now}\",\"source\":\"odoo\"}"
timestamp="$(date +%s%3N)"
key="expense.submitted:${expense_id}:${timestamp}"
# The key goes to openssl on its command line for this short-lived process only.
signature="$(printf '%s.%s' "$timestamp" "$body" | openssl dgst -sha256 -hmac "$secret" -r | cut -d' ' -f1)"

post() {
  curl -sS -o /tmp/test-expense-flow.$$ -w '%{http_code}' -X POST "$url" \
    -H 'Content-Type: application/json' -H "x-ipai-timestamp: ${timestamp}" \
    -H "x-ipai-signature: ${signature}" -H "x-idempotency-key: ${key}" --data-binary "$body" \
    || fail "no receiver at $url (is ipai-bus up running?)"
}
trap 'rm -f /tmp/test-expense-flow.$$' EXIT

status="$(post)"
answer="$(cat /tmp/test-expense-flow.$$)"
[ "$status" = "200" ] || fail "receiver answered HTTP $status: $answer"
event_id="$(printf '%s' "$answer" | sed -n 's/.*"event_id": *"\([0-9a-f-]*\)".*/\1/p')"
[ -n "$event_id" ] || fail "no event_id in the answer: $answer"
printf '%s' "$answer" | grep -q '"duplicate": *false' || fail "first send was not new: $answer"
echo "stored: event $event_id"

sql() { psql "$DATABASE_URL" --no-psqlrc -X -Atq -v ON_ERROR_STOP=1 -c "$1"; }
outbox="$(sql "select event_type || ' ' || idempotency_key from integration.outbox where id = '${event_id}'")" \
  || fail "psql could not query the outbox"
[ "$outbox" = "expense.submitted ${key}" ] || fail "outbox row missing or different: '${outbox}'"
logged="$(sql "select count(*) from integration.event_log where event_id = '${event_id}'")"
[ "$logged" = "1" ] || fail "expected 1 event_log row, found ${logged}"
echo "checked: outbox row and event_log row"

status="$(post)"
answer="$(cat /tmp/test-expense-flow.$$)"
[ "$status" = "200" ] || fail "resend answered HTTP $status: $answer"
printf '%s' "$answer" | grep -q '"duplicate": *true' || fail "resend was not a duplicate: $answer"
printf '%s' "$answer" | grep -q "\"$event_id\"" || fail "resend named another event: $answer"
[ "$(sql "select count(*) from integration.outbox where idempotency_key = '${key}'")" = "1" ] \
  || fail "the resend wrote a second outbox row"
echo "checked: resend is a duplicate; nothing written twice"
echo "test-expense-flow: OK"
