# The PEFT-Arena reproduction as Make stages over artifacts (included from the main Makefile).
#
#   make demo     LoRA on the built-in arithmetic task: train, evals, spectrum, csd, act-geom,
#                 a short interpolation, a rewind, the report          (runs/demo, ≤ 10 min on 2 cores)
#   make arena    the same for several methods                          (runs/arena)
#   make arena REGIME=rlvr   every method trained by RLVR (GRPO) instead, with path diagnostics along
#                 the trajectory checkpoints (pass@k by step)               (runs/arena-rl, dirs M-rlvr)
#   make arena-both          SFT and RLVR of every method on one plane     (runs/arena-rl, M-sft + M-rlvr)
#
# Every stage's target is the artifact it writes (written atomically by peftarena), so a rerun
# skips finished stages and an interrupted run continues where it stopped (training resumes from
# its last checkpoint). Knobs (override on the command line, e.g. `make arena ARENA_METHODS="lora oft"`):

MODEL          ?= smollm2-135m
DEMO_RUNS      ?= runs/demo
ARENA_RUNS     ?= runs/arena
ARENA_METHODS  ?= full lora pissa dora vera oft miss

# Training (SFT on the built-in arithmetic task). Steps are few so that the CPU budget holds; the
# learning rates are raised accordingly (docs/report.md, "make demo / make arena"): the method registry's
# arena_lr (peftarena_cli/methods.py); `make arena LR_lora=5e-4` overrides one.
STEPS          ?= 30
BATCH          ?= 4
# a method's learning rate: LR_<method> when given, else the registry's arena_lr (one place for both)
lr_of = $(or $(LR_$(1)),$(shell $(PY) -m peftarena_cli.methods lr $(1)))
# Evaluation sizes (items per task / per built-in general part) and analysis sizes (prompts per set).
# The demo keeps small evals (its intervals are honest, and wide); the arena's are sized for a 95 %
# half-width of about 5 points on target gain and 3 on general forgetting (docs/report.md, "Power"):
# 432 target items; per general part, items where they are cheap and their variance is (all 357 facts,
# ~14 tokens per pair of answers), fewer where generations are long (IFEval 280, BBH 200: ~150 tokens).
# TARGET_LIMIT= / GENERAL_LIMIT= on the command line set both (GENERAL_LIMIT=300: 300 per part).
DEMO_TARGET_LIMIT   ?= 32
DEMO_GENERAL_LIMIT  ?= 16
ARENA_TARGET_LIMIT  ?= 432
ARENA_GENERAL_LIMIT ?= ifeval=280,bbh=200,facts=357
TARGET_LIMIT   ?= $(DEMO_TARGET_LIMIT)
GENERAL_LIMIT  ?= $(DEMO_GENERAL_LIMIT)
ANALYSIS_N     ?= 16
# Output drift (`peftarena drift`): items per target task / general part, continuation length. The
# demo measures fewer prompts (a paired, continuous measure keeps power at small n) to stay in 10 min.
DEMO_DRIFT_LIMIT  ?= 8
ARENA_DRIFT_LIMIT ?= 32
DRIFT_LIMIT    ?= $(DEMO_DRIFT_LIMIT)
DRIFT_TOKENS   ?= 32
# Interpolation points evaluated by the sweep, and rewinding. The curve's ends (α = 0: the base, α = 1:
# the method) are taken from their own evals (scripts/join_curves.py --ends) instead of being evaluated
# twice; rewind's keep-target criterion needs them. ALPHAS=0,0.5,1 evaluates the ends anyway.
ALPHAS         ?= 0.5
PICK           ?= keep-target:0.8
INTERP_METHODS ?= lora oft

