// Payload text shown in Mattermost is data, never markup: the bus's own rule
// (ipai_bus_lib/delivery/safe_text.py), so no payload text becomes a link or a mention.
const LOOKALIKES = { '@': '\uff20', ':': '\u2236', '#': '\uff03', '~': '\uff5e', '\uff1a': '\u2236' };
function neutralise(value) {
  return value
    .replace(/[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, '')
    .replace(/[\s\x00-\x1f\x7f-\x9f]+/g, ' ')
    .replace(/[@:#~\uff1a]/g, (c) => LOOKALIKES[c])
    .replace(/[.\u3002\uff0e\uff61](?=[\p{L}\p{Nl}\p{No}]|\d+[.\u3002\uff0e\uff61]\d)/gu, '\u2024')
    .replace(/\/(?=\/)|<(?=!)/g, (c) => c + '\u2060');
}
function escapeMarkdown(value) {
  return value.replace(/[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]/g, '\\$&');
}
function shownInMarkdown(value) {
  if (typeof value === 'string') return escapeMarkdown(neutralise(value));
  if (Array.isArray(value)) return value.map(shownInMarkdown);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, shownInMarkdown(v)]));
  }
  return value;
}
