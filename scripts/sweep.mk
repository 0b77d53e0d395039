# `make sweep`: the arena's question asked over seeds and learning rates (included from the main Makefile).
#
#   make sweep    every method in SWEEP_METHODS at each learning rate of its grid, each with every seed in
#                 SEEDS: train, eval-target, eval-general; the base's evals once; the sweep report
#                 (runs/sweep/report: seed means with seed-and-item intervals, per-method frontiers,
#                 forgetting at matched gain, every method pair Holm-adjusted; docs/report.md, "Sweeps")
#
# As in the arena (scripts/arena.mk), every stage's target is the artifact it writes, so a rerun skips
# finished stages, an interrupted run continues (training resumes from its last checkpoint), and a rerun
# with a changed grid (more seeds, other LR_MULTS, another method) adds the new points and keeps the old
# ones: the report uses every point of SWEEP_RUNS that has results and lists them.
#
# A grid point is SWEEP_RUNS/<method>/lr<LR>/s<SEED>/ with train/ (its finetune run; manifest.json holds
# the seed, lr and steps the report reads), eval_target.parquet and eval_general.parquet (per-sample rows,
# with their summaries). The base's evals are the same for every point: SWEEP_RUNS/base/, computed once.
# SCREEN=1 adds drift.parquet per point and SWEEP_RUNS/screen.json (the drift screen, below).
# A point whose training diverges gets SWEEP_RUNS/<method>/lr<LR>/s<SEED>/diverged.json
# (scripts/sweep_train.py), is not evaluated, and the sweep goes on; the report lists it as excluded.
#
# Knobs (override on the command line, e.g. `make sweep SWEEP_METHODS="lora oft" SEEDS="1 2 3"`):
SWEEP_RUNS     ?= runs/sweep
SWEEP_METHODS  ?= full lora pissa oft vera
SEEDS          ?= 1 2
# Learning rates: these multiples of each method's registry arena_lr (peftarena_cli/methods.py). Empty:
# the registry's default grid, SWEEP_LR_MULTS = 0.33 1 3 (`python -m peftarena_cli.methods grid lora`
# prints lora's). SWEEP_LRS_<method>="1e-4 3e-4" sets one method's rates outright.
LR_MULTS       ?=
SWEEP_STEPS    ?= $(STEPS)
# Evaluation sizes, chosen so that the default grid (5 methods x 3 rates x 2 seeds = 30 runs) fits about
# 120 min on 2 idle cores. Measured on smollm2-135m (lora, 30 steps, batch 4, 2 threads, one job,
# 2026-12-07): finetune 121 s, eval-target on 192 items 54 s, eval-general on ifeval=48,bbh=48,facts=96
# (192 prompts) 81 s; each eval is ~4 s of loading plus a time linear in its items. At the sizes below
# (160 target items; 40 + 40 + 80 = 160 general prompts): eval-target ~4 + 50 x 160/192 = 46 s,
# eval-general ~4 + 77 x 160/192 = 68 s. The arena's finetune times at 30 steps range 89-125 s over
# the methods (docs/report.md, the seven-method arena): take 110 s. 30 runs x (110 + 46 + 68) s =
# 112 min, plus the base's two evals once (~2 min: the base's answers run longer) = about 114 min.
# Measured (git clone + make sweep, install included, alone on 2 cores, 2026-12-07): 118.1 min; the
# stages took 100-152 s to train, 44-82 s for eval-target, 36-60 s for eval-general (docs/report.md,
# "The measured sweep"). The intervals are about 1.6x (target: sqrt(432/160)) and 2.3x (general:
# sqrt(837/160)) the arena's; raise these two for a sharper ranking.
SWEEP_TARGET_LIMIT  ?= 160
SWEEP_GENERAL_LIMIT ?= ifeval=40,bbh=40,facts=80
# The model dtype of every eval stage (eval-target, eval-general, interpolate, drift), passed as --dtype and
# recorded in each table's provenance; the sweep report refuses evals of mixed dtypes. float32 is the
# default and the reference: bfloat16 is allowed only where benchmarks/bf16_eval_bench.py shows every
# paired score difference (bf16 - fp32) within +-1 point (docs/report.md, "Sweeps").
SWEEP_EVAL_DTYPE    ?= float32
# Interpolation paths (docs/report.md, "Sweeps"): the grid points named here, e.g.
# SWEEP_INTERP_POINTS="lora/lr0.001/s1 oft/lr0.0005/s1", get `interpolate` at SWEEP_ALPHAS (interior α;
# α = 0 and 1 are the base's and the point's own evals), target and general separately with the limits
# above (so on the base's items), in <point>/interp/; the report draws each path beside its method's
# grid frontier. Each path costs about len(SWEEP_ALPHAS) x (46 + 68) s on 2 cores at these limits.
SWEEP_INTERP_POINTS ?=
SWEEP_ALPHAS        ?= 0.25,0.5,0.75
# Jobs at once (as ARENA_JOBS): 1 by default, the budget above was measured so.
SWEEP_JOBS     ?= 1
# The drift screen (SCREEN=1; docs/report.md, "Sweeps"): every point gets eval-target and `peftarena
# drift --no-reference` on general prompts (greedy rows only, all the screen reads; SWEEP_DRIFT_LIMIT
# items per general part, the base's continuations computed
# by the first point and reused from SWEEP_RUNS/base/drift_base.json); scripts/sweep_screen.py writes
# SWEEP_RUNS/screen.json, and only the configurations that could be on their method's frontier (not
# dominated in gain and drift by a margin of the drift interval) get eval-general. SCREEN=0: every point
# gets every eval (and no drift).
SCREEN            ?= 0
SWEEP_DRIFT_LIMIT ?= 16

