// Expense handler (the seed's expense-handler.json): one Mattermost line per expense event.
// Payload text arrives already made safe for Markdown ($json.shown), never as markup.
const VERBS = { submitted: 'submitted for approval', approved: 'approved', rejected: 'refused', paid: 'paid' };
return $input.all().map(({ json: { type, shown } }, index) => {
  const verb = VERBS[type.split('.')[1]] || type;
  const text = `:receipt: **Expense report ${verb}**: ${shown.employee_name} · ${shown.amount} ${shown.currency}\n`
    + `${shown.description} (${shown.category}, ${shown.date})`;
  return { json: { text }, pairedItem: index };
});
