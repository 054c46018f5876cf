import json

from odoo import http
from odoo.http import request

from ..models.ipai_chat_action import CALLBACK_PATH

MAX_CALL_BYTES = 64 * 1024


class ChatActionsController(http.Controller):
    @http.route(
        CALLBACK_PATH,
        type="http",
        auth="public",
        methods=["POST"],
        csrf=False,  # Mattermost's server posts here; the capability in the body is the proof
        save_session=False,
    )
    def mattermost_action(self):
        """A message button's (or a dialog's) callback from the Mattermost server."""
        call = None
        if (request.httprequest.content_length or 0) <= MAX_CALL_BYTES:
            # Cached: Odoo runs the handler again after a serialization failure (two clicks at
            # once), and the retry must read the same body.
            raw = request.httprequest.get_data(cache=True)
            try:
                call = json.loads(raw)
            except ValueError:
                call = None
        if not isinstance(call, dict):
            return _json({"ephemeral_text": "Not a Mattermost action: nothing was changed."}, 400)
        log = request.env["ipai.chat.action.log"].sudo()
        endpoint = request.httprequest.base_url
        return _json(log.with_context(ipai_endpoint_url=endpoint)._ipai_handle_mattermost_call(call))


def _json(answer, status=200):
    return request.make_response(
        json.dumps(answer), headers=[("Content-Type", "application/json")], status=status
    )
