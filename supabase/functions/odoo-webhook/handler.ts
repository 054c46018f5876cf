// The odoo-webhook receiver for Supabase Edge Functions: the same wire contract, checks in the same
// order and the same answers as the Python receiver (ipai_bus_lib/ingest/receiver.py), writing through the
// same public SQL functions of supabase/migrations/. tests/test_edge_function.py proves them alike.
//
// Environment: IPAI_WEBHOOK_SECRET (several, comma-separated, while rotating; each at least 16
// characters, as the Python side requires) and IPAI_DB_URL, the connection string of a login role
// that is a member of ipai_bus_ingest (SUPABASE_DB_URL, the owner, only when IPAI_DB_URL is unset).
// Payload numbers are stored with the digits they were signed with (JSON.rawJSON), as in Python.
// Logs never hold the secret, the signature or the payload.
import postgres from "npm:postgres@3.4.5";

// The wire contract's numbers and patterns: the one file the Python library reads too.
import contract from "../../../ipai_bus_lib/core/wire_contract.json" with { type: "json" };

// One event: a single-event body, or one event of a batch as compact UTF-8 JSON (413 beyond).
export const MAX_EVENT_BYTES: number = contract.sizes.max_event_bytes;
export const MAX_BODY_BYTES = MAX_EVENT_BYTES;
// One batch request (POST …/odoo-webhook/batch): at most this many events and bytes.
export const MAX_BATCH_EVENTS: number = contract.sizes.max_batch_events;
export const MAX_BATCH_BYTES: number = contract.sizes.max_batch_bytes;
export const TOLERANCE_MS: number = contract.signature.tolerance_seconds * 1000;
const MAX_DIGESTS: number = contract.signature.max_digests_per_header;
export const MIN_SECRET_LENGTH: number = contract.signature.min_secret_length;
const TIMESTAMP = new RegExp(contract.signature.timestamp_pattern);
const TIMESTAMP_HEADER = contract.headers.timestamp;
const SIGNATURE_HEADER = contract.headers.signature;
const KEY_HEADER = contract.headers.idempotency_key;
// PostgreSQL's numeric (jsonb numbers) holds 131072 digits before the point, 16383 after.
const MAX_NUMBER_EXPONENT = 131071;
const MAX_NUMBER_SCALE = 16383;
const NUMBER_OUT_OF_RANGE =
  "payload number out of range: PostgreSQL's numeric holds 1e-16383 to 1e131071";
const MAX_TEXT: number = contract.envelope.max_text_length;
const MAX_DEPTH: number = contract.envelope.max_payload_depth;
// A whole body may nest this deep: a batch's payloads sit three levels down ({"events": [{...}]}).
const MAX_BODY_DEPTH = MAX_DEPTH + 3;
const BODY_TOO_DEEP =
  `body nests deeper than ${MAX_BODY_DEPTH} levels (a payload may nest at most ${MAX_DEPTH})`;
const EVENT_TYPE = new RegExp(contract.envelope.event_type_pattern);
const SOURCE = new RegExp(contract.envelope.source_pattern);
const DEFAULT_SOURCE: string = contract.envelope.default_source;
const MAX_NUMERIC_AGGREGATE_ID: number = contract.envelope.max_numeric_aggregate_id;
const KEY = new RegExp(contract.envelope.idempotency_key_pattern);
const ISO = new RegExp(contract.envelope.occurred_at_pattern);
// The u flag makes a surrogate pair one code point, so only lone surrogates match (as in Python).
const UNSTORABLE_TEXT = /[\x00-\x1f\x7f\ud800-\udfff]/u;
const UNSTORABLE_JSON = /[\x00\ud800-\udfff]/u;

type Bytes = Uint8Array<ArrayBuffer>;
type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export interface Envelope {
  event_type: string;
  aggregate_type: string;
  aggregate_id: string;
  payload: Record<string, Json>;
  occurred_at: string | null;
  source: string;
}

class Refusal extends Error {
  constructor(readonly status: number, message: string, readonly outcome: string) {
    super(message);
  }
}

