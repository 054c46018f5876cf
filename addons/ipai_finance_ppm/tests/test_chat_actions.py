"""A BIR filing's next step from its Mattermost message, through the bridge's callback on real
Odoo: the task moves as the linked user, its step's event goes out once, and what cannot be
done is refused with the task unchanged."""

import json
import uuid

from odoo.addons.ipai_enterprise_bridge.tests.common import MATTERMOST_CHANNEL, mattermost_call
from odoo.tests import HttpCase, tagged

from ipai_bus_lib.core import chat_actions

from .common import FinanceCase

KEY = "finance-actions-test-key-0123456789abcd"
CHANNEL = MATTERMOST_CHANNEL
ACCOUNTANT_MM = "q3k8nhc5a7fzmxy4d1w6e2r9tp"
VIEWER_MM = "z8m2p5k1c6v9b4n7x3q0w1e2rt"


@tagged("post_install", "-at_install")
class TestFilingStepsFromTheChannel(HttpCase, FinanceCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env["ir.config_parameter"].sudo().set_param("ipai.chat_actions.keys", KEY)
        cls.accountant.ipai_mattermost_user_id = ACCOUNTANT_MM
        cls.viewer = cls.env["res.users"].create(
            {
                "name": "Portal Viewer",
                "login": "viewer",
                "groups_id": [(6, 0, [cls.env.ref("base.group_user").id])],
                "ipai_mattermost_user_id": VIEWER_MM,
            }
        )

    def click(self, task, action="mark_filed", user=ACCOUNTANT_MM):
        record = f"project.task/{task.id}"
        token = chat_actions.issue(
            KEY, action=action, event_id=str(uuid.uuid4()), record=record, who=f"channel:{CHANNEL}"
        )
        context = {"action": action, "capability": token, "record": record,
                   "message": "✅ **Finance task approved**"}  # fmt: skip
        call = mattermost_call(user, context)
        answer = self.url_open(
            "/ipai_bus/mattermost/action",
            data=json.dumps(call),
            headers={"Content-Type": "application/json"},
        )
        return answer.json()

    def last_log(self):
        return self.env["ipai.chat.action.log"].sudo().search([], order="id desc", limit=1)

    def test_mark_filed_moves_the_task_as_the_linked_accountant_and_the_bus_hears_it_once(self):
        task = self.new_task(stage_id=self.stages["approved"].id)
        answer = self.click(task)
        self.assertEqual(task.stage_id, self.stages["filed"])
        self.assertRegex(answer["update"]["message"], r"📨 Filed by Ana Reyes at \d\d:\d\d")
        self.assertEqual(len(self.outbox("finance_task.filed")), 1)
        self.assertEqual(
            (self.last_log().outcome, self.last_log().user_id), ("accepted", self.accountant)
        )
        self.assertEqual(task.write_uid, self.accountant, "moved as the accountant")

    def test_a_task_past_that_step_is_not_moved(self):
        task = self.new_task(stage_id=self.stages["filed"].id)
        answer = self.click(task, action="approve_filing")
        self.assertIn("already Filed", answer["ephemeral_text"])
        self.assertEqual(task.stage_id, self.stages["filed"])
        self.assertEqual(self.last_log().reason, "task past that step")

    def test_a_user_odoo_does_not_let_move_the_task(self):
        task = self.new_task(stage_id=self.stages["approved"].id)
        answer = self.click(task, user=VIEWER_MM)
        self.assertIn("Odoo refused", answer["ephemeral_text"])
        self.assertEqual(task.stage_id, self.stages["approved"])
        self.assertTrue(self.last_log().reason.startswith("Odoo refused"))
        self.assertFalse(self.outbox("finance_task.filed"))

    def test_a_project_without_a_stage_for_the_step(self):
        task = self.new_task(stage_id=self.stages["approved"].id)
        self.stages["filed"].ipai_finance_step = False
        answer = self.click(task)
        self.assertIn("has no stage for that step", answer["ephemeral_text"])
        self.assertEqual(task.stage_id, self.stages["approved"])

    def test_a_step_switched_off_in_settings_is_refused(self):
        settings = self.env["res.config.settings"].create({})
        self.assertTrue(settings.ipai_chat_mark_filed_enabled, "on until turned off")
        settings.ipai_chat_mark_filed_enabled = False
        settings.execute()
        task = self.new_task(stage_id=self.stages["approved"].id)
        answer = self.click(task)
        self.assertIn("turned off", answer["ephemeral_text"])
        self.assertEqual(task.stage_id, self.stages["approved"])
