"""act-geom streamed feature-space sums for one module: additive across batches, shards, machines.

For base outputs X0 and fine-tuned outputs X1 (tokens × d, same tokens, padding excluded), and
their row-L2-normalised versions Z0, Z1, one :class:`PairSums` holds

* ``A00`` = X0ᵀX0, ``A11`` = X1ᵀX1, ``A01`` = X0ᵀX1           (d×d)
* ``G00`` = Z0ᵀZ0, ``G11`` = Z1ᵀZ1, ``G01`` = Z0ᵀZ1           (d×d)
* ``s0`` = Σ x0, ``s1`` = Σ x1                                (d)
* ``dd`` = Σ ‖x1 − x0‖²,  ``lnr`` = Σ |log(‖x1‖/‖x0‖)|,  ``n``  (scalars)
* ``ang`` = Σ θ_t, θ_t = ∠(x0_t, x1_t) = 2·atan2(‖z1 − z0‖, ‖z1 + z0‖) (accurate for small angles,
  where arccos of the cosine loses half the digits)
* ``nr1``, ``nr2`` = Σ (ρ_t − 1), Σ (ρ_t − 1)² with the norm ratio ρ_t = ‖x1‖/(‖x0‖ + 1e-12) (shifted
  by 1, its typical value, so the variance does not cancel)
* ``angles``: every θ_t (1-D, one number per token), the one part that grows with the tokens: the
  median angle has no fixed-size sufficient statistic. Additive too (concatenation).

Memory is 6d² + 2d numbers per module (float64 by default) plus one number per token. Every
act-geom metric follows from these (see :mod:`peftarena_cli.activations.metrics`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from peftarena_cli.errors import IncompatibleInputs, InvalidArtifact

FORMAT = "peftarena.act-geom-sums/2"  # /2 added ang, nr1, nr2, angles
MATS = ("A00", "A11", "A01", "G00", "G11", "G01")
VECS = ("s0", "s1")
SCALARS = ("dd", "lnr", "ang", "nr1", "nr2", "n")
LISTS = ("angles",)
NORM_EPS = 1e-12


@dataclass
class PairSums:
    A00: object
    A11: object
    A01: object
    G00: object
    G11: object
    G01: object
    s0: object
    s1: object
    dd: object  # 0-d tensors (so they stay on the device; float64)
    lnr: object
    ang: object
    nr1: object
    nr2: object
    n: object
    angles: object = None  # 1-D, one angle per token (kept as a list of batch parts until read)

    @classmethod
    def zeros(cls, d: int, dtype=None, device="cpu") -> "PairSums":
        import torch

        dtype = dtype or torch.float64
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        sc = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(d, d), z(d, d), z(d, d), z(d, d), z(d, d), z(d, d), z(d), z(d), sc(), sc(), sc(), sc(), sc(), sc(),
                   angles=z(0))

    def token_angles(self):
        """Every token's angle θ_t (1-D tensor, in the order added)."""
        import torch

        if isinstance(self.angles, list):
            self.angles = torch.cat(self.angles) if self.angles else torch.zeros(0, dtype=torch.float64)
        return self.angles

    @property
    def dim(self) -> int:
        return self.A00.shape[0]

    @property
    def n_tokens(self) -> int:
        return int(round(float(self.n)))

    def add(self, x0, x1) -> None:
        """Add a batch of matching rows (tokens × d each)."""
        import torch

        dt = self.A00.dtype
        x0 = x0.to(dt)
        x1 = x1.to(dt)
        n0 = x0.norm(dim=1, keepdim=True)
        n1 = x1.norm(dim=1, keepdim=True)
        z0 = x0 / n0.clamp_min(NORM_EPS)
        z1 = x1 / n1.clamp_min(NORM_EPS)
        self.A00.addmm_(x0.T, x0)
        self.A11.addmm_(x1.T, x1)
        self.A01.addmm_(x0.T, x1)
        self.G00.addmm_(z0.T, z0)
        self.G11.addmm_(z1.T, z1)
        self.G01.addmm_(z0.T, z1)
        self.s0 += x0.sum(0)
        self.s1 += x1.sum(0)
        diff = (x1 - x0).to(torch.float64)
        self.dd += (diff * diff).sum()
        ratio = (n1.to(torch.float64) + NORM_EPS) / (n0.to(torch.float64) + NORM_EPS)
        self.lnr += ratio.log().abs().sum()
        rho1 = n1.to(torch.float64).reshape(-1) / (n0.to(torch.float64).reshape(-1) + NORM_EPS) - 1.0
        self.nr1 += rho1.sum()
        self.nr2 += (rho1 * rho1).sum()
        theta = 2.0 * torch.atan2(torch.linalg.vector_norm(z1 - z0, dim=1), torch.linalg.vector_norm(z1 + z0, dim=1))
        self.ang += theta.to(torch.float64).sum()
        if not isinstance(self.angles, list):
            self.angles = [self.angles] if self.angles is not None and self.angles.numel() else []
        self.angles.append(theta.to(self.A00.dtype))
        self.n += x0.shape[0]

    def merge(self, other: "PairSums") -> "PairSums":
        for k in MATS + VECS + SCALARS:
            a, b = getattr(self, k), getattr(other, k)
            if a.shape != b.shape:
                raise IncompatibleInputs("act-geom sums of different module shapes cannot be merged")
            setattr(self, k, a + b.to(a.device, a.dtype))
        import torch

        mine = self.token_angles()
        self.angles = torch.cat([mine, other.token_angles().to(mine.device, mine.dtype)])
        return self

    def tensors(self) -> dict:
        out = {k: getattr(self, k) for k in MATS + VECS + SCALARS}
        out["angles"] = self.token_angles()
        return out