const encoder = new TextEncoder();

function hex(bytes: ArrayBuffer): string {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

function constantTimeEqual(a: string, b: string): boolean {
  let diff = a.length ^ b.length;
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    diff |= (a.charCodeAt(i) || 0) ^ (b.charCodeAt(i) || 0);
  }
  return diff === 0;
}

export async function sign(secret: string, message: Bytes): Promise<string> {
  const key = await crypto.subtle.importKey(
    "raw", encoder.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"],
  );
  return hex(await crypto.subtle.sign("HMAC", key, message));
}

function signedMessage(timestamp: string, body: Bytes): Bytes {
  const head = encoder.encode(`${timestamp}.`);
  const message = new Uint8Array(head.length + body.length);
  message.set(head);
  message.set(body, head.length);
  return message;
}

/** What a valid signature proves: the signed message and the header's digests, as kept. */
export interface Verified {
  message: Bytes;
  signatures: string;
}

/** The signature checks, in the Python library's order; returns the signed message. */
export async function verify(
  secrets: string[], body: Bytes, headers: Headers, now = Date.now(),
): Promise<Verified> {
  const rawTimestamp = headers.get(TIMESTAMP_HEADER);
  if (rawTimestamp === null || rawTimestamp.trim() === "") {
    throw new Refusal(401, "missing x-ipai-timestamp header", "unauthorized");
  }
  const timestamp = rawTimestamp.trim();
  if (!TIMESTAMP.test(timestamp)) {
    throw new Refusal(401, "x-ipai-timestamp must be integer milliseconds since the Unix epoch",
      "unauthorized");
  }
  const stamp = Number(timestamp);
  if (stamp < now - TOLERANCE_MS) {
    if (Math.abs(stamp * 1000 - now) <= TOLERANCE_MS) {
      throw new Refusal(401, "timestamp outside the 5 minute window (too old): it is now if read " +
        "as seconds; x-ipai-timestamp is milliseconds since the Unix epoch", "unauthorized");
    }
    throw new Refusal(401, "timestamp outside the 5 minute window (too old)", "unauthorized");
  }
  if (stamp > now + TOLERANCE_MS) {
    throw new Refusal(401, "timestamp outside the 5 minute window (in the future)", "unauthorized");
  }
  const header = headers.get(SIGNATURE_HEADER);
  if (header === null || header.trim() === "") {
    throw new Refusal(401, "missing x-ipai-signature header", "unauthorized");
  }
  const digests = header.split(",").map((d) => d.trim().toLowerCase()).filter((d) => d);
  if (digests.length === 0 || digests.length > MAX_DIGESTS) {
    throw new Refusal(401, "invalid signature", "unauthorized");
  }
  const message = signedMessage(timestamp, body);
  let matched = false;
  for (const secret of secrets) {
    const expected = await sign(secret, message);
    for (const digest of digests) matched = constantTimeEqual(expected, digest) || matched;
  }
  if (!matched) throw new Refusal(401, "invalid signature", "unauthorized");
  return { message, signatures: digests.join(",") };
}

function isStorable(value: Json, depth = 0): boolean {
  if (typeof value === "string") return !UNSTORABLE_JSON.test(value);
  // A number's range is checked on its digits as sent (numbersInRange), not on a float.
  if (value === null || typeof value === "boolean" || typeof value === "number") return true;
  if (depth >= MAX_DEPTH) return false;
  if (Array.isArray(value)) return value.every((item) => isStorable(item, depth + 1));
  return Object.entries(value).every(([k, v]) => isStorable(k) && isStorable(v, depth + 1));
}

