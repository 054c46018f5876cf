"""Approve or refuse an expense report from Mattermost: the callback as Mattermost's server sends
it (server/channels/app/integration_action.go, model/integration_action.go), posted over HTTP to
Odoo's endpoint; every refusal leaves the report unchanged and is recorded."""

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from odoo import Command
from odoo.addons.hr_expense.tests.common import TestExpenseCommon
from odoo.tests import HttpCase, tagged

from ipai_bus_lib.core import chat_actions

from ..models.ipai_chat_action import ACTION_KEYS_PARAMETER, MATTERMOST_URL_PARAMETER
from .common import MATTERMOST_CHANNEL, OutboxAssertions, mattermost_call

KEY = "chat-actions-test-key-0123456789abcdef"
OLD_KEY = "chat-actions-old-key-0123456789abcdef"
CHANNEL = MATTERMOST_CHANNEL
MANAGER_MM = "8ugbh9ugdiyxpkrp8q8qh7rwnh"
EMPLOYEE_MM = "t1c4f5ny5bbkzqjxp3x6c7ssuh"
ENDPOINT = "/ipai_bus/mattermost/action"
MESSAGE = "📝 **Expense submitted**\n**Employee:** Maria Santos"


class MattermostDialogs:
    """Mattermost's /api/v4/actions/dialogs/open on loopback: records each dialog asked for."""

    def __init__(self):
        self.opened = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.opened.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@tagged("post_install", "-at_install")
