from . import ipai_bir_form
from . import ipai_logframe
from . import project_project
from . import project_task_type
from . import project_task