/** A JSON number's text fits PostgreSQL's numeric (as ipai_bus_lib.core.exact_json decides). */
function numberFits(text: string): boolean {
  const m = /^-?(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(text);
  if (!m) return false;
  const fraction = m[2] ?? "";
  const exponent = Number(m[3] ?? "0") - fraction.length;
  if (Math.max(0, -exponent) > MAX_NUMBER_SCALE) return false;
  const digits = (m[1] + fraction).replace(/^0+/, "");
  return digits === "" || exponent + digits.length - 1 <= MAX_NUMBER_EXPONENT;
}

// JSON.rawJSON's results: numbers that serialise with the digits they were parsed from.
type Exact = unknown;
const isRawJson = (JSON as unknown as { isRawJSON(v: unknown): boolean }).isRawJSON;

function numbersInRange(value: Exact): boolean {
  if (isRawJson(value)) return numberFits((value as { rawJSON: string }).rawJSON);
  if (value === null || typeof value !== "object") return true;
  return Object.values(value as Record<string, Exact>).every(numbersInRange);
}

function requiredText(doc: Record<string, Json>, name: string): string {
  if (!(name in doc) || doc[name] === null) throw badRequest(`missing field: ${name}`);
  const value = doc[name];
  if (typeof value !== "string" || value.length < 1 || value.length > MAX_TEXT ||
    UNSTORABLE_TEXT.test(value)) {
    throw badRequest(`${name} must be text of 1-${MAX_TEXT} characters, no control characters`);
  }
  return value;
}

// occurred_at's bounds, as in ipai_bus_lib.core.catalog: real zone offsets (-12:00 to +14:00), and a
// moment from 0001-01-02 to 9999-12-31 in UTC, so a reader in any time zone can represent it.
const MAX_OFFSET_MINUTES: number = contract.envelope.max_utc_offset_minutes;
const MIN_OFFSET_MINUTES: number = contract.envelope.min_utc_offset_minutes;
const LATEST_MS = (() => { const d = new Date(0); d.setUTCFullYear(9999, 11, 31); return d.getTime(); })();
const EARLIEST_UTC_MS = (() => { const d = new Date(0); d.setUTCFullYear(1, 0, 2); return d.getTime(); })();

function isIsoDatetime(value: string): boolean {
  const m = ISO.exec(value);
  if (!m) return false;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number);
  const probe = new Date(0);
  probe.setUTCFullYear(year, month - 1, day);  // Date.UTC maps years 0-99 to 1900-1999
  probe.setUTCHours(hour, minute, second);
  const realDate = probe.getUTCFullYear() === year && probe.getUTCMonth() === month - 1 &&
    probe.getUTCDate() === day && hour < 24 && minute < 60 && second < 60;
  if (!realDate) return false;
  let offsetMinutes = 0;
  const zone = m[8];
  if (zone !== "Z") {
    const hours = Number(zone.slice(1, 3)), minutes = Number(zone.slice(4, 6));
    if (minutes > 59) return false;
    offsetMinutes = (hours * 60 + minutes) * (zone[0] === "-" ? -1 : 1);
    if (offsetMinutes > MAX_OFFSET_MINUTES || offsetMinutes < MIN_OFFSET_MINUTES) return false;
  }
  const utc = probe.getTime() - offsetMinutes * 60_000;
  return utc >= EARLIEST_UTC_MS && utc <= LATEST_MS;
}

function badRequest(message: string): Refusal {
  return new Refusal(400, message, "bad_request");
}

/** The envelope checks of ipai_bus_lib.core.catalog.parse_envelope, with the same messages;
 * the payload returned is ``exact``'s, numbers as sent. */
