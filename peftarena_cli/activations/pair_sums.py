"""act-geom streamed feature-space sums for one module: additive across batches, shards, machines.

For base outputs X0 and fine-tuned outputs X1 (tokens × d, same tokens, padding excluded), and
their row-L2-normalised versions Z0, Z1, one :class:`PairSums` holds

* ``A00`` = X0ᵀX0, ``A11`` = X1ᵀX1, ``A01`` = X0ᵀX1           (d×d)
* ``G00`` = Z0ᵀZ0, ``G11`` = Z1ᵀZ1, ``G01`` = Z0ᵀZ1           (d×d)
* ``s0`` = Σ x0, ``s1`` = Σ x1                                (d)
* ``dd`` = Σ ‖x1 − x0‖²,  ``lnr`` = Σ |log(‖x1‖/‖x0‖)|,  ``n``  (scalars)

Memory is 6d² + 2d numbers per module (float64 by default) whatever the number of tokens. Every
act-geom metric follows from these (see :mod:`peftarena_cli.activations.geometry`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from peftarena_cli.errors import IncompatibleInputs, InvalidArtifact

FORMAT = "peftarena.act-geom-sums/1"
MATS = ("A00", "A11", "A01", "G00", "G11", "G01")
VECS = ("s0", "s1")
SCALARS = ("dd", "lnr", "n")
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
    n: object

    @classmethod
    def zeros(cls, d: int, dtype=None, device="cpu") -> "PairSums":
        import torch

        dtype = dtype or torch.float64
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        sc = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(d, d), z(d, d), z(d, d), z(d, d), z(d, d), z(d, d), z(d), z(d), sc(), sc(), sc())

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
        self.n += x0.shape[0]

    def merge(self, other: "PairSums") -> "PairSums":
        for k in MATS + VECS + SCALARS:
            a, b = getattr(self, k), getattr(other, k)
            if a.shape != b.shape:
                raise IncompatibleInputs("act-geom sums of different module shapes cannot be merged")
            setattr(self, k, a + b.to(a.device, a.dtype))
        return self

    def tensors(self) -> dict:
        return {k: getattr(self, k) for k in MATS + VECS + SCALARS}


def save_sums(path, sets: dict[str, dict[str, PairSums]], meta: dict | None = None) -> Path:
    """Write ``{prompt set: {module: PairSums}}`` atomically to one safetensors file."""
    from safetensors.torch import save_file

    from peftarena_cli.artifacts.atomic import atomic_path

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
        save_file(tensors, str(tmp), metadata=m)
    return p


def load_sums(path, device: str = "cpu") -> tuple[dict[str, dict[str, PairSums]], dict]:
    from safetensors import safe_open

    from peftarena_cli.artifacts.weights import check_safetensors

    p = Path(path)
    if not p.is_file():
        from peftarena_cli.errors import InputNotFound

        raise InputNotFound(f"no such sums file: {str(path)!r}")
    check_safetensors(p)
    with safe_open(str(p), framework="pt", device=device) as f:
        md = f.metadata() or {}
        if md.get("format") != FORMAT:
            raise InvalidArtifact(f"{str(path)!r} is not an act-geom sums file",
                                  hint="pass files written by `peftarena act-geom --save-sums`")
        out = {}
        for sname, mods in json.loads(md["sets"]).items():
            out[sname] = {}
            for mname in mods:
                kw = {k: f.get_tensor(f"{sname}/{mname}/{k}") for k in MATS + VECS + SCALARS}
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