# Regimes (docs/report.md, "Regimes"). REGIME=sft (the default) is the arena above, unchanged: method
# directories RUNS/M, built-in arithmetic. Any other REGIMES (REGIME=rlvr, or REGIMES="sft rlvr" for
# `make arena-both`) is a run set in RL_RUNS whose method directories carry the regime (M-sft, M-rlvr),
# train and evaluate on TASK, save TRAJ_POINTS trajectory checkpoints and get the path diagnostics.
REGIME         ?= sft
REGIMES        ?= $(REGIME)
RL_RUNS        ?= runs/arena-rl
# The methods of a regime run set: RL_METHODS, or ARENA_METHODS when given on the command line.
RL_METHODS     ?= lora oft vera dora
RL_METHODS_     = $(if $(filter command line,$(origin ARENA_METHODS)),$(ARENA_METHODS),$(RL_METHODS))
# The task of the regime run sets: arith-1 (one addition of small numbers), which smollm2-135m solves
# often enough when sampling for GRPO to get a reward signal (base accuracies per level: docs/finetune.md).
TASK           ?= arith-1
RL_STEPS       ?= 30
RL_BATCH       ?= 8
RL_GENERATIONS ?= 4
RL_MAX_TOKENS  ?= 64
# Sampling temperature of the GRPO completions (and of the path evals): at 1.0 smollm2-135m's samples are
# mostly incoherent (5 % right on arith-2), at 0.7 far less so.
RL_TEMPERATURE ?= 0.7
RL_LR_FACTOR   ?= 1
# A method's RLVR learning rate: RL_LR_<method> when given, else its arena lr x RL_LR_FACTOR. OFT at its SFT
# arena lr (5e-4) collapsed under GRPO within 4 steps (reward 0 from step 5 on, fluent off-topic text), so
# its RLVR rate is lower.
RL_LR_oft      ?= 1e-4
rl_lr_of = $(or $(RL_LR_$(1)),$(shell $(VENV)/bin/python -c "print($(call lr_of,$(1)) * $(RL_LR_FACTOR))"))
# GRPO samples RL_STEPS_PER_GENERATION steps' completions in one generate call (TRL's steps_per_generation):
# on a CPU a decode step costs about the same for 8 rows as for 32, so this cuts GRPO's time per step
# (lora's first steps: 21.9 s per step on-policy, 16.9 s with 4; docs/finetune.md "GRPO speed"); 1 = on-policy.
RL_STEPS_PER_GENERATION ?= 4
# Evaluation sizes of the regime run sets: smaller than the SFT arena's so that `make arena REGIME=rlvr`
# (GRPO is ~7x the training time of SFT per step on a CPU) fits 60 min on 2 cores (measured 54.6 min with
# the install and RL_JOBS=2, docs/report.md "Time budget, measured"); TARGET_LIMIT= etc. win.
RL_TARGET_LIMIT  ?= 128
RL_GENERAL_LIMIT ?= 48
RL_DRIFT_LIMIT   ?= 8
# the methods of a regime run set that get an interpolation curve (and a rewound point)
RL_INTERP_METHODS ?= lora
# Jobs at once. On 2 cores two single-threaded jobs do more work than one two-threaded job: two GRPO runs
# at once 1.26x, two sampled path evals 1.33x (measured side by side; docs/report.md "Time budget,
# measured"), because a 135M model's ops are too small for two threads to share well. A run set with
# JOBS > 1 runs its stages with `make -jJOBS` (output synchronised by line, so no live progress bars), each
# job with cores/JOBS intra-op threads (OMP_NUM_THREADS). The regime sets use RL_JOBS; the SFT arena keeps
# one job at a time (its budget was measured so), ARENA_JOBS=2 to opt in. Where nvidia-smi is found the
# default is 1 job: two jobs would share one GPU's memory, which a large MODEL may not fit twice.
RL_JOBS        ?= $(if $(shell command -v nvidia-smi 2>/dev/null),1,2)
ARENA_JOBS     ?= 1
NCORES          = $(shell getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
job_threads     = $(shell n=$$(( $(NCORES) / $(1) )); echo $$(( n > 0 ? n : 1 )))
# the environment and make flags of a run set with $(1) jobs (nothing for one job)
jobs_env        = $(if $(filter-out 1,$(strip $(1))),OMP_NUM_THREADS=$(call job_threads,$(1)))
jobs_flags      = $(if $(filter-out 1,$(strip $(1))),-j$(strip $(1)) --output-sync=line)
# Path diagnostics: checkpoints along training (TRAJ_POINTS per run, the last one included) evaluated on
# TASK with sampling (PATH_SAMPLES per item, pass@PATH_K) and on the general suite (greedy), plus the
# base as step 0.
TRAJ_POINTS    ?= 4
PATH_LIMIT     ?= 8
PATH_SAMPLES   ?= 16
PATH_K         ?= 1,4,16
PATH_TEMPERATURE ?= $(RL_TEMPERATURE)
# (BBH at 2 per subtask: with one item per subtask its stratified interval, and so the general score's, is undefined)
PATH_GENERAL_LIMIT ?= ifeval=8,bbh=16,facts=8

PEFTARENA      ?= $(VENV)/bin/peftarena
PA              = $(PEFTARENA)
SPECTRUM_MODULE ?= layers.18.mlp.down_proj
# act-geom on every module of smollm2 costs ~4 min and ~17 GB (float64 sums of up to 1536² per
# module); the pipeline measures the study's choice, down_proj of every layer (ACTGEOM_MODULES= for all).
ACTGEOM_MODULES ?= down_proj

.PHONY: demo-run arena-run arena-stages arena-regimes-run arena-both

# SFT and RLVR of every arena method on one plane (runs/arena-rl/report-sft-rlvr).
arena-both: install
	$(PEFTARENA) models pull smollm2-135m
	@$(MAKE) --no-print-directory arena-run REGIMES="sft rlvr"

# One run set = RUNS + METHODS (+ which of them get an interpolation curve and a rewound point).
demo-run:
	@$(MAKE) --no-print-directory arena-stages RUNS=$(DEMO_RUNS) METHODS="lora" INTERP="lora" TITLE=demo \
		TARGET_LIMIT=$(TARGET_LIMIT) GENERAL_LIMIT=$(GENERAL_LIMIT) DRIFT_LIMIT=$(DRIFT_LIMIT)

arena-run:
ifneq ($(strip $(REGIMES)),sft)
	@$(MAKE) --no-print-directory arena-regimes-run
else
	@$(call jobs_env,$(ARENA_JOBS)) $(MAKE) --no-print-directory $(call jobs_flags,$(ARENA_JOBS)) arena-stages RUNS=$(ARENA_RUNS) METHODS="$(ARENA_METHODS)" \
		INTERP="$(filter $(INTERP_METHODS),$(ARENA_METHODS))" TITLE=arena \
		TARGET_LIMIT=$(if $(filter command line,$(origin TARGET_LIMIT)),$(TARGET_LIMIT),$(ARENA_TARGET_LIMIT)) \
		GENERAL_LIMIT=$(if $(filter command line,$(origin GENERAL_LIMIT)),$(GENERAL_LIMIT),$(ARENA_GENERAL_LIMIT)) \
		DRIFT_LIMIT=$(if $(filter command line,$(origin DRIFT_LIMIT)),$(DRIFT_LIMIT),$(ARENA_DRIFT_LIMIT))
endif

# The regime run sets: one directory per (method, regime), the regime in its name; one report per set of
# regimes (report-rlvr, report-sft-rlvr), so `make arena REGIME=rlvr` and `make arena-both` share RL_RUNS
# (its base evals, its RLVR runs) and each draws only its own regimes.
arena-regimes-run:
	@$(call jobs_env,$(RL_JOBS)) $(MAKE) --no-print-directory $(call jobs_flags,$(RL_JOBS)) arena-stages RUNS=$(RL_RUNS) TITLE="arena ($(REGIMES))" \
		METHODS="$(foreach r,$(REGIMES),$(foreach m,$(RL_METHODS_),$(m)-$(r)))" \
		INTERP="$(foreach r,$(REGIMES),$(foreach m,$(filter $(RL_INTERP_METHODS),$(RL_METHODS_)),$(m)-$(r)))" \
		PATHS=1 REPORT_NAME=report-$(subst $() ,-,$(strip $(REGIMES))) \
		TARGET_LIMIT=$(if $(filter command line,$(origin TARGET_LIMIT)),$(TARGET_LIMIT),$(RL_TARGET_LIMIT)) \
		GENERAL_LIMIT=$(if $(filter command line,$(origin GENERAL_LIMIT)),$(GENERAL_LIMIT),$(RL_GENERAL_LIMIT)) \
		DRIFT_LIMIT=$(if $(filter command line,$(origin DRIFT_LIMIT)),$(DRIFT_LIMIT),$(RL_DRIFT_LIMIT))

ifdef RUNS
# ---------------------------------------------------------------- what a run set is made of
STATS     := $(RUNS)/_stats/csd_stats.safetensors
REWOUND   := $(foreach m,$(INTERP),$(RUNS)/$(m)/rewound/.done)
EVALS     := $(foreach m,base $(METHODS),$(RUNS)/$(m)/eval_target.parquet $(RUNS)/$(m)/eval_general.parquet)
ANALYSES  := $(foreach m,$(METHODS),$(RUNS)/$(m)/spectrum.parquet $(RUNS)/$(m)/csd.parquet $(RUNS)/$(m)/act_geom.parquet \
	$(RUNS)/$(m)/drift.parquet)
CURVES    := $(foreach m,$(INTERP),$(RUNS)/$(m)/curve.parquet)
# the joined curve's per-item rows (scripts/join_curves.py writes them beside it; rewind splits on them)
CURVE_ITEMS = $(RUNS)/%/curve.target-samples.parquet $(RUNS)/%/curve.general-samples.parquet
REPORT_NAME ?= report
REPORT    := $(RUNS)/$(REPORT_NAME)
# path diagnostics (regime run sets): every checkpoint of a run, and the base as step 0
# (not for `full`: its checkpoints are whole models, and the path evals attach adapters to one loaded base)
PATHEVALS := $(if $(PATHS),$(foreach m,base $(foreach x,$(METHODS),$(if $(filter full,$(firstword $(subst -, ,$(x)))),,$(x))),\
	$(RUNS)/$(m)/path/target.parquet $(RUNS)/$(m)/path/general.parquet))
# a regime run set reports its own directories only (RL_RUNS may hold other regimes' runs too)
REPORT_INPUTS = $(if $(PATHS),$(foreach m,base $(METHODS),$(RUNS)/$(m)),$(RUNS))

# A directory name is METHOD or METHOD-REGIME: its method, its regime (a bare name is the SFT arena).
meth       = $(firstword $(subst -, ,$(1)))
regime     = $(or $(word 2,$(subst -, ,$(1))),sft)
# the target task of a run set: TASK for the regime sets, the built-in arithmetic otherwise
task_arg   = $(if $(PATHS),--task $(TASK))
ttask_arg  = $(if $(PATHS),--target-task $(TASK))

# A method's fine-tuned artifact: the PEFT adapter dir, or the full model dir for `full`.
final      = $(RUNS)/$(1)/train/final
# eval / analysis arguments: `full` is a model of its own, every other method an adapter on MODEL.
eval_model = $(if $(filter full,$(call meth,$(1))),$(call final,$(1)),$(MODEL) --adapter $(call final,$(1)))

# Keep the artifacts Make reaches only through pattern rules (it would delete them as intermediates).
# Not `.SECONDARY:` with no prerequisites: that makes every file intermediate, and a missing
# intermediate never triggers a rebuild, so adding a method to an existing run set did nothing.
.PRECIOUS: $(RUNS)/%/train/.done $(RUNS)/%/interp/target.parquet $(RUNS)/%/interp/general.parquet \
	$(RUNS)/%/curve.parquet $(CURVE_ITEMS) $(RUNS)/%/rewound/.done $(RUNS)/%/path/target.parquet $(RUNS)/%/path/general.parquet

arena-stages: $(REPORT)/leaderboard.parquet
	@echo
	@echo "$(TITLE): report in $(REPORT)/ (plane.png, spectrum.png, leaderboard.md$(if $(PATHS), and passk.png))"
	@sed -n '/^| method/,/^$$/p' $(REPORT)/leaderboard.md

$(REPORT)/leaderboard.parquet: $(EVALS) $(ANALYSES) $(CURVES) $(REWOUND) $(PATHEVALS)
	$(PA) report $(REPORT_INPUTS) -o $(REPORT) --spectrum-module '$(SPECTRUM_MODULE)'
	@for d in $(dir $(REWOUND)); do $(VENV)/bin/python -c "import json, sys; from safetensors import safe_open; \
	m = safe_open(sys.argv[1] + '/adapter_model.safetensors', 'pt').metadata(); r = json.loads(m.get('peftarena_rewind', '{}')); \
	print('rewound', sys.argv[1], 'to alpha', r.get('alpha'), '-', r.get('reason', r.get('criterion', '')))" $$d 2>/dev/null || true; done

# ---------------------------------------------------------------- training
# The stamp is written only after a complete run; an interrupted run is resumed.
# SFT (a bare METHOD directory: the arena as before; METHOD-sft: on TASK with trajectory checkpoints) or
# RLVR (METHOD-rlvr: GRPO on TASK, RL_BATCH completions per step in groups of RL_GENERATIONS).
every = $(shell echo $$(( ($(1) + $(TRAJ_POINTS) - 1) / $(TRAJ_POINTS) )))
train_args = $(if $(filter rlvr,$(call regime,$(1))),\
	--regime rlvr --data $(TASK) --steps $(RL_STEPS) --batch-size $(RL_BATCH) --num-generations $(RL_GENERATIONS) \
	--max-completion-length $(RL_MAX_TOKENS) --temperature $(RL_TEMPERATURE) --steps-per-generation $(RL_STEPS_PER_GENERATION) --lr $(call rl_lr_of,$(call meth,$(1))) \
	--save-every $(call every,$(RL_STEPS)),\
	$(if $(findstring -,$(1)),--data $(TASK)) --steps $(STEPS) --batch-size $(BATCH) --lr $(call lr_of,$(call meth,$(1))) \
	--save-every $(if $(findstring -,$(1)),$(call every,$(STEPS)),$(STEPS)))

$(RUNS)/%/train/.done:
	@mkdir -p $(RUNS)/$*
	$(PA) finetune $(MODEL) -o $(RUNS)/$*/train --method $(call meth,$*) $(call train_args,$*) \
		$(if $(wildcard $(RUNS)/$*/train/manifest.json),--resume)
	@touch $@

# ---------------------------------------------------------------- evaluation
$(RUNS)/base/eval_target.parquet:
	@mkdir -p $(@D)
	$(PA) eval-target $(MODEL) $(task_arg) --limit $(TARGET_LIMIT) -o $@ --summary $(@D)/eval_target_summary.parquet

$(RUNS)/base/eval_general.parquet:
	@mkdir -p $(@D)
	$(PA) eval-general $(MODEL) --limit $(GENERAL_LIMIT) -o $@ --summary $(@D)/eval_general_summary.parquet

$(RUNS)/%/eval_target.parquet: $(RUNS)/%/train/.done
	$(PA) eval-target $(call eval_model,$*) $(task_arg) --limit $(TARGET_LIMIT) -o $@ --summary $(@D)/eval_target_summary.parquet

$(RUNS)/%/eval_general.parquet: $(RUNS)/%/train/.done
	$(PA) eval-general $(call eval_model,$*) --limit $(GENERAL_LIMIT) -o $@ --summary $(@D)/eval_general_summary.parquet

# ---------------------------------------------------------------- weight and activation geometry
$(RUNS)/%/spectrum.parquet: $(RUNS)/%/train/.done
	$(PA) spectrum $(MODEL) $(call final,$*) -o $@ --summary $(@D)/spectrum_summary.parquet

$(STATS):
	@mkdir -p $(@D)
	$(PA) csd $(MODEL) --general general:$(ANALYSIS_N) --target arith:$(ANALYSIS_N) --save-stats $@

$(RUNS)/%/csd.parquet: $(RUNS)/%/train/.done $(STATS)
	$(PA) csd $(MODEL) $(call final,$*) --stats $(STATS) -o $@

$(RUNS)/%/act_geom.parquet: $(RUNS)/%/train/.done
	$(PA) act-geom $(MODEL) $(call final,$*) -p general:$(ANALYSIS_N) -p arith:$(ANALYSIS_N) \
		$(if $(ACTGEOM_MODULES),-m $(ACTGEOM_MODULES)) -o $@

# Output drift: forward passes only (the base's greedy continuations, teacher-forced through both models).
$(RUNS)/%/drift.parquet: $(RUNS)/%/train/.done
	$(PA) drift $(MODEL) $(call final,$*) $(ttask_arg) --limit $(DRIFT_LIMIT) --max-new-tokens $(DRIFT_TOKENS) -o $@

# ---------------------------------------------------------------- path diagnostics along training
# Every trajectory checkpoint of a run (one eval call: the base is loaded once, each checkpoint attached in
# turn) on TASK with PATH_SAMPLES sampled completions per item (pass@k), and on the general suite; the base
# is step 0. The per-sample rows stay in path/ (report reads them for passk.png and the training path).
# (listed by the shell when the recipe runs: make's $(wildcard) reads a cached directory listing, so it
# missed the checkpoints that training wrote earlier in the same make run)
ckpt_args = $(addprefix --adapter ,$(shell ls -d $(RUNS)/$(1)/train/checkpoint-* 2>/dev/null | sort -V))
PATH_SAMPLING = --limit $(PATH_LIMIT) -n $(PATH_SAMPLES) --temperature $(PATH_TEMPERATURE) --k $(PATH_K) \
	--max-new-tokens $(RL_MAX_TOKENS)

$(RUNS)/base/path/target.parquet:
	@mkdir -p $(@D)
	$(PA) eval-target $(MODEL) $(task_arg) $(PATH_SAMPLING) -o $@

$(RUNS)/base/path/general.parquet:
	@mkdir -p $(@D)
	$(PA) eval-general $(MODEL) --limit $(PATH_GENERAL_LIMIT) -o $@

$(RUNS)/%/path/target.parquet: $(RUNS)/%/train/.done
	@mkdir -p $(@D)
	@test -n "$(call ckpt_args,$*)" || { echo "error: no checkpoint-* in $(RUNS)/$*/train for the path diagnostics" >&2; exit 1; }
	$(PA) eval-target $(MODEL) $(call ckpt_args,$*) $(task_arg) $(PATH_SAMPLING) -o $@

$(RUNS)/%/path/general.parquet: $(RUNS)/%/train/.done
	@mkdir -p $(@D)
	@test -n "$(call ckpt_args,$*)" || { echo "error: no checkpoint-* in $(RUNS)/$*/train for the path diagnostics" >&2; exit 1; }
	$(PA) eval-general $(MODEL) $(call ckpt_args,$*) --limit $(PATH_GENERAL_LIMIT) -o $@

# ---------------------------------------------------------------- paths: interpolate, rewind
# Target and general are swept separately so each uses the same --limit as the method's own evals;
# the parts (and their per-sample rows) stay in interp/, the joined curve is what report reads.
# join_curves.py also writes the joined curve's per-item rows beside it (the parts' rows at the interior α,
# the ends' eval rows at α = 0 and 1; ends on other items are refused), so that rewind picks α on one
# half of the items and reports it on the other. The three files are the targets of one rule (a pattern
# rule's targets are made by one run of its recipe): a run set joined before the rows existed is joined
# again, and its rewind redone.
$(RUNS)/%/interp/general.parquet: $(RUNS)/%/train/.done
	@mkdir -p $(@D)
	$(PA) interpolate $(MODEL) $(call final,$*) --alphas $(ALPHAS) --eval general --limit $(GENERAL_LIMIT) -o $@

$(RUNS)/%/interp/target.parquet: $(RUNS)/%/train/.done
	@mkdir -p $(@D)
	$(PA) interpolate $(MODEL) $(call final,$*) --alphas $(ALPHAS) --eval target $(ttask_arg) --limit $(TARGET_LIMIT) -o $@

$(RUNS)/%/curve.parquet $(CURVE_ITEMS): $(RUNS)/%/interp/target.parquet $(RUNS)/%/interp/general.parquet \
		$(RUNS)/base/eval_target.parquet $(RUNS)/base/eval_general.parquet $(RUNS)/%/eval_target.parquet $(RUNS)/%/eval_general.parquet
	$(VENV)/bin/python scripts/join_curves.py $(RUNS)/$*/interp/target.parquet $(RUNS)/$*/interp/general.parquet \
		--ends $(RUNS)/base $(RUNS)/$* -o $(RUNS)/$*/curve.parquet

# The rewound adapter is the curve's point at the picked α (the same model, as rewind's tests check),
# so its scores are already on the plane: it is written, not evaluated again. It is picked on one half
# of the items and its scores are those of the other half (rewind's default --selection split).
$(RUNS)/%/rewound/.done: $(RUNS)/%/curve.parquet $(CURVE_ITEMS)
	$(PA) rewind $(call final,$*) --curve $< --pick $(PICK) --base $(MODEL) -o $(@D) --overwrite
	@touch $@
endif