export function parseEnvelope(doc: Json, exact: Exact = doc): Envelope {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    throw badRequest("body must be a JSON object");
  }
  const eventType = requiredText(doc, "event_type");
  if (!EVENT_TYPE.test(eventType)) {
    throw badRequest("event_type must be lowercase dotted words, e.g. expense.submitted");
  }
  const aggregateType = requiredText(doc, "aggregate_type");
  const rawId = doc["aggregate_id"];
  if (typeof rawId === "number" && Number.isInteger(rawId) &&
    !(rawId >= 0 && rawId <= MAX_NUMERIC_AGGREGATE_ID)) {
    throw badRequest("aggregate_id sent as a number must be a whole number from 0 to " +
      `${MAX_NUMERIC_AGGREGATE_ID} (send larger ids as text)`);
  }
  const aggregateId = typeof rawId === "number" && Number.isInteger(rawId)
    ? String(rawId) : requiredText(doc, "aggregate_id");
  if (!("payload" in doc)) throw badRequest("missing field: payload");
  const payload = doc["payload"];
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    throw badRequest("payload must be a JSON object");
  }
  if (!isStorable(payload)) {
    throw badRequest(`payload must nest at most ${MAX_DEPTH} levels and hold no NUL character` +
      " or lone surrogate");
  }
  const storedPayload = exactPayload(exact);
  const source = "source" in doc ? doc["source"] : DEFAULT_SOURCE;
  if (typeof source !== "string" || !SOURCE.test(source)) {
    throw badRequest("source must be 1-64 characters of [A-Za-z0-9_.-]");
  }
  const occurred = doc["occurred_at"] ?? null;
  if (occurred !== null && (typeof occurred !== "string" || !isIsoDatetime(occurred))) {
    throw badRequest("occurred_at must be an ISO 8601 date-time with a zone between -12:00 and" +
      " +14:00, from year 0001 to 9999 in UTC, e.g. 2026-01-22T07:26:26Z");
  }
  return {
    event_type: eventType, aggregate_type: aggregateType, aggregate_id: aggregateId,
    payload: storedPayload as Record<string, Json>, occurred_at: occurred as string | null, source,
  };
}

async function readBody(req: Request, limit: number): Promise<Bytes> {
  const declared = req.headers.get("content-length");
  if (declared !== null) {
    if (!/^[0-9]+$/.test(declared)) throw badRequest("invalid Content-Length");
    if (Number(declared) > limit) {
      throw new Refusal(413, `body larger than ${limit} bytes`, "too_large");
    }
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body?.getReader();
  while (reader) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > limit) {
      await reader.cancel();
      throw new Refusal(413, `body larger than ${limit} bytes`, "too_large");
    }
    chunks.push(value);
  }
  const body = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.length;
  }
  return body;
}

/** The body's JSON twice: as JavaScript values, for the checks, and with every number kept as
 * the digits it was sent with, for storing (what was signed is what is kept). */
function parseJson(body: Bytes): { doc: Json; exact: Exact } {
  if (nestsDeeperThan(body, MAX_BODY_DEPTH)) throw badRequest(BODY_TOO_DEEP);
  let text: string;
  let doc: Json;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(body);
    doc = JSON.parse(text);
  } catch {
    throw badRequest("body is not valid UTF-8 JSON");
  }
  const rawJson = (JSON as unknown as { rawJSON(text: string): unknown }).rawJSON;
  const exact = JSON.parse(text, (_key, value, context?: { source?: string }) =>
    typeof value === "number" ? rawJson(context!.source!) : value);
  return { doc, exact };
}

/** True when the body's arrays and objects nest more than `limit` deep (strings skipped),
 * counted on the bytes before parsing, as ipai_bus_lib.core.exact_json.nests_deeper_than counts. */
function nestsDeeperThan(body: Bytes, limit: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < body.length; i++) {
    const byte = body[i];
    if (inString) {
      if (byte === 0x5c) i++; // a backslash escapes the next byte
      else if (byte === 0x22) inString = false;
    } else if (byte === 0x22) {
      inString = true;
    } else if (byte === 0x5b || byte === 0x7b) {
      if (++depth > limit) return true;
    } else if (byte === 0x5d || byte === 0x7d) {
      depth--;
    }
  }
  return false;
}

/** The payload to store: the exact one, once its numbers are known to fit. */
function exactPayload(exact: Exact): Exact {
  const payload = (exact as Record<string, Exact>)["payload"];
  if (!numbersInRange(payload)) throw badRequest(NUMBER_OUT_OF_RANGE);
  return payload;
}

/** One element of a batch: the envelope and its key, or why it was refused. */
export type BatchEvent = { envelope: Envelope; key: string } | { refusal: string };

/** The batch checks of ipai_bus_lib.core.catalog.parse_batch, with the same messages; each
 * envelope's payload is the exact one. */
