# The quick-start commands of the README. Each creates .venv/ (Python >= 3.10) and installs memvlm into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: train test test-oldest install install-dev export readme docs docs-check clean

train: install           ## install memvlm and train memclip-tiny on the bundled digits-captions data
	$(BIN)/memvlm train

test: install-dev        ## install memvlm with its dev tools and run every notebook and tests/
	$(BIN)/python -m pytest tests -q

test-oldest:             ## the same tests on the oldest versions memvlm supports (.ci/oldest.txt), in .venv-oldest/
	test -x .venv-oldest/bin/python || $(PYTHON) -m venv .venv-oldest
	.venv-oldest/bin/python -m pip install -q --upgrade pip
	.venv-oldest/bin/python -m pip install -q -c .ci/oldest.txt -e ".[dev]"
	.venv-oldest/bin/python -m pip check
	.venv-oldest/bin/python -m pytest tests -q

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: setup.py settings.ini
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

export: install-dev      ## write memvlm/ from the notebooks and README.md from nbs/index.ipynb
	$(BIN)/nbdev_export
	$(BIN)/python .ci/make_readme.py

docs: install-dev        ## build the docs site into _docs/ offline: nbdev processes the notebooks, smalldocs renders them
	$(BIN)/python .ci/build_docs.py

docs-check: docs         ## check _docs/ in headless Chromium (pages, API entries, plots, links) and take screenshots
	$(BIN)/python .ci/check_docs.py

clean:
	rm -rf $(VENV) .venv-oldest build *.egg-info _docs _proc
