.DEFAULT_GOAL := help
SHELL := /bin/bash

help: ## list every target with a one-line description
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

install: ## install the pinned dependencies (npm ci)
	npm ci

run: ## run every service in one process on the embedded defaults (PGlite, in-process Redis twins)
	npm start

generate: ## regenerate gen/ (and the test fixtures) from the protos with buf
	npx buf generate
	cd test/fixtures && npx buf generate

lint: ## buf lint, buf breaking against the committed baseline, and the TypeScript type check
	npx buf lint
	npx buf breaking --against .ci/buf-baseline.binpb
	npx tsc --noEmit

baseline: ## refresh the buf breaking baseline image after an intended, reviewed contract change
	npx buf build -o .ci/buf-baseline.binpb

test: ## run the test suite (needs Postgres and Redis on localhost, as in the README)
	npm test

ci: ## run exactly what CI runs
	bash .ci/run

migrate: ## run every service's migrations against DATABASE_URL (or the embedded PGlite)
	npm run migrate

seed: ## load a generated city (SEED=42 RESTAURANTS=5000)
	npm run seed -- --seed $${SEED:-42} --restaurants $${RESTAURANTS:-5000}

bench: ## run the benchmarks (orders, search, ingest, tracking, dispatch, eta) against real Postgres and Redis, one at a time
	npm run bench -- orders
	npm run bench -- search
	npm run bench -- ingest
	npm run bench -- tracking
	npm run bench -- dispatch
	npm run bench -- eta

simulate: ## stream simulated drivers to a running dabba (DRIVERS=50 DURATION=60 BAD_RATIO=0)
	npm run simulate -- --drivers $${DRIVERS:-50} --seconds $${DURATION:-60} --bad-ratio $${BAD_RATIO:-0}

token: ## print a token (ROLE=customer SUB=c1 RESTAURANT=)
	npm run --silent token -- --role $${ROLE:-customer} --sub $${SUB:-c1} $${RESTAURANT:+--restaurant $$RESTAURANT}

.PHONY: help install run generate lint baseline test ci migrate seed bench simulate token