.PHONY: sweep sweep-run sweep-stages

sweep: install
	$(PEFTARENA) models pull smollm2-135m
	@$(MAKE) --no-print-directory sweep-run

sweep-run:
	@$(call jobs_env,$(SWEEP_JOBS)) $(MAKE) --no-print-directory $(call jobs_flags,$(SWEEP_JOBS)) sweep-stages

# ---------------------------------------------------------------- what the grid is made of
# a method's learning rates: SWEEP_LRS_<method>, else LR_MULTS (or the registry's default) x its arena_lr
sweep_lrs    = $(or $(SWEEP_LRS_$(1)),$(shell $(PY) -m peftarena_cli.methods grid $(1) $(LR_MULTS)))
# every point: <method>/lr<LR>/s<SEED>
SWEEP_POINTS = $(foreach m,$(SWEEP_METHODS),$(foreach lr,$(call sweep_lrs,$(m)),$(foreach s,$(SEEDS),$(m)/lr$(lr)/s$(s))))
SWEEP_EVALS  = $(foreach k,target general,$(SWEEP_RUNS)/base/eval_$(k).parquet \
	$(foreach p,$(SWEEP_POINTS),$(SWEEP_RUNS)/$(p)/eval_$(k).parquet)) \
	$(if $(filter 1,$(SCREEN)),$(SWEEP_SCREEN))
SWEEP_SCREEN = $(SWEEP_RUNS)/screen.json
SWEEP_DRIFT_BASE = $(SWEEP_RUNS)/base/drift_base.json
SWEEP_REPORT = $(SWEEP_RUNS)/report

# a point's method, learning rate and seed, from its path <method>/lr<LR>/s<SEED>
sw_meth  = $(word 1,$(subst /, ,$(1)))
sw_lr    = $(patsubst lr%,%,$(word 2,$(subst /, ,$(1))))
sw_seed  = $(patsubst s%,%,$(word 3,$(subst /, ,$(1))))
sw_final = $(SWEEP_RUNS)/$(1)/train/final
# `full` is a model of its own, every other method an adapter on MODEL
sw_model = $(if $(filter full,$(call sw_meth,$(1))),$(call sw_final,$(1)),$(MODEL) --adapter $(call sw_final,$(1)))
# a diverged point (scripts/sweep_train.py wrote diverged.json) is not evaluated
sw_skip  = if [ -f $(SWEEP_RUNS)/$(1)/diverged.json ]; then echo "$(SWEEP_RUNS)/$(1): training diverged, not evaluated"; else

# SCREEN=1: a point's general eval runs only when the screen selected it (exit 3: screened out)
ifeq ($(SCREEN),1)
sw_gate_open  = if $(PY) scripts/sweep_screen.py --selected $(SWEEP_RUNS) $(1); then
sw_gate_close = else rc=$$?; [ $$rc = 3 ] || exit $$rc; echo "$(SWEEP_RUNS)/$(1): screened out by the drift screen, no general eval"; fi;
SW_GENERAL_AFTER = $(SWEEP_SCREEN)
endif

.PRECIOUS: $(SWEEP_RUNS)/%/train/.done

sweep-stages: $(SWEEP_REPORT)/leaderboard.parquet
	@echo
	@echo "sweep: report in $(SWEEP_REPORT)/ (plane.png, leaderboard.md, sweep_*.parquet)"
	@sed -n '/^| method/,/^$$/p' $(SWEEP_REPORT)/leaderboard.md

SWEEP_CURVES = $(foreach p,$(SWEEP_INTERP_POINTS),$(SWEEP_RUNS)/$(p)/interp/target.parquet \
	$(SWEEP_RUNS)/$(p)/interp/general.parquet)

$(SWEEP_REPORT)/leaderboard.parquet: $(SWEEP_EVALS) $(SWEEP_CURVES)
	$(PA) report $(SWEEP_RUNS) -o $(SWEEP_REPORT)

