// Finance handler (the seed's finance-handler.json): one Mattermost line per BIR filing task
// event; "E-mail the filing team" mails overdue and filed ones.
return $input.all().map(({ json: { type, shown, event } }, index) => {
  const overdue = type === 'finance_task.overdue' ? ` · **${event.data.payload.days_overdue} days overdue**` : '';
  const text = `:calendar: **BIR ${shown.bir_form}** ${shown.period_covered}: ${shown.task_name} is `
    + `${shown.stage_name} (filing deadline ${shown.filing_deadline}, ${shown.assigned_to})${overdue}`;
  return { json: { text }, pairedItem: index };
});