export function parseBatch(doc: Json, exact: Exact = doc): BatchEvent[] {
  const events = doc !== null && typeof doc === "object" && !Array.isArray(doc)
    ? doc["events"] : undefined;
  if (!Array.isArray(events) || events.length === 0) {
    throw badRequest('body must be a JSON object {"events": [...]} with at least one event');
  }
  if (events.length > MAX_BATCH_EVENTS) {
    throw new Refusal(413, `batch of ${events.length} events: at most ${MAX_BATCH_EVENTS} per request`,
      "too_large");
  }
  const exactEvents = (exact as { events: Exact[] }).events;
  return events.map((item, position) => {
    if (item === null || typeof item !== "object" || Array.isArray(item)) {
      return { refusal: "event must be a JSON object" };
    }
    try {
      if (new TextEncoder().encode(JSON.stringify(exactEvents[position])).length > MAX_EVENT_BYTES) {
        throw badRequest(`event larger than ${MAX_EVENT_BYTES} bytes as compact JSON`);
      }
      const envelope = parseEnvelope(item, exactEvents[position]);
      const key = item["idempotency_key"];
      if (typeof key !== "string" || !KEY.test(key)) {
        throw badRequest("idempotency_key must be 1-255 printable ASCII characters");
      }
      return { envelope, key };
    } catch (error) {
      if (error instanceof Refusal) return { refusal: error.message };
      throw error;
    }
  });
}

// deno-lint-ignore no-explicit-any
type Sql = any;
let database: Sql | null = null;

/** Point the function at a database (SUPABASE_DB_URL by default); the tests switch it. */
export async function useDatabase(url: string | undefined): Promise<void> {
  await database?.end({ timeout: 1 });
  database = url === undefined ? null : connectTo(url);
}

function connectTo(url: string): Sql {
  // No prepared statements: Supabase's transaction pooler (port 6543) cannot keep them.
  return postgres(url, {
    max: 10, connect_timeout: 3, idle_timeout: 30, prepare: false, onnotice: () => {},
  });
}

function db(): Sql {
  database ??= connectTo(Deno.env.get("IPAI_DB_URL") || (Deno.env.get("SUPABASE_DB_URL") ?? ""));
  return database;
}

// The request as signed, kept in the same statement as its events (integration.signed_message).
function keepSigned(signed: SignedRequest) {
  return db()`public.keep_signed_message(p_digest => ${signed.fingerprint}::text,
      p_message => decode(${hex(signed.message.buffer)}, 'hex'), p_signatures => ${signed.signatures})`;
}

interface SignedRequest extends Verified {
  fingerprint: string;
}

/** The W3C trace context a request or batch element came with; the database keeps it when
 * valid and drops it otherwise (tracing never costs an event). */
interface TraceFields {
  traceparent?: string;
  tracestate?: string;
}

function traceFields(source: { get(name: string): string | null } | Json): TraceFields {
  const read = (name: string) => {
    const value = typeof (source as Headers).get === "function"
      ? (source as Headers).get(name)
      : (source as Record<string, Json> | null)?.[name];
    return typeof value === "string" ? value.trim() : undefined;
  };
  const found: TraceFields = {};
  const traceparent = read("traceparent");
  if (traceparent) {
    found.traceparent = traceparent;
    const tracestate = read("tracestate");
    if (tracestate) found.tracestate = tracestate;
  }
  return found;
}

async function store(envelope: Envelope, key: string, signed: SignedRequest, trace: TraceFields) {
  // One statement: the outbox row, its event_log copy (insert_outbox_event writes it) and the
  // signed request in one transaction, through the public wrappers, as the Python receiver does.
  const rows = await db()`
    select stored.event_id::text as event_id, stored.duplicate,
           case when not stored.duplicate then ${keepSigned(signed)} end
    from public.insert_outbox_event(
      p_event_type => ${envelope.event_type}, p_aggregate_type => ${envelope.aggregate_type},
      p_aggregate_id => ${envelope.aggregate_id},
      p_payload => ${JSON.stringify(envelope.payload)}::text::jsonb,
      p_idempotency_key => ${key}, p_source => ${envelope.source},
      p_occurred_at => ${envelope.occurred_at}, p_signature_digest => ${signed.fingerprint},
      p_traceparent => ${trace.traceparent ?? null}, p_tracestate => ${trace.tracestate ?? null}) as stored`;
  return rows[0] as { event_id: string; duplicate: boolean };
}

