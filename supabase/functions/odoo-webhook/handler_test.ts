// Deno tests of the odoo-webhook function: the shared signing vectors, and every outcome of the
// wire contract against a real PostgreSQL with the migrations applied (SUPABASE_DB_URL).
import postgres from "npm:postgres@3.4.5";
import { handleRequest, MAX_BODY_BYTES, sign, useDatabase, verify } from "./handler.ts";

const here = new URL(".", import.meta.url);
const vectors = JSON.parse(
  await Deno.readTextFile(new URL("../../../tests/vectors/signing.json", here)),
);
const VERDICT_MESSAGES: Record<string, string> = {
  invalid_signature: "invalid signature",
  stale: "too old",
  future: "in the future",
  missing_signature: "missing x-ipai-signature",
  missing_timestamp: "missing x-ipai-timestamp",
  malformed_timestamp: "milliseconds",
};

function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

for (const vector of vectors.vectors) {
  Deno.test(`signing vector: ${vector.name}`, async () => {
    const body = new TextEncoder().encode(vector.body);
    const headers = new Headers({ "x-ipai-signature": vector.signature_header });
    if (vector.timestamp !== "") headers.set("x-ipai-timestamp", vector.timestamp);
    if (/^[0-9]+$/.test(vector.timestamp) && vector.expected_digest) {
      const digest = await sign(vector.active_secrets[0],
        new TextEncoder().encode(`${vector.timestamp}.${vector.body}`));
      assert(digest === vector.expected_digest, `known-answer digest differs: ${digest}`);
    }
    let outcome = "valid";
    try {
      await verify(vector.active_secrets, body, headers, vector.now_ms);
    } catch (error) {
      outcome = (error as Error).message;
    }
    if (vector.expected === "valid") {
      assert(outcome === "valid", `${vector.name}: expected valid, got ${outcome}`);
    } else {
      assert(outcome.includes(VERDICT_MESSAGES[vector.expected]),
        `${vector.name}: expected ${vector.expected}, got ${outcome}`);
    }
  });
}

const DB_URL = Deno.env.get("SUPABASE_DB_URL");
const SECRET = Deno.env.get("IPAI_WEBHOOK_SECRET")?.split(",")[0] ?? "";
const URL_ = "http://edge.test/functions/v1/odoo-webhook";

async function signed(body: string, key: string, timestamp = Date.now()): Promise<Headers> {
  const digest = await sign(SECRET, new TextEncoder().encode(`${timestamp}.${body}`));
  return new Headers({
    "content-type": "application/json", "x-ipai-timestamp": String(timestamp),
    "x-ipai-signature": digest, "x-idempotency-key": key,
  });
}

function event(id: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({
    event_type: "expense.submitted", aggregate_type: "hr.expense", aggregate_id: id,
    payload: { expense_id: Number(id) || 1, amount: 1250.5, employee_name: "Maria Santos 📝" },
    occurred_at: "2026-01-22T07:26:26Z", ...extra,
  });
}

async function post(body: string, headers: Headers) {
  const response = await handleRequest(new Request(URL_, { method: "POST", body, headers }));
  return { status: response.status, json: await response.json() };
}

const live = { ignore: !DB_URL || !SECRET, sanitizeResources: false, sanitizeOps: false };
const sql = DB_URL ? postgres(DB_URL, { max: 2, onnotice: () => {} }) : null;

async function counts(): Promise<[number, number]> {
  const [row] = await sql!`select (select count(*) from integration.outbox)::int as o,
                                  (select count(*) from integration.event_log)::int as l`;
  return [row.o, row.l];
}

Deno.test({ name: "stored, then duplicate, writes once", ...live, fn: async () => {
  const key = `edge-${crypto.randomUUID()}`;
  const body = event("101");
  const before = await counts();
  const first = await post(body, await signed(body, key));
  assert(first.status === 200 && first.json.duplicate === false, JSON.stringify(first));
  const again = await post(body, await signed(body, key));
  assert(again.status === 200 && again.json.duplicate === true &&
    again.json.event_id === first.json.event_id, JSON.stringify(again));
  const after = await counts();
  assert(after[0] === before[0] + 1 && after[1] === before[1] + 1, `rows ${before} -> ${after}`);
  const [row] = await sql!`select payload, signature_digest from integration.outbox
                           where id = ${first.json.event_id}`;
  assert(row.payload.employee_name === "Maria Santos 📝" && row.signature_digest.length === 64,
    "payload and signature fingerprint stored");
}});

