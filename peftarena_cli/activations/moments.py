"""CSD input statistics: per module S = E[h hᵀ], the token count n and E‖h‖².

Streamed: each batch adds Σ h hᵀ (float64) for each module's input, so memory is O(d²) per
module whatever the number of tokens. Modules that read the same tensor (q/k/v, gate/up) share
one matrix. The statistics are additive: shards merge by token-weighted averaging, which equals a
single run over all prompts.

Stats file (safetensors): tensors ``{set}/{group}/S`` (d×d float64, E[hhᵀ]), ``{set}/{group}/n``
(int64, [1]) and ``{set}/{group}/h2`` (float64, [1], E‖h‖²); ``__metadata__`` holds
``format`` = ``peftarena.csd-stats/1``, the base model identity and, per set, the module → group
map, prompt counts and sources.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from peftarena_cli.artifacts.identity import weights_fingerprint  # noqa: F401 (its name here too)
from peftarena_cli.errors import IncompatibleInputs, InvalidArtifact

FORMAT = "peftarena.csd-stats/1"


@dataclass
class InputMoments:
    """Streamed second moments of module inputs for one prompt set."""

    groups: dict = field(default_factory=dict)  # group -> [sum hhᵀ (float64), n, sum ‖h‖²]
    module_group: dict = field(default_factory=dict)  # module -> group (group = a module name)
    n_prompts: int = 0
    n_truncated: int = 0
    source: str = ""

    def add(self, group: str, h) -> None:
        """Add a (tokens × d) batch of inputs of ``group``."""
        import torch

        h = h.to(torch.float64)
        acc = self.groups.get(group)
        if acc is None:
            acc = self.groups[group] = [torch.zeros(h.shape[1], h.shape[1], dtype=torch.float64, device=h.device), 0, 0.0]
        acc[0].addmm_(h.T, h)
        acc[1] += h.shape[0]
        acc[2] += float((h * h).sum())

    def S(self, module: str):
        """E[h hᵀ] for a module's input (float64, d×d)."""
        g = self.groups[self.module_group[module]]
        return g[0] / max(g[1], 1)

    def n(self, module: str) -> int:
        return int(self.groups[self.module_group[module]][1])

    def h2(self, module: str) -> float:
        g = self.groups[self.module_group[module]]
        return g[2] / max(g[1], 1)

    @property
    def modules(self) -> list[str]:
        return list(self.module_group)

    def merge(self, other: "InputMoments") -> "InputMoments":
        """Sum of two partial statistics over disjoint prompts (in place, returns self)."""
        if other.module_group != self.module_group:
            raise IncompatibleInputs("stats shards cover different modules",
                                     hint="collect every shard with the same base model and --modules")
        for g, (s, n, h2) in other.groups.items():
            a = self.groups[g]
            a[0] = a[0] + s.to(a[0].device)
            a[1] += n
            a[2] += h2
        self.n_prompts += other.n_prompts
        self.n_truncated += other.n_truncated
        return self


def save_stats(path, sets: dict[str, InputMoments], base_identity: str = "", extra: dict | None = None) -> Path:
    """Write the statistics of one or more prompt sets atomically to one safetensors file."""
    import torch
    from peftarena_cli.artifacts.atomic import atomic_path, write_safetensors

    tensors, meta_sets = {}, {}
    for sname, m in sets.items():
        for g, (s, n, h2) in m.groups.items():
            tensors[f"{sname}/{g}/S"] = (s / max(n, 1)).detach().to("cpu", torch.float64).contiguous()
            tensors[f"{sname}/{g}/n"] = torch.tensor([n], dtype=torch.int64)
            tensors[f"{sname}/{g}/h2"] = torch.tensor([h2 / max(n, 1)], dtype=torch.float64)
        meta_sets[sname] = {"modules": m.module_group, "n_prompts": m.n_prompts,
                            "n_truncated": m.n_truncated, "source": m.source}
    meta = {"format": FORMAT, "base": base_identity, "sets": json.dumps(meta_sets),
            "extra": json.dumps(extra or {})}
    p = Path(path)
    with atomic_path(p) as tmp:
        write_safetensors(tensors, tmp, metadata=meta)
    return p