async function storeBatch(
  items: { envelope: Envelope; key: string; position: number; trace: TraceFields }[],
  batchKey: string,
  signed: SignedRequest,
) {
  // One statement: every new event, its event_log copy and the signed request commit together.
  // batch_position: the event's place in the signed body, which its signature digest names.
  const events = items.map(({ envelope, key, position, trace }) =>
    ({ ...envelope, idempotency_key: key, batch_position: position, ...trace }));
  const rows = await db()`
    with kept as (select ${keepSigned(signed)} as kept)
    select event_position, event_id::text as event_id, duplicate
    from public.insert_outbox_batch(
      p_batch_key => ${batchKey}, p_signature_digest => ${signed.fingerprint},
      p_events => ${JSON.stringify(events)}::text::jsonb), kept`;
  return rows as { event_position: number; event_id: string; duplicate: boolean }[];
}

function secrets(): string[] {
  return (Deno.env.get("IPAI_WEBHOOK_SECRET") ?? "").split(",").map((s) => s.trim())
    .filter((s) => s);
}

/** Why the configured secrets cannot be used (the Python side's rule and words), or null. */
export function secretProblem(active: string[]): string | null {
  if (active.length === 0) return "no webhook secret is configured";
  if (active.some((secret) => secret.length < MIN_SECRET_LENGTH)) {
    return `IPAI_WEBHOOK_SECRET: each secret must be at least ${MIN_SECRET_LENGTH} characters ` +
      "(make one with `ipai-bus secret new`)";
  }
  return null;
}

/** The checks before parsing, in the Python receiver's order: the body and its fingerprint. */
async function verifiedBody(req: Request, limit: number) {
  if (req.method !== "POST") throw new Refusal(405, "method not allowed: use POST", "method_not_allowed");
  const mediaType = (req.headers.get("content-type") ?? "").split(";")[0].trim().toLowerCase();
  if (mediaType !== "application/json") {
    throw new Refusal(415, "content type must be application/json", "unsupported_media_type");
  }
  const body = await readBody(req, limit);
  const verified = await verify(secrets(), body, req.headers);
  const fingerprint = hex(await crypto.subtle.digest("SHA-256", verified.message));
  return { body, signed: { ...verified, fingerprint } };
}

function idempotencyKey(req: Request): string {
  const key = req.headers.get(KEY_HEADER);
  if (key === null || !KEY.test(key)) {
    throw badRequest("x-idempotency-key header must be 1-255 printable ASCII characters");
  }
  return key;
}

async function accept(req: Request) {
  const { body, signed } = await verifiedBody(req, MAX_BODY_BYTES);
  const { doc, exact } = parseJson(body);
  const envelope = parseEnvelope(doc, exact);
  const key = idempotencyKey(req);
  const trace = traceFields(req.headers);
  return { ...(await withDatabase(() => store(envelope, key, signed, trace))),
    event_type: envelope.event_type };
}

type BatchResult = { status: string; event_id?: string; error?: string };