# ---------------------------------------------------------------- training (one grid point)
# The stamp is written after a complete run, or after a divergence that sweep_train.py recorded.
$(SWEEP_RUNS)/%/train/.done:
	@mkdir -p $(SWEEP_RUNS)/$*
	$(PY) scripts/sweep_train.py $(SWEEP_RUNS)/$* -- $(PA) finetune $(MODEL) -o $(SWEEP_RUNS)/$*/train \
		--method $(call sw_meth,$*) --lr $(call sw_lr,$*) --seed $(call sw_seed,$*) --steps $(SWEEP_STEPS) \
		--batch-size $(BATCH) --save-every $(SWEEP_STEPS) $(if $(wildcard $(SWEEP_RUNS)/$*/train/manifest.json),--resume)
	@mkdir -p $(@D) && touch $@

# ---------------------------------------------------------------- interpolation paths (SWEEP_INTERP_POINTS)
# interpolate writes its per-item rows beside: interp/target.target-samples.parquet, interp/general.general-samples.parquet
$(SWEEP_RUNS)/%/interp/target.parquet: $(SWEEP_RUNS)/%/train/.done
	@mkdir -p $(@D)
	$(call sw_skip,$*) $(PA) interpolate $(MODEL) $(call sw_final,$*) --alphas $(SWEEP_ALPHAS) --eval target \
		--limit $(SWEEP_TARGET_LIMIT) -o $@ --dtype $(SWEEP_EVAL_DTYPE); fi

$(SWEEP_RUNS)/%/interp/general.parquet: $(SWEEP_RUNS)/%/train/.done
	@mkdir -p $(@D)
	$(call sw_skip,$*) $(PA) interpolate $(MODEL) $(call sw_final,$*) --alphas $(SWEEP_ALPHAS) --eval general \
		--limit $(SWEEP_GENERAL_LIMIT) -o $@ --dtype $(SWEEP_EVAL_DTYPE); fi

# ---------------------------------------------------------------- evaluation
$(SWEEP_RUNS)/base/eval_target.parquet:
	@mkdir -p $(@D)
	$(PA) eval-target $(MODEL) --limit $(SWEEP_TARGET_LIMIT) --dtype $(SWEEP_EVAL_DTYPE) -o $@ --summary $(@D)/eval_target_summary.parquet

$(SWEEP_RUNS)/base/eval_general.parquet:
	@mkdir -p $(@D)
	$(PA) eval-general $(MODEL) --limit $(SWEEP_GENERAL_LIMIT) --dtype $(SWEEP_EVAL_DTYPE) -o $@ --summary $(@D)/eval_general_summary.parquet

$(SWEEP_RUNS)/%/eval_target.parquet: $(SWEEP_RUNS)/%/train/.done
	$(call sw_skip,$*) $(PA) eval-target $(call sw_model,$*) --limit $(SWEEP_TARGET_LIMIT) --dtype $(SWEEP_EVAL_DTYPE) -o $@ \
		--summary $(@D)/eval_target_summary.parquet; fi

# The screen is an order-only prerequisite: it runs before any general eval it gates, but a general
# eval that already exists (a sweep run first with SCREEN=0) is kept when a later screen is newer.
$(SWEEP_RUNS)/%/eval_general.parquet: $(SWEEP_RUNS)/%/train/.done | $(SW_GENERAL_AFTER)
	$(call sw_skip,$*) $(call sw_gate_open,$*) $(PA) eval-general $(call sw_model,$*) --limit $(SWEEP_GENERAL_LIMIT) --dtype $(SWEEP_EVAL_DTYPE) -o $@ \
		--summary $(@D)/eval_general_summary.parquet; $(call sw_gate_close,$*) fi

# ---------------------------------------------------------------- the drift screen (SCREEN=1)
$(SWEEP_SCREEN): $(SWEEP_RUNS)/base/eval_target.parquet \
		$(foreach p,$(SWEEP_POINTS),$(SWEEP_RUNS)/$(p)/eval_target.parquet $(SWEEP_RUNS)/$(p)/drift.parquet)
	$(PY) scripts/sweep_screen.py $(SWEEP_RUNS)

# the base's continuations: written by the first point's drift, read by every other one.
# --no-reference: the screen reads only the greedy rows (source = greedy, α = 1; report/screen.py), so
# the reference texts are not teacher-forced. The flag is part of the continuations file's settings:
# every point passes the same one, and a drift_base.json made with reference rows is refused (remove it).
$(SWEEP_RUNS)/%/drift.parquet: $(SWEEP_RUNS)/%/train/.done
	@mkdir -p $(SWEEP_RUNS)/base
	$(call sw_skip,$*) $(PA) drift $(MODEL) $(call sw_final,$*) --sets general --limit $(SWEEP_DRIFT_LIMIT) --dtype $(SWEEP_EVAL_DTYPE) \
		--no-reference --base-continuations $(SWEEP_DRIFT_BASE) -o $@; fi
