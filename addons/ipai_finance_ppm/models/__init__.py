from . import (
    ipai_bir_form,
    ipai_chat_action,
    ipai_logframe,
    project_project,
    project_task,
    project_task_type,
    res_config_settings,
)
