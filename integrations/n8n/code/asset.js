// Asset handler (the seed's asset-handler.json): one Mattermost line per booking event.
const STATES = { reserved: 'reserved', checked_out: 'checked out', checked_in: 'checked in', overdue: 'OVERDUE' };
return $input.all().map(({ json: { type, shown } }, index) => {
  const state = STATES[type.split('.')[1]] || type;
  const text = `:package: **${shown.asset_name}** ${state} by ${shown.reserved_by_name}, `
    + `${shown.reserved_from} → ${shown.reserved_to}`;
  return { json: { text }, pairedItem: index };
});
