"""A BIR filing's next step from its Mattermost message (Submit for review, Approve filing,
Mark filed): the bridge's callback checks the capability and the clicker; this moves the task
to its project's stage of that step, as the clicker, as dragging it in the kanban would."""

from functools import partial

from odoo import models
from odoo.addons.ipai_enterprise_bridge.models.ipai_chat_action import (
    ChatActionRefused,
    locked,
    log_values,
    outcome_line,
    updated_post,
)

from ipai_bus_lib.core.catalog import CATALOG

from .project_task_type import FINANCE_STEPS

STEP_ORDER = [None, *(step for step, _label in FINANCE_STEPS)]  # None: before any mapped step


class IpaiChatActionLog(models.Model):
    _inherit = "ipai.chat.action.log"

    def _ipai_chat_handlers(self):
        moves = {
            action.name: action.causes
            for spec in CATALOG.values()
            if spec.domain.link_model == "project.task"
            for action in spec.actions
        }
        return {
            **super()._ipai_chat_handlers(),
            **{
                ("project.task", name): partial(_move_task, caused=caused)
                for name, caused in moves.items()
            },
        }


def _move_task(log, capability, task, reason, call, context, *, caused):
    step = CATALOG[caused].step
    locked(task)
    current = task.sudo()
    if not current._ipai_is_finance():
        raise ChatActionRefused(
            "not a finance task", log.env._("This task is not a BIR filing: nothing was changed.")
        )
    if STEP_ORDER.index(current.ipai_finance_step or None) >= STEP_ORDER.index(step):
        raise ChatActionRefused(
            "task past that step",
            log.env._(
                "%(task)s is already %(stage)s: nothing was changed.",
                task=current.name,
                stage=current.stage_id.name,
            ),  # fmt: skip
        )
    stage = (
        log.env["project.task.type"]
        .sudo()
        .search(
            [("ipai_finance_step", "=", step), ("project_ids", "in", current.project_id.ids)], limit=1
        )
    )
    if not stage:
        raise ChatActionRefused(
            "project has no stage for that step",
            log.env._(
                "%(project)s has no stage for that step: move the task in Odoo.",
                project=current.project_id.name,
            ),  # fmt: skip
        )
    log._ipai_once(
        capability,
        log_values(capability, task.env.user, call),
        lambda: task.write({"stage_id": stage.id}),
    )
    return updated_post(context, outcome_line(log.env, task.env.user, caused))
