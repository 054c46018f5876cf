from . import chat_actions
