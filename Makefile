# The two commands a newcomer needs: `make demo` (run the bus and watch it deliver) and
# `make test` (install what the tests need, then run them). Both build .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: up demo test lint bench clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,test]'
	touch $@

up: $(BIN)/.installed
	$(BIN)/ipai-bus up

demo: $(BIN)/.installed
	$(BIN)/ipai-bus demo

test: $(BIN)/.installed
	@$(BIN)/python scripts/ensure_test_tools.py
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/pip install --quiet ruff mypy pylint-odoo oca-odoo-pre-commit-hooks
	$(BIN)/ruff check ipai_bus_lib tests bench scripts addons integrations
	$(BIN)/ruff format --check ipai_bus_lib tests bench scripts addons integrations
	$(BIN)/mypy
	$(BIN)/pylint --rcfile=addons/.pylintrc addons/ipai_enterprise_bridge addons/ipai_finance_ppm
	$(BIN)/python scripts/addon_readme.py --check
	$(BIN)/oca-checks-odoo-module addons/ipai_enterprise_bridge/__manifest__.py addons/ipai_finance_ppm/__manifest__.py
	$(BIN)/oca-checks-po addons/ipai_enterprise_bridge/i18n/*.pot addons/ipai_finance_ppm/i18n/*.pot

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
