# The study preset (included from the main Makefile, after scripts/arena.mk):
#
#   make arena PRESET=study MODEL=<hub id or local dir> DOMAIN=math|medical [REGIME=sft|rlvr] [SERVE=URL]
#
# plans the PEFT-Arena study's setting: its training data (STUDY_DATA, in the study's own record layout,
# read by finetune's peft-arena format), every method of STUDY_METHODS trained with the study's settings,
# the base and each method evaluated on the domain's target benchmarks and on IFEval, BBH and NQ-open under
# --protocol study, and the report. Every number comes from one table, peftarena_cli/presets.py, each
# value with the file of the study's code it is taken from (docs/report.md, "The study preset").
#
# SERVE=URL evaluates through served models (--backend openai --base-url URL on every eval stage), each
# fine-tune under its own served name: the base stages ask for --served-model $(SERVE_BASE_NAME) (default
# MODEL), method M's for --served-model M (no --adapter: MODEL only gives the tokenizer and chat template);
# SERVE_M=URL sends M's stages to another server. `make study-train` trains first, `make study-serve-plan`
# prints the servers to start under those names (docs/report.md, "The study preset").
# On a cluster, PEFTARENA="srun ... .venv/bin/peftarena" sends every stage through the launcher, and
# make -jN runs independent stages at once (docs/large-models.md, "On a cluster").
#
# Knobs (override on the command line):
DOMAIN             ?= math
STUDY_RUNS         ?= runs/study-$(DOMAIN)-$(REGIME)
STUDY_METHODS      ?= $(if $(filter command line,$(origin ARENA_METHODS)),$(ARENA_METHODS),$(shell $(PY) -m peftarena_cli.presets methods $(REGIME)))
# the training file: the path the study's scripts read (download it from the hub dataset the preset names,
# docs/report.md), or another file / directory / hub id in the same layout
STUDY_DATA         ?= $(shell $(PY) -m peftarena_cli.presets data $(DOMAIN))
STUDY_DATA_CONFIG  ?=
STUDY_TASKS        ?= $(shell $(PY) -m peftarena_cli.presets tasks $(DOMAIN))
# the domain's own eval-target options (math: the study's --prompt-type cot)
STUDY_TARGET_PRESET ?= $(shell $(PY) -m peftarena_cli.presets target-args $(DOMAIN))
STUDY_SUITE        ?= $(shell $(PY) -m peftarena_cli.presets suite)
# processes per training run (the study's global batch is split over them: grad-accum shrinks)
STUDY_WORLD        ?= 1
# settings replaced in every run's finetune command, e.g. STUDY_SET="steps=20 max_length=1024"
STUDY_SET          ?=
# evaluation sizes (empty: every item, as the study) and extra eval options (e.g. "-n 4" for a quick look)
STUDY_TARGET_LIMIT  ?=
STUDY_GENERAL_LIMIT ?=
STUDY_TARGET_ARGS   ?=
STUDY_GENERAL_ARGS  ?=
SERVE              ?=
# the base's served name (vLLM's default: the model argument of `vllm serve`)
SERVE_BASE_NAME    ?= $(MODEL)
STUDY_JOBS         ?= 1

SR          = $(STUDY_RUNS)
# $(call study_serve,URL,NAME): the served backend's options (nothing without a URL)
study_serve = $(if $(strip $(1)),--backend openai --base-url $(strip $(1)) --served-model $(2))
study_url   = $(or $(SERVE_$(1)),$(SERVE))
study_limit = $(if $(strip $(1)),--limit $(strip $(1)))
# method M's model: its adapter on MODEL (a full fine-tune: its own directory); served, MODEL and M's served name
study_model = $(if $(call study_url,$(1)),$(MODEL) $(call study_serve,$(call study_url,$(1)),$(1)),$(if \
	$(filter full,$(1)),$(SR)/$(1)/train/final,$(MODEL) --adapter $(SR)/$(1)/train/final))
study_train = $(shell $(PY) -m peftarena_cli.presets finetune-args $(DOMAIN) $(REGIME) $(1) --world $(STUDY_WORLD) $(STUDY_SET))
STUDY_EVALS = $(foreach m,base $(STUDY_METHODS),$(SR)/$(m)/eval_target.parquet $(SR)/$(m)/eval_general.parquet)