def load_stats(path, device: str = "cpu") -> tuple[dict[str, InputMoments], dict]:
    """Read a stats file: ``({set: InputMoments}, metadata)``."""
    from safetensors import safe_open

    from peftarena_cli.artifacts.safetensors_io import check_safetensors

    p = Path(path)
    if not p.is_file():
        from peftarena_cli.errors import InputNotFound

        raise InputNotFound(f"no such stats file: {str(path)!r}")
    check_safetensors(p)
    with safe_open(str(p), framework="pt", device=device) as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise InvalidArtifact(f"{str(path)!r} is not a csd stats file",
                                  hint="pass a file written by `peftarena csd --save-stats`")
        sets_meta = json.loads(meta["sets"])
        out = {}
        for sname, sm in sets_meta.items():
            m = InputMoments(module_group=dict(sm["modules"]), n_prompts=sm["n_prompts"],
                             n_truncated=sm["n_truncated"], source=sm.get("source", ""))
            for g in set(m.module_group.values()):
                n = int(f.get_tensor(f"{sname}/{g}/n")[0])
                S = f.get_tensor(f"{sname}/{g}/S")
                h2 = float(f.get_tensor(f"{sname}/{g}/h2")[0])
                m.groups[g] = [S * n, n, h2 * n]
            out[sname] = m
    return out, meta


def merge_stats_files(paths) -> tuple[dict[str, InputMoments], str]:
    """Load and merge several stats files (shards); returns ``(sets, base identity)``."""
    merged: dict[str, InputMoments] = {}
    base = None
    for p in paths:
        sets, meta = load_stats(p)
        b = meta.get("base", "")
        if base is None:
            base = b
        elif b and base and b != base:
            raise IncompatibleInputs(f"stats file {str(p)!r} was collected on another base model",
                                     hint="merge only shards of the same base model")
        for sname, m in sets.items():
            if sname in merged:
                merged[sname].merge(m)
            else:
                merged[sname] = m
    return merged, base or ""


def check_stats_base(stats_base: str, base_fingerprint: str, base_spec: str) -> None:
    """Refuse statistics collected on another base model: ``stats_base`` is the base identity a stats
    file records (:func:`merge_stats_files`), ``base_fingerprint`` the :func:`weights_fingerprint` of
    the base given now. Files that record no base are accepted."""
    if stats_base and stats_base != base_fingerprint:
        raise IncompatibleInputs(f"the statistics were collected on another base model than {base_spec!r}",
                                 hint="collect them again with this base: peftarena csd BASE ... --save-stats FILE")


@dataclass
class ProjectedMoments:
    """CSD statistics for one fixed low-rank update per module (ΔW = B A, A: r × d_in): per module
    Σ (A h)(A h)ᵀ (r × r, float64), the token count, Σ‖h‖² and Σ‖W0 h‖² (from the base module's
    output minus its bias). Memory r² per module instead of d_in²; valid for that adapter only
    (S itself is never formed, so nothing here is reusable for another adapter)."""

    sums: dict = field(default_factory=dict)  # module -> [Σ (Ah)(Ah)ᵀ, n, Σ‖h‖², Σ‖W0 h‖²]
    n_prompts: int = 0
    n_truncated: int = 0
    source: str = ""

    def add_input(self, name: str, h, A) -> None:
        import torch

        h = h.to(torch.float64)
        p = h @ A.to(h.device, torch.float64).T
        acc = self.sums.get(name)
        if acc is None:
            acc = self.sums[name] = [torch.zeros(p.shape[1], p.shape[1], dtype=torch.float64, device=h.device), 0, 0.0, 0.0]
        acc[0].addmm_(p.T, p)
        acc[1] += h.shape[0]
        acc[2] += float((h * h).sum())

    def add_output(self, name: str, w0h) -> None:
        import torch

        w0h = w0h.to(torch.float64)
        self.sums[name][3] += float((w0h * w0h).sum())

    def P(self, name: str):
        """E[(A h)(A h)ᵀ] (r × r) = A S Aᵀ."""
        s = self.sums[name]
        return s[0] / max(s[1], 1)

    def n(self, name: str) -> int:
        return int(self.sums[name][1])

    def h2(self, name: str) -> float:
        s = self.sums[name]
        return s[2] / max(s[1], 1)

    def w0h2(self, name: str) -> float:
        s = self.sums[name]
        return s[3] / max(s[1], 1)
