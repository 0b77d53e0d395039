"""Capability-Conditioned Drift (docs/csd.md) from input second moments and ΔW.

With S = E[h hᵀ] of a module's input over a prompt distribution D (from the base model):

* CSD_abs(D) = E‖ΔW h‖² = tr(ΔW S ΔWᵀ)
* CSD_rel(D) = E‖ΔW h‖² / (E‖W0 h‖² + ε),  E‖W0 h‖² = tr(W0 S W0ᵀ)
* CSD_un(D)  = E‖ΔW h‖² / ((‖ΔW‖_F² + ε)(E‖h‖² + ε))

No forward pass of the fine-tuned model is needed: S is collected once per (base, prompt set)
and reused for every adapter and interpolation point (W(α) = W0 + αΔW scales CSD_abs by α²).

Low-rank updates ΔW = B A (LoRA and the other factor methods; rank r) use the exact form
tr(ΔW S ΔWᵀ) = Σ (BᵀB) ∘ (A S Aᵀ) and ‖ΔW‖_F² = Σ (BᵀB) ∘ (A Aᵀ), in float64 from the factors:
O(r·d_in² + r²·d_out) flops and no d_out × d_in matrix, instead of O(d_out·d_in²) for the dense
ΔW. It equals the dense form in exact arithmetic and is more accurate in floating point (the dense
ΔW = B A is formed in float32). Other methods form ΔW densely.
"""

from __future__ import annotations

EPS = 1e-12


def quad_form(W, S) -> float:
    """tr(W S Wᵀ) in float64 (= E‖W h‖² when S = E[h hᵀ])."""
    import torch

    W = W.to(torch.float64)
    return float(((W @ S.to(W.device, torch.float64)) * W).sum())


def quad_form_low_rank(B, A, S) -> float:
    """tr(ΔW S ΔWᵀ) for ΔW = B A (B: out × r, A: r × in) as Σ (BᵀB) ∘ (A S Aᵀ), float64."""
    import torch

    B = B.to(torch.float64)
    A = A.to(torch.float64)
    M = (A @ S.to(A.device, torch.float64)) @ A.T
    return float(((B.T @ B) * M).sum())


def csd_metrics(S, h2: float, w0, dw, eps: float = EPS, factors=None) -> dict:
    """CSD of one module on one prompt distribution. ``S`` = E[hhᵀ], ``h2`` = E‖h‖². ``factors`` =
    (B, A) with ΔW = B A (then ``dw`` is not used and may be None): the low-rank form."""
    import torch

    if factors is not None:
        B, A = (t.to(torch.float64) for t in factors)
        e_dw = quad_form_low_rank(B, A, S)
        fro2 = float(((B.T @ B) * (A @ A.T)).sum())
    else:
        dw64 = dw.to(torch.float64)
        e_dw = quad_form(dw64, S)
        fro2 = float((dw64 * dw64).sum())
    e_w0 = quad_form(w0, S)
    return {"csd_abs": e_dw, "csd_rel": e_dw / (e_w0 + eps),
            "csd_un": e_dw / ((fro2 + eps) * (h2 + eps)), "w0_energy": e_w0, "delta_fro2": fro2}


def _add_ratios(row: dict, sets: dict, eps: float) -> None:
    """The general/target ratios of a row that has both prompt sets (csd_ratio_abs, _rel, _un)."""
    if "general" in sets and "target" in sets:
        for k in ("csd_abs", "csd_rel", "csd_un"):
            row[f"csd_ratio_{k[4:]}"] = row[f"{k}_general"] / (row[f"{k}_target"] + eps)


def csd_rows(name: str, layer: int, kind: str, w0, dw, sets: dict, alphas=(1.0,), eps: float = EPS,
             factors=None) -> list[dict]:
    """Table rows for one module: one per α, with columns per prompt set and the G/T ratios.
    ``factors`` = (B, A) with ΔW = B A: the low-rank form (``dw`` unused).

    ``sets`` maps a role (``general``/``target``) to :class:`~peftarena_cli.activations.moments.InputMoments`.
    """
    import torch

    rows = []
    for a in alphas:
        row = {"module": name, "layer": layer, "kind": kind, "alpha": float(a)}
        d = None if factors is not None else dw * a if a != 1.0 else dw
        f = None if factors is None else ((factors[0].to(torch.float64) * a if a != 1.0 else factors[0]), factors[1])
        for role, m in sets.items():
            if name not in m.module_group:
                from peftarena_cli.errors import IncompatibleInputs

                raise IncompatibleInputs(f"stats for {role!r} lack module {name!r}",
                                         hint="collect the stats with the same --modules as this run")
            r = csd_metrics(m.S(name), m.h2(name), w0, d, eps, factors=f)
            row["delta_fro2"] = r["delta_fro2"]
            for k in ("csd_abs", "csd_rel", "csd_un"):
                row[f"{k}_{role}"] = r[k]
            row[f"h2_{role}"] = m.h2(name)
            row[f"w0h2_{role}"] = r["w0_energy"]  # E‖W0 h‖², csd_rel's denominator (the study reports it)
            row[f"n_tokens_{role}"] = m.n(name)
        _add_ratios(row, sets, eps)
        rows.append(row)
    return rows


