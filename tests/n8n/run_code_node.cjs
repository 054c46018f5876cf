// Runs one n8n Code node's JavaScript the way n8n's "Run Once for All Items" mode does, outside
// n8n: the test hands it the node's code and what n8n would provide ($input, $env, other
// nodes' output, binary data), as JSON on stdin.
// Prints {"result": <the items returned>} or {"error": "..."}.
const fs = require('fs');

async function main() {
  const job = JSON.parse(fs.readFileSync(0, 'utf8'));
  const items = job.items.map((item) => ({
    json: item.json,
    binary: item.rawBody === undefined ? undefined : { data: { mimeType: 'application/json' } },
  }));
  const rawBodies = job.items.map((item) => (item.rawBody === undefined ? null : Buffer.from(item.rawBody, 'base64')));
  const $input = { first: () => items[0], all: () => items };
  const $ = (name) => ({ first: () => ({ json: job.nodes[name] }), all: () => [{ json: job.nodes[name] }] });
  const context = { helpers: { getBinaryDataBuffer: async (index) => rawBodies[index] } };
  if (job.nowMs !== undefined) Date.now = () => job.nowMs;
  const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
  const run = new AsyncFunction('$input', '$env', '$', 'require', job.code);
  try {
    const result = await run.call(context, $input, job.env || {}, $, require);
    process.stdout.write(JSON.stringify({ result }));
  } catch (error) {
    process.stdout.write(JSON.stringify({ error: String(error && error.message) }));
  }
}
main();
