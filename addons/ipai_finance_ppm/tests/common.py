from datetime import date

from odoo.addons.ipai_enterprise_bridge.tests.common import OutboxAssertions
from odoo.tests import TransactionCase


class FinanceCase(OutboxAssertions, TransactionCase):
    """A Finance PPM project with a stage mapped to each step, and a 1601-C task."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.project = cls.env["project.project"].create(
            {"name": "BIR filings 2026", "ipai_is_finance_ppm": True}
        )
        cls.stages = {}
        for sequence, (name, step) in enumerate(
            [
                ("To prepare", False),
                ("Preparing", "in_progress"),
                ("For review", "submitted"),
                ("Approved", "approved"),
                ("Filed", "filed"),
            ]
        ):
            cls.stages[step or "draft"] = cls.env["project.task.type"].create(
                {
                    "name": name,
                    "sequence": sequence,
                    "ipai_finance_step": step,
                    "project_ids": [(4, cls.project.id)],
                }
            )
        cls.form_1601c = cls.env.ref("ipai_finance_ppm.bir_form_1601c")
        cls.accountant = cls.env["res.users"].create(
            {
                "name": "Ana Reyes",
                "login": "ana.reyes",
                "groups_id": [(6, 0, [cls.env.ref("project.group_project_user").id])],
            }
        )
        cls.logframe = cls.env["ipai.logframe"].create({"name": "Returns on time", "level": "output"})

    def new_task(self, **values):
        return self.env["project.task"].create(
            {
                "name": "1601-C January",
                "project_id": self.project.id,
                "stage_id": self.stages["draft"].id,
                "ipai_bir_form_id": self.form_1601c.id,
                "ipai_period_covered": "2026-01",
                "ipai_task_code": "BIR-1601C-2026-01",
                "ipai_prep_deadline": date(2026, 2, 5),
                "ipai_filing_deadline": date(2026, 2, 10),
                "ipai_employee_code": "EMP-0023",
                "ipai_logframe_id": self.logframe.id,
                "user_ids": [(6, 0, [self.accountant.id])],
                **values,
            }
        )
