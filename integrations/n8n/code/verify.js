// Checks the IPAI bus's Standard Webhooks signature over the raw body and reads the event.
// Needs, in n8n's environment:
//   IPAI_BUS_WEBHOOK_SECRET   whsec_... (`ipai-bus secret new --whsec`); during a rotation,
//                             the new and the old secret separated by a space
//   N8N_BLOCK_ENV_ACCESS_IN_NODE=false   so this node can read that variable
//   NODE_FUNCTION_ALLOW_BUILTIN=crypto   so this node can compute the HMAC
// and the Webhook node's option "Raw Body" on: the signature covers the exact bytes sent.
const crypto = require('crypto');
const TOLERANCE_SECONDS = 300;

function keyOf(secret) {
  if (!secret.startsWith('whsec_')) throw new Error('IPAI_BUS_WEBHOOK_SECRET must start with whsec_');
  return Buffer.from(secret.slice('whsec_'.length), 'base64');
}

function check(secrets, headers, rawBody, nowSeconds) {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (!id || !timestamp || !signatures) return 'missing_headers';
  const sentAt = Number(timestamp);
  if (!/^\d+$/.test(timestamp) || Math.abs(nowSeconds - sentAt) > TOLERANCE_SECONDS) return 'stale_timestamp';
  const signed = Buffer.concat([Buffer.from(`${id}.${timestamp}.`), rawBody]);
  const offered = signatures.split(' ')
    .filter((entry) => entry.startsWith('v1,'))
    .map((entry) => Buffer.from(entry.slice(3), 'base64'));
  let matched = false;
  for (const secret of secrets) {
    const expected = crypto.createHmac('sha256', keyOf(secret)).update(signed).digest();
    for (const candidate of offered) {
      // Every pair is compared, in constant time, so timing tells nothing.
      if (candidate.length === expected.length && crypto.timingSafeEqual(candidate, expected)) matched = true;
    }
  }
  return matched ? 'valid' : 'bad_signature';
}

// {{safe_text.js}}

const secrets = String($env.IPAI_BUS_WEBHOOK_SECRET || '').split(/[\s,]+/).filter(Boolean);
if (secrets.length === 0) throw new Error('set IPAI_BUS_WEBHOOK_SECRET in n8n\'s environment (whsec_...)');

const item = $input.first();
if (!item.binary || !item.binary.data) {
  throw new Error('the Webhook node must have the option "Raw Body" on: the signature covers the exact bytes');
}
const rawBody = await this.helpers.getBinaryDataBuffer(0, 'data');
const headers = item.json.headers || {};
const verdict = check(secrets, headers, rawBody, Math.floor(Date.now() / 1000));
if (verdict !== 'valid') {
  return [{ json: { route: 'refused', status: 401, reason: verdict } }];
}
const webhookId = headers['webhook-id'];
const event = JSON.parse(rawBody.toString('utf8'));
const shown = shownInMarkdown(event.data.payload || {});
return [{ json: { route: 'handle', webhookId, type: event.type, domain: event.type.split('.')[0], event, shown } }];