async function acceptBatch(req: Request): Promise<BatchResult[]> {
  const { body, signed } = await verifiedBody(req, MAX_BATCH_BYTES);
  const { doc, exact } = parseJson(body);
  const events = parseBatch(doc, exact);
  // Each event's key is in the signed body: the batch is named by its signature, and an
  // x-idempotency-key header (senders before 0.2 sent one) means nothing here.
  const batchKey = signed.fingerprint;
  const elements = (doc as { events: Json[] }).events;
  const valid = events.flatMap((event, position) =>
    "refusal" in event ? [] : [{ ...event, position, trace: traceFields(elements[position]) }]);
  const stored = new Map<number, { event_id: string; duplicate: boolean }>();
  if (valid.length > 0) {
    const rows = await withDatabase(() => storeBatch(valid, batchKey, signed));
    rows.forEach((row) => stored.set(valid[row.event_position].position, row));
  }
  return events.map((event, position) => {
    const row = stored.get(position);
    if (row === undefined) return { status: "refused", error: "refusal" in event ? event.refusal : "not stored" };
    return { status: row.duplicate ? "duplicate" : "stored", event_id: row.event_id };
  });
}

// A lost race for rows another request holds (lock_timeout, deadlock, serialization): the
// database answers, and a second try usually finds the other request committed.
const BUSY_SQLSTATES = new Set(["55P03", "40P01", "40001"]);

async function withDatabase<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (!BUSY_SQLSTATES.has(String((error as { code?: string }).code ?? ""))) {
      return refuseDatabaseError(error);
    }
  }
  try {
    return await work();
  } catch (error) {
    return refuseDatabaseError(error);
  }
}

function refuseDatabaseError(error: unknown): never {
  const code = String((error as { code?: string }).code ?? "");
  if (BUSY_SQLSTATES.has(code)) throw new Refusal(503, "busy with concurrent requests, retry later", "busy");
  if (code === "IB001") throw new Refusal(401, "replayed signature", "replayed");
  // The SQL function refused a value the checks above let through: the sender's fault.
  if (code === "22023") throw badRequest(String((error as Error).message));
  const sqlstate = /^[0-9A-Z]{5}$/.test(code);
  if (!sqlstate || /^(08|57P|53)/.test(code)) {  // no server, or a server going away
    throw new Refusal(503, "database unavailable, retry later", "unavailable");
  }
  throw error;  // a statement the server refused: a bug, answered 500 as in Python
}

// A 503 says when to come back, as the Python receiver's does.
const REFUSAL_HEADERS: Record<number, HeadersInit> = { 405: { allow: "POST" }, 503: { "retry-after": "1" } };

function answer(status: number, document: Record<string, Json>, extra: HeadersInit = {}) {
  return new Response(JSON.stringify(document), {
    status, headers: { "content-type": "application/json", ...extra },
  });
}

/** The function: POST …/odoo-webhook, and its batch sibling POST …/odoo-webhook/batch. */
export async function handleRequest(req: Request): Promise<Response> {
  const started = performance.now();
  const path = new URL(req.url).pathname;
  const batch = path.endsWith("/odoo-webhook/batch");
  if (!batch && !path.endsWith("/odoo-webhook")) {
    return answer(404, { ok: false, error: "not found" });
  }
  const log = (outcome: string, status: number, extra: Record<string, Json> = {}) =>
    console.log(JSON.stringify({
      outcome, status, latency_ms: Math.round((performance.now() - started) * 100) / 100, ...extra,
    }));
  const problem = secretProblem(secrets());
  if (problem !== null) {
    log("misconfigured", 503);
    return answer(503, { ok: false, error: problem });
  }
  try {
    if (batch) {
      const results = await acceptBatch(req);
      const count = (status: string) => results.filter((r) => r.status === status).length;
      const counts = { stored: count("stored"), duplicates: count("duplicate"), refused: count("refused") };
      log("batch", 200, counts);
      return answer(200, { ok: true, ...counts, results });
    }
    const stored = await accept(req);
    log(stored.duplicate ? "duplicate" : "stored", 200,
      { event_id: stored.event_id, event_type: stored.event_type });
    return answer(200, { ok: true, event_id: stored.event_id, duplicate: stored.duplicate });
  } catch (error) {
    if (!(error instanceof Refusal)) {
      log("error", 500);
      return answer(500, { ok: false, error: "internal error" });
    }
    log(error.outcome, error.status);
    return answer(error.status, { ok: false, error: error.message }, REFUSAL_HEADERS[error.status] ?? {});
  }
}

export default { fetch: handleRequest };