def csd_table(base, ft, sets: dict, modules: list[str] | None = None, alphas=(1.0,), device: str = "cpu",
              callback=None, eps: float = EPS, layers: list[int] | None = None, low_rank: bool = True):
    """CSD per changed module for every prompt set in ``sets`` (a DataFrame, one row per module × α).

    ``base`` is a :class:`~peftarena_cli.artifacts.safetensors_io.WeightSource`, ``ft`` an
    :func:`~peftarena_cli.weights.finetuned.open_finetuned` result. ``modules`` restricts the
    modules (default: every module the fine-tune changes that the statistics cover); ``layers``, if
    given, must hold every layer of them (it only spares reading the other layers' weights).
    ``low_rank``: low-rank updates use the factor form (module docstring); False forms every ΔW.
    """
    import pandas as pd

    from peftarena_cli.errors import IncompatibleInputs
    from peftarena_cli.weights.deltas import iter_module_deltas

    covered = set.intersection(*(set(m.module_group) for m in sets.values())) if sets else set()
    changed = ft.module_names()
    wanted = [n for n in changed if (n in modules if modules is not None else n in covered)]
    if modules is not None:
        missing = [n for n in wanted if n not in covered]
        if missing:
            raise IncompatibleInputs(f"the statistics lack module {missing[0]!r} ({len(missing)} missing)",
                                     hint="collect the stats with the same --modules, or drop --stats")
    if not wanted:
        raise IncompatibleInputs(
            f"no module changed by {ft.spec!r} is covered by the statistics/selection "
            f"({len(changed)} changed, {len(covered)} covered)",
            hint="check that the adapter belongs to this base model and the --modules selection")
    want = set(wanted)
    rows: list[dict] = []
    done = 0
    for md in iter_module_deltas(base, ft, modules=wanted, layers=layers, device=device):
        if md.name not in want:
            continue
        if low_rank and md.is_low_rank:
            rows.extend(csd_rows(md.name, md.layer, md.kind, md.w0, None, sets, alphas, eps, factors=md.factors))
        else:
            rows.extend(csd_rows(md.name, md.layer, md.kind, md.w0, md.dense(), sets, alphas, eps))
        done += 1
        if callback:
            callback(done, len(wanted), md.name)
    return pd.DataFrame(rows)


def csd_rows_projected(name: str, layer: int, kind: str, factors, sets: dict, alphas=(1.0,),
                       eps: float = EPS) -> list[dict]:
    """:func:`csd_rows` from :class:`~peftarena_cli.activations.moments.ProjectedMoments` (one fixed
    low-rank ΔW = B A): E‖ΔW h‖² = Σ (BᵀB) ∘ E[(Ah)(Ah)ᵀ], E‖W0 h‖² from the base module's outputs."""
    import torch

    B, A = (t.to(torch.float64) for t in factors)
    BtB, AAt = B.T @ B, A @ A.T
    rows = []
    for a in alphas:
        row = {"module": name, "layer": layer, "kind": kind, "alpha": float(a)}
        a2 = float(a) * float(a)
        fro2 = a2 * float((BtB * AAt).sum())
        row["delta_fro2"] = fro2
        for role, m in sets.items():
            e_dw = a2 * float((BtB * m.P(name).to(BtB.device)).sum())
            e_w0, h2 = m.w0h2(name), m.h2(name)
            row[f"csd_abs_{role}"] = e_dw
            row[f"csd_rel_{role}"] = e_dw / (e_w0 + eps)
            row[f"csd_un_{role}"] = e_dw / ((fro2 + eps) * (h2 + eps))
            row[f"h2_{role}"] = h2
            row[f"w0h2_{role}"] = e_w0
            row[f"n_tokens_{role}"] = m.n(name)
        _add_ratios(row, sets, eps)
        rows.append(row)
    return rows
