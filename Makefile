# amalgam8: set-up, tests, benchmarks and the demo.
#
#   make setup   .venv + pip install -e '.[dev]' + the Debian packages the tests need
#   make test    setup, then the whole Trial suite
#   make bench   setup, then every benchmark in bench/ (each prints a table)
#   make demo    setup, then the demo (ARGS=--keep leaves it running)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the test suite needs, and those the benchmarks need on top.
# libpcre3 is the PCRE the proxy's ngx.re runs; amalgam8/rules.py checks header patterns with it.
# etcd-server and redis-server: the tests start real etcd and Redis servers on loopback ports;
# haproxy: tests/test_haproxy_front.py puts it in front of two registry replicas.
TEST_DEBS := nginx-core libnginx-mod-http-lua lua-resty-core lua-cjson lua-busted lua-rex-pcre2 libpcre3 etcd-server redis-server haproxy
BENCH_DEBS := wrk nghttp2-client
TRIAL_ARGS ?= tests

.PHONY: setup test bench demo debs bench-debs clean

setup: $(VENV)/.installed debs

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || \
	  { rm -rf $(VENV); sh scripts/debs.sh python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

debs:
	@sh scripts/debs.sh $(TEST_DEBS)

bench-debs:
	@sh scripts/debs.sh $(BENCH_DEBS)

test: setup
	A8_REQUIRE_PROXY=1 $(PY) -m twisted.trial -j2 $(TRIAL_ARGS)

BENCHMARKS ?= registry redis_wakeup controller controller_shared controller_stores proxy propagation gremlin eureka

bench: setup bench-debs
	@for name in $(BENCHMARKS); do \
	  echo "== bench/$$name"; $(PY) bench/$$name || exit 1; \
	done

demo: setup
	$(PY) scripts/demo.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info _trial_temp* twisted/plugins/dropin.cache