Deno.test({ name: "a batch stores its valid events together and refuses a bad one alone", ...live,
  fn: async () => {
    const run = crypto.randomUUID();
    const good = [1, 2, 3].map((n) => ({ ...JSON.parse(event(`20${n}`)), idempotency_key: `${run}-${n}` }));
    const body = JSON.stringify({ events: [good[0], { ...good[1], event_type: "Bad" }, good[2], good[0]] });
    const before = await counts();
    const response = await handleRequest(new Request(`${URL_}/batch`, {
      method: "POST", body, headers: await signed(body, `batch-${run}`),
    }));
    const answer = await response.json();
    assert(response.status === 200, JSON.stringify(answer));
    const statuses = answer.results.map((r: { status: string }) => r.status);
    assert(JSON.stringify(statuses) === '["stored","refused","stored","duplicate"]', statuses);
    assert(answer.results[3].event_id === answer.results[0].event_id, "a repeated key is a duplicate");
    assert(answer.results[1].error.startsWith("event_type must be lowercase"), answer.results[1].error);
    const after = await counts();
    assert(after[0] === before[0] + 2 && after[1] === before[1] + 2, `rows ${before} -> ${after}`);
  }});

Deno.test({ name: "every refusal answers per the contract and stores nothing", ...live,
  fn: async () => {
    const body = event("102");
    const good = await signed(body, `edge-${crypto.randomUUID()}`);
    const cases: [string, () => Promise<{ status: number; json: Record<string, unknown> }>,
      number, string][] = [
      ["tampered", () => post(body.replace("1250.5", "9250.5"), good), 401, "invalid signature"],
      ["stale", async () => post(body, await signed(body, "k-stale", Date.now() - 301_000)),
        401, "too old"],
      ["future", async () => post(body, await signed(body, "k-future", Date.now() + 301_000)),
        401, "in the future"],
      ["not json", async () => post("{oops", await signed("{oops", "k-json")), 400, "UTF-8 JSON"],
      ["wrong shape", async () => post("[]", await signed("[]", "k-shape")), 400, "JSON object"],
      ["missing field", async () => {
        const b = JSON.stringify({ event_type: "test", aggregate_type: "a", aggregate_id: "1" });
        return post(b, await signed(b, "k-missing"));
      }, 400, "missing field: payload"],
      ["no key", async () => {
        const h = await signed(body, "x");
        h.delete("x-idempotency-key");
        return post(body, h);
      }, 400, "x-idempotency-key"],
      ["too large", async () => {
        const b = event("103", { payload: { blob: "x".repeat(MAX_BODY_BYTES) } });
        return post(b, await signed(b, "k-large"));
      }, 413, "larger than"],
      ["wrong method", async () => {
        const r = await handleRequest(new Request(URL_, { method: "GET" }));
        return { status: r.status, json: await r.json() };
      }, 405, "use POST"],
      ["wrong type", async () => {
        const h = await signed(body, "k-type");
        h.set("content-type", "text/plain");
        return post(body, h);
      }, 415, "application/json"],
    ];
    const before = await counts();
    for (const [name, send, status, error] of cases) {
      const answer = await send();
      assert(answer.status === status && answer.json.ok === false &&
        String(answer.json.error).includes(error), `${name}: ${JSON.stringify(answer)}`);
    }
    const after = await counts();
    assert(after[0] === before[0] && after[1] === before[1], "a refusal stored something");
  },
});

Deno.test({ name: "a signature accepted under one key is refused under another", ...live,
  fn: async () => {
    const body = event("104");
    const headers = await signed(body, `edge-${crypto.randomUUID()}`);
    assert((await post(body, headers)).status === 200, "first send stored");
    headers.set("x-idempotency-key", `edge-replay-${crypto.randomUUID()}`);
    const replay = await post(body, headers);
    assert(replay.status === 401 && replay.json.error === "replayed signature",
      JSON.stringify(replay));
  },
});

Deno.test({ name: "database unreachable answers 503, then recovers", ...live, fn: async () => {
  await useDatabase("postgresql://nobody:x@127.0.0.1:1/none");
  const body = event("105");
  const down = await post(body, await signed(body, `edge-${crypto.randomUUID()}`));
  assert(down.status === 503 && down.json.error === "database unavailable, retry later",
    JSON.stringify(down));
  await useDatabase(DB_URL);
  const up = await post(body, await signed(body, `edge-${crypto.randomUUID()}`));
  assert(up.status === 200, JSON.stringify(up));
  await useDatabase(undefined);
  await sql!.end();
}});
