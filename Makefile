# The two commands a newcomer needs: `make run` and `make test`. Everything else is for ops.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
# Development defaults for `make run`; real environment variables win.
RUN_ENV := DEBUG=$${DEBUG:-1}
# Tests need a SECRET_KEY; pytest gets one from abtest/pytest_plugin.py, manage.py from here.
TEST_ENV := SECRET_KEY=$${SECRET_KEY:-insecure-test-only-key}

.PHONY: run test lint format bench calibration fixtures docs docs-serve worker beat migrate lock clean env-file

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "Python 3.11 is required (found %d.%d); set PYTHON=python3.11" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	@touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	@touch $@ $(VENV)/.runtime

## run: install, migrate, load demo data, create a staff user and serve on 127.0.0.1:$(PORT)
run: $(VENV)/.runtime
	$(RUN_ENV) $(BIN)/python manage.py migrate --noinput
	$(RUN_ENV) $(BIN)/python manage.py seed_demo --if-empty
	$(RUN_ENV) $(BIN)/python manage.py ensure_admin
	$(RUN_ENV) $(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

## test: lint, format check, migrations check and the whole test suite
test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(TEST_ENV) $(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: every benchmark under bench/, one table
bench: $(VENV)/.dev
	$(TEST_ENV) $(BIN)/python bench/run.py $(BENCH_ARGS)

## calibration: the seeded A/A and power simulation behind docs/statistics.md
calibration: $(VENV)/.dev
	$(BIN)/python bench/calibration.py

## fixtures: regenerate the gbstats reference fixtures (gbstats 0.8.0 in its own venv)
fixtures: $(VENV)/.dev
	$(BIN)/python bench/make_gbstats_fixtures.py

## docs: build the MkDocs site strictly (warnings are errors)
docs: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir var/site

docs-serve: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

migrate: $(VENV)/.runtime
	$(BIN)/python manage.py migrate --noinput

## worker / beat: Celery processes (need REDIS_URL; without it tasks run in-process)
worker: $(VENV)/.runtime
	$(BIN)/celery -A abtest worker -Q email,compute -l info

beat: $(VENV)/.runtime
	@mkdir -p var
	$(BIN)/celery -A abtest beat -l info --schedule var/celerybeat-schedule

## lock: recompile the pinned requirement files from requirements*.in
lock: $(VENV)/.dev
	$(BIN)/pip-compile --quiet --strip-extras --no-header --no-emit-index-url --no-emit-find-links --allow-unsafe -o requirements.txt requirements.in
	$(BIN)/pip-compile --quiet --strip-extras --no-header --no-emit-index-url --no-emit-find-links --allow-unsafe -o requirements-dev.txt requirements-dev.in

clean:
	rm -rf var/site var/staticfiles .pytest_cache .ruff_cache

## env-file: write .env with fresh random secrets for the docker-compose stack
env-file:
	@test ! -e .env || { echo ".env exists; remove it first to regenerate"; exit 1; }
	@$(PYTHON) -c 'import secrets; print("SECRET_KEY=" + secrets.token_urlsafe(50)); print("POSTGRES_PASSWORD=" + secrets.token_urlsafe(24)); print("PGADMIN_PASSWORD=" + secrets.token_urlsafe(16))' > .env
	@echo "wrote .env"
