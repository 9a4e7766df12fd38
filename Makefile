# Thin wrappers over the real commands. Every target installs what it needs itself.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test bench chaos fuzz lint synth deploy clean install

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,infra]'
	touch $(STAMP)

install: $(STAMP)

## Run the whole pipeline locally on the embedded default (moto on 127.0.0.1, sample events).
demo: $(STAMP)
	$(BIN)/ehrbridge local demo

## Run the whole test suite (unit, integration against moto/sockets, infra synth + cdk-nag + cfn-lint).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

## Chaos suite on the local twin: per scenario, messages in / delivered / quarantined / dead-lettered /
## duplicated / lost (fails unless lost = 0 and duplicated = 0). A short form runs inside `make test`.
chaos: $(STAMP)
	$(BIN)/ehrbridge local chaos

## Benchmarks: each prints its figures and the ratio to its baseline, measured in the same run.
bench: $(STAMP)
	@set -e; for b in benchmarks/bench_*.py; do [ -e "$$b" ] || continue; echo "== $$b"; $(BIN)/python $$b; done

## Long-form fuzzing (issue 13): FUZZ_INPUTS inputs per target (wire reader, framer, ACK builder, normalizer,
## bridge frame path) in two processes; each hypothesis example feeds FUZZ_FANOUT inputs (the drawn one and
## its PRNG neighbourhood). The seed is printed; `make fuzz FUZZ_SEED=<seed>` replays the same inputs.
## The short form (200 derandomized inputs per target) runs in `make test`.
FUZZ_INPUTS ?= 100000
FUZZ_FANOUT ?= 10
FUZZ_SEED ?= $(shell date +%s)
fuzz: $(STAMP)
	@echo "fuzz seed: $(FUZZ_SEED), $(FUZZ_INPUTS) inputs per target (replay: make fuzz FUZZ_SEED=$(FUZZ_SEED))"
	@rm -rf .fuzz; set +e; \
	EHRBRIDGE_FUZZ_PROFILE=long EHRBRIDGE_FUZZ_EXAMPLES=$$(( $(FUZZ_INPUTS) / $(FUZZ_FANOUT) )) \
	  EHRBRIDGE_FUZZ_FANOUT=$(FUZZ_FANOUT) EHRBRIDGE_FUZZ_STATS=.fuzz \
	  $(BIN)/python -m pytest tests/fuzz -q -n 2 --dist loadfile --timeout=0 -p no:randomly -p no:cacheprovider \
	  --hypothesis-seed=$(FUZZ_SEED); status=$$?; \
	$(BIN)/python -m tests.fuzz.summary .fuzz; summary=$$?; \
	echo "fuzz seed: $(FUZZ_SEED)"; exit $$(( status || summary ))

lint: $(STAMP)
	$(BIN)/ruff check .

STAGE ?= dev

## Synthesize the CDK app for STAGE (infra/stages/$(STAGE).yaml); the Lambda layer is built locally for the
## Lambda runtime (pip --platform, no Docker). docs/deploy.md has the whole procedure.
synth: $(STAMP)
	cd infra && EHRBRIDGE_STAGE=$(STAGE) ../$(BIN)/python app.py

deploy: synth
	cd infra && npx --yes aws-cdk@2 deploy --app cdk.out

clean:
	rm -rf .build cdk.out infra/cdk.out .pytest_cache .fuzz
