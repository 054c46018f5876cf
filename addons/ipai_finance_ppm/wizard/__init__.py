from . import ipai_filing_task_generator
