# Three verbs (run, test, check) plus bench. Everything runs from a virtualenv the
# Makefile creates, so a fresh machine needs only Python >= 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# A second client environment: SDK 2.26 sends JSON where 3.x sends multipart, and both must work.
SDK2_VENV ?= .venv-sdk2
SDK2_STAMP := $(SDK2_VENV)/.installed
RUN_STAMP := $(VENV)/.installed

.PHONY: run test check bench sim token clean image

$(BIN)/python:
	@echo "Creating the virtualenv $(VENV) (first run only)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Not quiet: the first `make run` downloads for about a minute, and a silent terminal for that
# long looks hung. `make test` installs quietly (its own output is what matters there).
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	@echo "Installing the gateway into $(VENV) (first run only, about a minute)..."
	$(BIN)/pip install --progress-bar on -e .
	touch $@

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(RUN_STAMP)

## run: serve the gateway on 127.0.0.1:8080 (development mode: embedded Redis, simulator upstream)
##      another port: make run ARGS="--port 8081"; more options: make run ARGS="--help"
run: $(RUN_STAMP)
	$(BIN)/gateway serve --dev --config config/dev.yaml $(ARGS)

$(SDK2_STAMP):
	$(PYTHON) -m venv $(SDK2_VENV)
	$(SDK2_VENV)/bin/pip install --quiet "openai==2.26.0"
	touch $@

## test: install the dev dependencies and run the whole suite
test: $(STAMP) $(SDK2_STAMP)
	GATEWAY_SDK2_PYTHON=$(SDK2_VENV)/bin/python $(BIN)/python -m pytest $(ARGS)

## check: formatting, lint and types
check: $(STAMP)
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/ruff check gateway tests bench
	$(BIN)/mypy gateway bench tests

## bench: gateway vs direct vs nginx (needs wrk and nginx: see docs/benchmarks.md)
bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

## image: build deploy/Dockerfile, run it and check that it answers /healthz and turns healthy
## (not part of test). Needs a Docker engine; on a machine without one, as root:
##   apt-get install docker.io debootstrap; dockerd --iptables=false --bridge=none &
## The default base is Debian's Python 3.11 made with debootstrap (as root), for machines that
## reach no image registry; IMAGE_BASE=<image> builds on another, e.g. the Dockerfile's pinned
## python:3.11.16-slim-bookworm. Host networking (no bridge needed), so port 8080 must be free.
## The base trusts this machine's local CAs (/usr/local/share/ca-certificates), as pip here
## does when a proxy re-signs the package index.
image: IMAGE_BASE ?= crazyrouter-gateway-base:bookworm
image: IMAGE_TAG ?= crazyrouter-gateway:local
image:
	@if [ "$(IMAGE_BASE)" = crazyrouter-gateway-base:bookworm ] \
	    && ! docker image inspect $(IMAGE_BASE) >/dev/null 2>&1; then \
	  set -e; root=$$(mktemp -d); chmod 755 "$$root"; trap 'rm -rf "$$root"' EXIT; \
	  echo "image: building $(IMAGE_BASE) with debootstrap"; \
	  debootstrap --variant=minbase \
	    --include=python3,python3-venv,python-is-python3,ca-certificates bookworm "$$root" >/dev/null; \
	  if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then \
	    cp /usr/local/share/ca-certificates/*.crt "$$root/usr/local/share/ca-certificates/"; \
	    chroot "$$root" update-ca-certificates >/dev/null; \
	  fi; \
	  rm -rf "$$root"/var/cache/apt/archives/*.deb "$$root"/var/lib/apt/lists/*; \
	  tar -C "$$root" -c . | docker import \
	    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	    --change 'ENV LANG=C.UTF-8' - $(IMAGE_BASE) >/dev/null; \
	fi
	docker build --network host --build-arg PYTHON_IMAGE=$(IMAGE_BASE) \
	  -f deploy/Dockerfile -t $(IMAGE_TAG) .
	@set -e; name=crazyrouter-gateway-image-check-$$$$; \
	if curl -s -o /dev/null http://127.0.0.1:8080/; then \
	  echo "image: port 8080 is in use; stop what listens there" >&2; exit 1; fi; \
	trap 'docker rm -f "$$name" >/dev/null' EXIT; \
	REDIS_URL=redis://127.0.0.1:1/0 CRAZYROUTER_API_KEYS=check:not-a-real-key \
	GATEWAY_JWT_SECRET=$$($(PYTHON) -c 'import secrets; print(secrets.token_hex(32))') \
	docker run -d --name "$$name" --network host --read-only --tmpfs /tmp --cap-drop ALL \
	  --security-opt no-new-privileges:true \
	  -e REDIS_URL -e CRAZYROUTER_API_KEYS -e GATEWAY_JWT_SECRET $(IMAGE_TAG) >/dev/null; \
	for i in $$(seq 60); do \
	  curl -fsS http://127.0.0.1:8080/healthz >/dev/null 2>&1 && break; \
	  [ $$i -lt 60 ] || { docker logs "$$name"; echo "image: no /healthz in 30 s" >&2; exit 1; }; \
	  sleep 0.5; done; \
	echo "image: GET /healthz -> $$(curl -fsS http://127.0.0.1:8080/healthz)"; \
	for i in $$(seq 60); do \
	  health=$$(docker inspect -f '{{.State.Health.Status}}' "$$name"); \
	  [ "$$health" = healthy ] && break; \
	  [ $$i -lt 60 ] || { docker logs "$$name"; echo "image: still $$health" >&2; exit 1; }; \
	  sleep 1; done; \
	echo "image: $(IMAGE_TAG) on $(IMAGE_BASE): HEALTHCHECK healthy, uid $$(docker exec "$$name" id -u)"

sim: $(RUN_STAMP)
	$(BIN)/gateway sim $(ARGS)

clean:
	rm -rf $(VENV) $(SDK2_VENV) .gateway-data .mypy_cache .ruff_cache