def save_sums(path, sets: dict[str, dict[str, PairSums]], meta: dict | None = None) -> Path:
    """Write ``{prompt set: {module: PairSums}}`` atomically to one safetensors file."""
    from peftarena_cli.artifacts.atomic import atomic_path, write_safetensors

    tensors = {}
    for sname, mods in sets.items():
        for mname, ps in mods.items():
            for k, t in ps.tensors().items():
                t = t.detach().cpu()
                tensors[f"{sname}/{mname}/{k}"] = (t.reshape(1) if t.dim() == 0 else t).contiguous()
    m = {"format": FORMAT, "sets": json.dumps({s: list(mods) for s, mods in sets.items()}),
         "meta": json.dumps(meta or {})}
    p = Path(path)
    with atomic_path(p) as tmp:
        write_safetensors(tensors, tmp, metadata=m)
    return p


def load_sums(path, device: str = "cpu") -> tuple[dict[str, dict[str, PairSums]], dict]:
    from safetensors import safe_open

    from peftarena_cli.artifacts.safetensors_io import check_safetensors

    p = Path(path)
    if not p.is_file():
        from peftarena_cli.errors import InputNotFound

        raise InputNotFound(f"no such sums file: {str(path)!r}")
    check_safetensors(p)
    with safe_open(str(p), framework="pt", device=device) as f:
        md = f.metadata() or {}
        if md.get("format") != FORMAT:
            old = str(md.get("format", "")).startswith("peftarena.act-geom-sums/")
            raise InvalidArtifact(
                f"{str(path)!r} is an act-geom sums file of an older format ({md['format']})" if old
                else f"{str(path)!r} is not an act-geom sums file",
                hint="collect it again with this version's `peftarena act-geom --save-sums` (the format now "
                     "holds the angular drift and norm ratio sums)" if old
                else "pass files written by `peftarena act-geom --save-sums`")
        out = {}
        for sname, mods in json.loads(md["sets"]).items():
            out[sname] = {}
            for mname in mods:
                kw = {k: f.get_tensor(f"{sname}/{mname}/{k}") for k in MATS + VECS + SCALARS + LISTS}
                for k in SCALARS:
                    kw[k] = kw[k].reshape(())
                out[sname][mname] = PairSums(**kw)
    return out, json.loads(md.get("meta", "{}"))


def merge_sums_files(paths) -> tuple[dict[str, dict[str, PairSums]], list[dict]]:
    merged: dict[str, dict[str, PairSums]] = {}
    metas = []
    for p in paths:
        sets, meta = load_sums(p)
        metas.append(meta)
        if metas[0].get("base") != meta.get("base") or metas[0].get("adapter") != meta.get("adapter"):
            raise IncompatibleInputs(f"sums file {str(p)!r} comes from another base model or adapter",
                                     hint="merge only shards of the same run")
        for sname, mods in sets.items():
            if sname not in merged:
                merged[sname] = mods
                continue
            if list(mods) != list(merged[sname]):
                raise IncompatibleInputs(f"sums file {str(p)!r} covers other modules for {sname!r}",
                                         hint="collect every shard with the same --modules")
            for mname, ps in mods.items():
                merged[sname][mname].merge(ps)
    return merged, metas
