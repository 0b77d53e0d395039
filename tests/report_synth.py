"""Synthetic result tables in the producers' documented schemas, for the report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from peftarena_cli.artifacts.tables import Provenance, write_table

# method -> (target, general, geometry scale)
SCORES = {"base": (20.0, 50.0, 0.0), "lora": (45.0, 44.0, 1.0), "oft": (40.0, 48.5, 0.4),
          "full": (52.0, 35.0, 3.0), "vera": (30.0, 49.0, 0.2), "dora": (46.0, 43.0, 1.1)}
MODULES = [f"model.layers.{l}.{k}" for l in range(3) for k in ("self_attn.q_proj", "mlp.down_proj")]


def eval_summaries(target: float, general: float):
    t = pd.DataFrame({"task": ["arith", "target"], "metric": ["accuracy", "target_score"],
                      "value": [target, target], "n": [50, 50]})
    g = pd.DataFrame({"task": ["ifeval", "bbh", "nq_open", "general"],
                      "metric": ["inst_level_strict_acc", "acc", "exact_match", "general_score"],
                      "value": [general + 1, general - 1, general, general], "n": [20, 20, 20, 60]})
    return t, g


def make_runs(root: Path, methods=None, with_geometry=True, with_curve=True, adapter_numel=None) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name in methods or SCORES:
        target, general, s = SCORES[name]
        d = root / name
        d.mkdir(exist_ok=True)
        t, g = eval_summaries(target, general)
        prov = Provenance(command="eval-target")
        write_table(t, d / "eval_target_summary.parquet", prov)
        write_table(g, d / "eval_general_summary.parquet", Provenance(command="eval-general"))
        # a per-sample file that report must ignore
        write_table(pd.DataFrame({"task": ["arith"], "id": ["a"], "sample": [0], "prompt": ["p"], "completion": ["c"],
                                  "extracted": ["1"], "reference": ["1"], "correct": [True]}), d / "eval_target.parquet")
        if name == "base" or not with_geometry:
            continue
        rows, summ, csd, ag = [], [], [], []
        for m in MODULES:
            sig = np.sort(rng.uniform(0.1, 3.0, 16))[::-1]
            dp = s * rng.uniform(0.001, 0.05, 16)
            en = s * rng.uniform(0.01, 0.2, 16)
            for i in range(16):
                rows.append({"module": m, "layer": int(m.split(".")[2]), "kind": m.split(".")[-1], "index": i,
                             "sigma": sig[i], "p_diag": sig[i] + dp[i], "delta_p": dp[i], "energy": en[i]})
            summ.append({"module": m, "layer": int(m.split(".")[2]), "kind": m.split(".")[-1],
                         "effective_rank": 1 + s * rng.uniform(1, 2), "delta_fro": s * rng.uniform(0.5, 1.0),
                         "fluct_retention": s * 0.01, "fluct_energy": s * 0.02, "method": name})
            for alpha in (0.5, 1.0):  # csd's wide schema: one row per module × α, columns per prompt set
                row = {"module": m, "layer": int(m.split(".")[2]), "kind": m.split(".")[-1], "alpha": alpha}
                for ps in ("general", "target"):
                    row.update({f"csd_abs_{ps}": alpha * (s * 0.1 + rng.uniform(0, 0.01)), f"csd_rel_{ps}": alpha * s * 0.01,
                                f"csd_un_{ps}": alpha * (s * 0.5 + rng.uniform(0, 0.01)), f"n_tokens_{ps}": 100})
                row["csd_ratio_abs"] = row["csd_abs_general"] / row["csd_abs_target"]
                csd.append(row)
            for ps in ("general", "arith"):
                ag.append({"prompt_set": ps, "module": m, "raw_residual": 0.1 * s, "procrustes_residual": 0.05 * s,
                           "procrustes_improvement": 0.05 * s, "gram_distortion": 0.02 * s, "cka": 1 - 0.05 * s,
                           "cos_drift": 0.01 * s, "log_norm_ratio": 0.01 * s, "pca_dist_32": 0.1 * s,
                           "pca_dist_64": 0.1 * s, "n_tokens": 1000})
        write_table(pd.DataFrame(rows), d / "spectrum.parquet", Provenance(command="spectrum"))
        write_table(pd.DataFrame(summ), d / "spectrum_summary.parquet", Provenance(command="spectrum"))
        write_table(pd.DataFrame(csd), d / "csd.parquet", Provenance(command="csd"))
        write_table(pd.DataFrame(ag), d / "act_geom.parquet", Provenance(command="act-geom"))
        if with_curve and name in ("lora", "oft"):
            bt, bg, _ = SCORES["base"]
            al = np.round(np.linspace(0, 1, 6), 2)
            cur = pd.DataFrame({"alpha": al, "path": "dense",
                                "target": bt + (target - bt) * np.sqrt(al), "general": bg + (general - bg) * al ** 2})
            write_table(cur, d / "curve.parquet", Provenance(command="interpolate"))
        if adapter_numel:
            from safetensors.numpy import save_file

            save_file({"base_model.model.x.lora_A.weight": np.zeros((adapter_numel[0], 4), np.float32),
                       "base_model.model.x.lora_B.weight": np.zeros((4, adapter_numel[1]), np.float32)},
                      str(d / "adapter.safetensors"), metadata={"peft_config": '{"peft_type": "LORA"}'})
    return root