class TestChatActions(OutboxAssertions, HttpCase, TestExpenseCommon):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env["ir.config_parameter"].sudo().set_param(ACTION_KEYS_PARAMETER, f"{KEY},{OLD_KEY}")
        cls.expense_user_manager.ipai_mattermost_user_id = MANAGER_MM
        cls.expense_user_employee.ipai_mattermost_user_id = EMPLOYEE_MM

    def submitted_report(self, name="Client visit"):
        sheet = self.env["hr.expense.sheet"].create(
            {
                "name": name,
                "employee_id": self.expense_employee.id,
                "expense_line_ids": [
                    Command.create(
                        {
                            "name": "Taxi",
                            "employee_id": self.expense_employee.id,
                            "product_id": self.product_c.id,
                            "total_amount_currency": 250.0,
                        }
                    )
                ],
            }
        )
        sheet.action_submit_sheet()
        return sheet

    def capability(self, sheet, action="approve", key=KEY, **changes):
        claims = {
            "action": action,
            "event_id": str(uuid.uuid4()),
            "record": f"hr.expense/{sheet.expense_line_ids[0].id}",
            "who": f"channel:{CHANNEL}",
            **changes,
        }
        return chat_actions.issue(key, **claims)

    def click(self, capability, *, user=MANAGER_MM, sheet=None, context=None, **fields):
        """POST the callback exactly as Mattermost's server builds it."""
        record = f"hr.expense/{sheet.expense_line_ids[0].id}" if sheet else None
        if context is None:
            context = {
                "action": "approve",
                "capability": capability,
                "record": record,
                "message": MESSAGE,
            }
        call = mattermost_call(user, context, **fields)
        answer = self.url_open(
            ENDPOINT, data=json.dumps(call), headers={"Content-Type": "application/json"}
        )
        self.assertEqual(answer.headers["Content-Type"], "application/json")
        return answer.json()

    def log(self):
        return self.env["ipai.chat.action.log"].sudo().search([], order="id desc", limit=1)

    def assertRefused(self, answer, sheet, reason, says, approvals=0):
        sheet.invalidate_recordset()
        self.assertEqual(sheet.approval_state, "submit", "a refusal changes nothing")
        self.assertIn(says, answer["ephemeral_text"])
        self.assertNotIn("update", answer, "the post stays as it was")
        self.assertEqual((self.log().outcome, self.log().reason), ("refused", reason))
        self.assertEqual(len(self.outbox("expense.approved")), approvals, "and puts nothing on the bus")

    def test_the_mapped_manager_approves_from_the_channel_and_the_bus_hears_it_once(self):
        sheet = self.submitted_report()
        answer = self.click(self.capability(sheet), sheet=sheet)
        sheet.invalidate_recordset()
        self.assertEqual(sheet.approval_state, "approve")
        update = answer["update"]
        self.assertTrue(update["message"].startswith(MESSAGE), "the message as the bus wrote it")
        self.assertRegex(update["message"], r"✅ Approved by .+ at \d\d:\d\d ")
        self.assertIn(self.expense_user_manager.name, update["message"])
        self.assertEqual(update["props"], {"attachments": []}, "no buttons left")
        self.assertEqual(len(self.outbox("expense.approved")), 1, "one line, one event")
        log = self.log()
        self.assertEqual(
            (log.outcome, log.user_id, log.mattermost_user_id, log.action),
            ("accepted", self.expense_user_manager, MANAGER_MM, "approve"),
        )
        self.assertEqual(sheet.user_id, self.expense_user_manager, "approved as the manager")

    def test_a_rotated_out_key_still_verifies_until_removed(self):
        sheet = self.submitted_report()
        self.click(self.capability(sheet, key=OLD_KEY), sheet=sheet)
        sheet.invalidate_recordset()
        self.assertEqual(sheet.approval_state, "approve")

    def test_no_capability(self):
        sheet = self.submitted_report()
        answer = self.click(None, context={"action": "approve"})
        self.assertRefused(answer, sheet, "capability malformed", "cannot be used")

    def test_an_altered_capability(self):
        sheet = self.submitted_report()
        token = self.capability(sheet)
        version, claims, signature = token.split(".")
        decoded = json.loads(chat_actions._unb64(claims))
        other = self.submitted_report("Other visit")
        decoded["rec"] = f"hr.expense/{other.expense_line_ids[0].id}"
        forged = chat_actions._b64(json.dumps(decoded, separators=(",", ":")).encode())
        answer = self.click(f"{version}.{forged}.{signature}", sheet=other)
        self.assertRefused(answer, other, "capability bad signature", "cannot be used")
        self.assertRefused(answer, sheet, "capability bad signature", "cannot be used")

    def test_an_expired_capability(self):
        sheet = self.submitted_report()
        token = self.capability(sheet, lifetime_seconds=-1)
        answer = self.click(token, sheet=sheet)
        self.assertRefused(answer, sheet, "capability expired", "expired")

    def test_a_capability_used_twice_acts_once(self):
        sheet = self.submitted_report()
        token = self.capability(sheet)
        self.click(token, sheet=sheet)
        sheet._do_reset_approval()  # even back to draft and submitted again, the button is spent
        sheet.action_submit_sheet()
        answer = self.click(token, sheet=sheet)
        self.assertRefused(answer, sheet, "capability already used", "used already", approvals=1)

    def test_a_capability_for_another_record(self):
        sheet, other = self.submitted_report(), self.submitted_report("Other visit")
        token = self.capability(other)
        answer = self.click(token, sheet=sheet)  # copied into another message's button
        self.assertRefused(answer, sheet, "capability for another record", "another message")
        self.assertRefused(answer, other, "capability for another record", "another message")

    def test_another_channel(self):
        sheet = self.submitted_report()
        answer = self.click(self.capability(sheet), sheet=sheet, channel_id="someotherchannel")
        self.assertRefused(answer, sheet, "not for this user or channel", "not yours")

    def test_an_unmapped_mattermost_user(self):
        sheet = self.submitted_report()
        answer = self.click(self.capability(sheet), sheet=sheet, user="nobodyknowsme1234567890ab")
        self.assertRefused(answer, sheet, "Mattermost user not mapped to an Odoo user", "not linked")

    def test_a_mapped_user_without_approval_rights(self):
        sheet = self.submitted_report()
        answer = self.click(self.capability(sheet), sheet=sheet, user=EMPLOYEE_MM)
        self.assertEqual(self.log().user_id, self.expense_user_employee)
        self.assertTrue(self.log().reason.startswith("Odoo refused: You cannot approve"))
        sheet.invalidate_recordset()
        self.assertEqual(sheet.approval_state, "submit")
        self.assertIn("Odoo refused", answer["ephemeral_text"])

    def test_a_report_already_approved(self):
        sheet = self.submitted_report()
        sheet.action_approve_expense_sheets()
        answer = self.click(self.capability(sheet), sheet=sheet)
        self.assertIn("already Approved", answer["ephemeral_text"])
        self.assertEqual(self.log().reason, "report not waiting for approval")
        self.assertEqual(len(self.outbox("expense.approved")), 1, "only Odoo's own approval")

    def test_an_action_turned_off(self):
        sheet = self.submitted_report()
        self.env["ir.config_parameter"].sudo().set_param("ipai.chat_actions.approve", "0")
        answer = self.click(self.capability(sheet), sheet=sheet)
        self.assertRefused(answer, sheet, "action turned off", "turned off")

    def test_a_callback_mattermost_sends_again_approves_once(self):
        """Mattermost retries a callback it got no answer to: the second finds the report
        approved, and the capability spent. (Callbacks at the same moment, on a running Odoo,
        are in the project's tests/test_odoo_chat_actions.py: this harness serialises them.)"""
        sheet = self.submitted_report()
        token = self.capability(sheet)
        answers = [self.click(token, sheet=sheet) for _ in range(3)]
        self.assertEqual(sum("update" in answer for answer in answers), 1, answers)
        self.assertEqual(len(self.outbox("expense.approved")), 1)
        logs = self.env["ipai.chat.action.log"].sudo().search([("record_ref", "like", "hr.expense/")])
        self.assertEqual(sorted(logs.mapped("outcome")), ["accepted", "refused", "refused"])

    def test_refuse_asks_for_the_reason_in_a_dialog_and_records_it(self):
        dialogs = MattermostDialogs()
        self.addCleanup(dialogs.close)
        self.env["ir.config_parameter"].sudo().set_param(MATTERMOST_URL_PARAMETER, dialogs.url)
        sheet = self.submitted_report()
        token = self.capability(sheet, action="refuse")
        context = {
            "action": "refuse",
            "capability": token,
            "record": f"hr.expense/{sheet.expense_line_ids[0].id}",
        }
        self.assertEqual(self.click(token, context=context), {}, "Mattermost opens the dialog")
        [(path, dialog)] = dialogs.opened
        self.assertEqual(path, "/api/v4/actions/dialogs/open")
        self.assertEqual(dialog["trigger_id"], "dHJpZ2dlcg==")
        self.assertTrue(dialog["url"].endswith(ENDPOINT))
        self.assertEqual(dialog["dialog"]["state"], token)
        sheet.invalidate_recordset()
        self.assertEqual(sheet.approval_state, "submit", "nothing is refused before the reason")

        submission = {  # model.SubmitDialogRequest, as Mattermost posts it to the dialog's url
            "type": "dialog_submission",
            "url": dialog["url"],
            "callback_id": dialog["dialog"]["callback_id"],
            "state": token,
            "user_id": MANAGER_MM,
            "channel_id": CHANNEL,
            "team_id": "rdc9bgriktyx9p4kowh3dmgqyc",
            "submission": {"reason": "No receipt attached"},
            "cancelled": False,
        }
        answer = self.url_open(
            ENDPOINT, data=json.dumps(submission), headers={"Content-Type": "application/json"}
        ).json()
        self.assertEqual(answer, {}, "the dialog closes")
        sheet.invalidate_recordset()
        self.assertEqual(sheet.approval_state, "cancel")
        self.assertEqual((self.log().outcome, self.log().note), ("accepted", "No receipt attached"))
        self.assertEqual(len(self.outbox("expense.rejected")), 1)
        self.assertTrue(
            any("No receipt attached" in (message.body or "") for message in sheet.message_ids),
            "Odoo's own refusal message carries the reason",
        )

    def test_a_dialog_submission_of_the_wrong_shape_refuses_and_changes_nothing(self):
        sheet = self.submitted_report()
        token = self.capability(sheet, action="refuse")
        for submission in ("No receipt", ["No receipt"], None, {"reason": 12}):
            answer = self.url_open(
                ENDPOINT,
                data=json.dumps(
                    {
                        "type": "dialog_submission",
                        "state": token,
                        "user_id": MANAGER_MM,
                        "channel_id": CHANNEL,
                        "submission": submission,
                    }  # fmt: skip
                ),
                headers={"Content-Type": "application/json"},
            ).json()
            self.assertIn("error", answer, submission)
            sheet.invalidate_recordset()
            self.assertEqual(sheet.approval_state, "submit", "no reason, no refusal")

    def test_what_is_not_a_mattermost_call_is_400_and_changes_nothing(self):
        sheet = self.submitted_report()
        for body in (b"not json", b"[1, 2]", b'"text"'):
            answer = self.url_open(ENDPOINT, data=body, headers={"Content-Type": "application/json"})
            self.assertEqual(answer.status_code, 400)
            self.assertIn("Not a Mattermost action", answer.json()["ephemeral_text"])
        sheet.invalidate_recordset()
        self.assertEqual(sheet.approval_state, "submit")