.PHONY: study-run study-stages study-train study-serve-plan
.PRECIOUS: $(SR)/%/train/.done

study-run:
	@$(PY) -m peftarena_cli.presets tasks $(DOMAIN) >/dev/null
	@$(PY) -m peftarena_cli.presets finetune-args $(DOMAIN) $(REGIME) lora $(STUDY_SET) >/dev/null
	@$(call jobs_env,$(STUDY_JOBS)) $(MAKE) --no-print-directory $(call jobs_flags,$(STUDY_JOBS)) study-stages

# the training runs only (the first phase of a served evaluation)
study-train: install
	@$(PY) -m peftarena_cli.presets finetune-args $(DOMAIN) $(REGIME) lora $(STUDY_SET) >/dev/null
	@$(call jobs_env,$(STUDY_JOBS)) $(MAKE) --no-print-directory $(call jobs_flags,$(STUDY_JOBS)) \
		$(foreach m,$(STUDY_METHODS),$(SR)/$(m)/train/.done)

# the servers that answer SERVE's stages under the names they ask for, and the SERVE variables
study-serve-plan:
	@$(PY) -m peftarena_cli.presets serve-plan $(MODEL) $(SR) $(SERVE_BASE_NAME) $(STUDY_METHODS)

study-stages: $(SR)/report/leaderboard.parquet
	@echo
	@echo "study ($(DOMAIN), $(REGIME)): report in $(SR)/report/ (plane.png, leaderboard.md)"
	@sed -n '/^| method/,/^$$/p' $(SR)/report/leaderboard.md

$(SR)/report/leaderboard.parquet: $(STUDY_EVALS)
	$(PA) report $(SR) -o $(SR)/report

# ---------------------------------------------------------------- training (the study's settings per method)
$(SR)/%/train/.done:
	@mkdir -p $(SR)/$*
	$(PA) finetune $(MODEL) -o $(SR)/$*/train --method $* --data $(STUDY_DATA) \
		$(if $(STUDY_DATA_CONFIG),--data-config $(STUDY_DATA_CONFIG)) $(call study_train,$*) \
		$(if $(wildcard $(SR)/$*/train/manifest.json),--resume)
	@touch $@

# ---------------------------------------------------------------- evaluation (--protocol study)
$(SR)/base/eval_target.parquet:
	@mkdir -p $(@D)
	$(PA) eval-target $(MODEL) --task $(STUDY_TASKS) --protocol study $(STUDY_TARGET_PRESET) \
		$(call study_serve,$(SERVE),$(SERVE_BASE_NAME)) $(call study_limit,$(STUDY_TARGET_LIMIT)) $(STUDY_TARGET_ARGS) -o $@ --summary $(@D)/eval_target_summary.parquet

$(SR)/base/eval_general.parquet:
	@mkdir -p $(@D)
	$(PA) eval-general $(MODEL) --suite $(STUDY_SUITE) --protocol study \
		$(call study_serve,$(SERVE),$(SERVE_BASE_NAME)) $(call study_limit,$(STUDY_GENERAL_LIMIT)) $(STUDY_GENERAL_ARGS) -o $@ --summary $(@D)/eval_general_summary.parquet

$(SR)/%/eval_target.parquet: $(SR)/%/train/.done
	$(PA) eval-target $(call study_model,$*) --task $(STUDY_TASKS) --protocol study $(STUDY_TARGET_PRESET) \
		$(call study_limit,$(STUDY_TARGET_LIMIT)) $(STUDY_TARGET_ARGS) -o $@ --summary $(@D)/eval_target_summary.parquet

$(SR)/%/eval_general.parquet: $(SR)/%/train/.done
	$(PA) eval-general $(call study_model,$*) --suite $(STUDY_SUITE) --protocol study \
		$(call study_limit,$(STUDY_GENERAL_LIMIT)) $(STUDY_GENERAL_ARGS) -o $@ --summary $(@D)/eval_general_summary.parquet
