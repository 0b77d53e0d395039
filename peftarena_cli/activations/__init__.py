"""Activation-space diagnostics (docs/csd.md and docs/act-geom.md; definitions in docs/design.md §4).

Where things live:

* ``prompts.py``    — prompt sets: .txt / .jsonl / .json / Parquet files and built-in suites by name;
* ``capture.py``    — module selection, tokenisation (padding excluded, truncation counted) and the
                      forward hooks that capture every selected module's inputs or outputs in one pass;
* ``moments.py``    — CSD input statistics S = E[h hᵀ] (+ token count, E‖h‖²): streamed, additive,
                      saved/merged as safetensors ("stats files");
* ``csd.py``        — Capability-Conditioned Drift from S and ΔW (no forward pass of the fine-tune);
* ``pair_sums.py``  — act-geom streamed feature-space sums (X0ᵀX0, X1ᵀX1, X0ᵀX1, row-normalised
                      counterparts, column sums, per-token scalars): additive, saved/merged;
* ``geometry.py``   — the act-geom metrics from those sums (residuals, Procrustes, Gram distortion,
                      CKA, cos drift, log-norm ratio, PCA subspace distance) and the study-style
                      subsampled token×token Gram distortion;
* ``collect.py``    — the drivers: run the model(s) over a prompt set and fill moments / pair sums;
* ``run.py``        — the commands' core entry points: :func:`run_csd` (:class:`CsdConfig`) and
                      :func:`run_act_geom` (:class:`ActGeomConfig`), which load the models, check
                      them, collect, release memory and return the tables (the CLI only parses,
                      calls, shows progress and writes).
"""

from peftarena_cli.activations.run import (ActGeomConfig, ActGeomResult, CsdConfig, CsdResult, run_act_geom,
                                           run_csd)

__all__ = ["ActGeomConfig", "ActGeomResult", "CsdConfig", "CsdResult", "run_act_geom", "run_csd"]
