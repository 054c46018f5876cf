// Shapes each claimed outbox row like the event the receiver workflow hands its handlers,
// so both workflows share the same handler code.
// {{safe_text.js}}

return $('Claim events').all().map(({ json: row }, index) => ({
  json: {
    id: row.id,
    type: row.event_type,
    domain: row.event_type.split('.')[0],
    event: { type: row.event_type, data: { event_id: row.id, aggregate_type: row.aggregate_type, aggregate_id: row.aggregate_id, payload: row.payload } },
    shown: shownInMarkdown(row.payload || {}),
  },
  pairedItem: index,
}));
