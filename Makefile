# The two commands of the README. Both do all set-up first (idempotent).
.PHONY: run test bootstrap lint bench

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	.venv/bin/pgcrdr up

test: bootstrap
	scripts/run-tests.sh

lint: bootstrap
	.venv/bin/ruff check pgcrdr tests bench
	.venv/bin/mypy

bench: bootstrap
	.venv/bin/python bench/create_and_get.py
