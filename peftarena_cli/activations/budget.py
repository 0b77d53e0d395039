"""Memory budgets for the activation diagnostics: ``--max-memory SIZE``, its default, and the plan
of module groups that fit it.

The statistics of csd and act-geom are exact and streamed over tokens, so their memory does not
grow with the prompts, but it is quadratic in a module's width and every selected module is
worked on at once. Under a budget the modules are split into *groups*, in the models' module
order; each group is one pass over the prompts (the model stays loaded). A module's statistics
depend only on its own activations, which do not depend on which other modules are hooked, so
the grouped run gives the single-pass numbers bit for bit.

What a module costs (bytes; d its width, T the most tokens in one batch, a the bytes of the
accumulation dtype); see docs/large-models.md for the derivation and the measured check:

* held until its group is done (``hold``): csd 8·d_in² per prompt set (S = Σhhᵀ, float64), where
  modules reading the same input (q/k/v, gate/up) share one; act-geom (6d² + 2d)·a plus one angle
  per token (a each) and, with ``--gram-sample k``, 2·k·d·8;
* held per batch while its group is collected (``stream``): act-geom keeps the base model's output
  of every module of the group until the fine-tuned pass, T·d·(bytes of the model dtype);
* the transient of one module at a time (``work``): collection ≈ 40·T·d (float64 copies of a
  batch) and, for act-geom's metrics, ≈ 80·d² (the centred covariances and two
  eigendecompositions, float64); csd's CSD step ≈ 40·d_out·d_in (ΔW, W0 and W·S in float64).

The peak of a group is Σ hold + Σ stream + max work; act-geom's metric phase runs on several
modules at once (``workers``) only where the budget holds that many workspaces.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from peftarena_cli.errors import PeftArenaError, UsageError

GIB = 1024 ** 3
RAM_FRACTION = 0.7  # default budget: this fraction of the memory available once the model is loaded
GPU_FRACTION = 0.8  # on CUDA: of the free GPU memory once the model is loaded

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_FACTOR = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
MAX_SIZE = 1024 ** 5  # 1 PiB: beyond any machine's memory, so a larger budget is a typo


class BudgetTooSmall(PeftArenaError):
    """The budget cannot hold even one module (exit 1, before any work); ``needed`` is the smallest
    budget (bytes) that would do."""

    default_hint = "raise --max-memory, or leave the widest modules out with -m"

    def __init__(self, message: str, hint: str | None = None, needed: int = 0):
        super().__init__(message, hint)
        self.needed = needed


def parse_size(text: str, option: str = "--max-memory") -> int:
    """``12G``, ``12GiB``, ``12GB``, ``800M``, ``1.5T``, ``4096K``, ``1000000B`` -> bytes (binary units:
    1G = 1024³ bytes). A number without a unit, an unknown unit or a size of zero is a usage error."""
    m = _SIZE.match(str(text))
    if not m or (not m.group(2) and not m.group(3)):
        raise UsageError(f"{option} {text!r}: expected a size with a unit, like 12G, 800M or 1.5T",
                         hint="units K, M, G, T (binary, 1G = 1024³ bytes), optionally followed by B or iB")
    value = float(m.group(1)) * _FACTOR[m.group(2).lower()]
    if m.group(3) and m.group(3).lower() == "ib" and not m.group(2):
        raise UsageError(f"{option} {text!r}: 'iB' needs a prefix (KiB, MiB, GiB, TiB)")
    if value < 1:
        raise UsageError(f"{option} {text!r}: the budget must be positive")
    if value > MAX_SIZE:  # also a number too long for a float (inf)
        raise UsageError(f"{option} {text!r} is larger than {format_size(MAX_SIZE)}",
                         hint="give the memory the statistics may use, e.g. 12G; no machine has a PiB of RAM")
    return int(value)


def format_size(n: float) -> str:
    for unit, f in (("TiB", 1024 ** 4), ("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= f:
            return f"{n / f:.2f} {unit}" if n < 10 * f else f"{n / f:.1f} {unit}"
    return f"{int(n)} B"


def available_ram() -> int:
    """MemAvailable of /proc/meminfo (bytes); the physical memory where that is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget(device: str) -> tuple[int, str]:
    """The default ``--max-memory`` on ``device``, measured now (after the model is loaded), and how
    it was derived: :data:`GPU_FRACTION` of the free GPU memory on CUDA, else :data:`RAM_FRACTION`
    of the available RAM."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(GPU_FRACTION * free), f"{GPU_FRACTION:.0%} of the free GPU memory ({format_size(free)})"
    avail = available_ram()
    return int(RAM_FRACTION * avail), f"{RAM_FRACTION:.0%} of the available RAM ({format_size(avail)})"


def resolve_budget(max_memory, device: str) -> tuple[int, str]:
    """``max_memory`` (bytes, a size string, or None for the default) -> ``(bytes, where it came from)``."""
    if max_memory is None:
        return default_budget(device)
    b = parse_size(max_memory) if isinstance(max_memory, str) else int(max_memory)
    if b < 1:
        raise UsageError(f"--max-memory {max_memory!r}: the budget must be positive")
    return b, "--max-memory"


def _round_up(n: int) -> str:
    """A size string at least ``n`` bytes, in the largest unit that keeps one decimal."""
    for unit, f in (("G", GIB), ("M", 1024 ** 2), ("K", 1024)):
        if n >= f:
            return f"{math.ceil(n / f * 10) / 10:g}{unit}"
    return f"{n}B"


@dataclass
class Unit:
    """Modules that must be collected together (they share one accumulator), and what they cost."""

    names: list
    hold: int
    stream: int = 0
    work: int = 0


@dataclass
class Plan:
    """Module groups (one pass over the prompts each, per prompt set) that fit ``budget``."""

    what: str
    groups: list  # [[module names]]
    peaks: list  # estimated peak bytes of each group (on top of the loaded models)
    budget: int
    source: str = ""
    workers: int = 1
    prompt_sets: int = 1
    units: list = field(default_factory=list, repr=False)
    stop_after: list = field(default_factory=list)  # per group: the module that runs last (its pass stops there)

    @property
    def passes(self) -> int:
        """Forward passes over each prompt set (per model)."""
        return len(self.groups)

    @property
    def peak(self) -> int:
        return max(self.peaks) if self.peaks else 0

    def describe(self) -> str:
        sizes = [len(g) for g in self.groups]
        shown = ", ".join(str(s) for s in sizes[:12]) + (", ..." if len(sizes) > 12 else "")
        return (f"{self.what} memory plan: {sum(sizes)} modules in {len(self.groups)} group(s) of {shown} modules; "
                f"{self.passes} pass(es) over each of {self.prompt_sets} prompt set(s); estimated peak "
                f"{format_size(self.peak)} on top of the loaded model(s), budget {format_size(self.budget)} "
                f"({self.source})" + (f"; {self.workers} metric workers" if self.workers > 1 else ""))


def plan_groups(units: list[Unit], budget: int, *, what: str, source: str = "", keep_all: bool = False,
                prompt_sets: int = 1, keep_all_reason: str = "", metric_work: int = 0, max_workers: int = 1) -> Plan:
    """Pack ``units`` (in order) into consecutive groups whose estimated peak fits ``budget``.

    The peak of a group is Σ hold + Σ stream + max work. A unit that cannot fit alone raises
    :class:`BudgetTooSmall` naming the smallest budget that would do; so does ``keep_all`` (every
    unit in one group, e.g. to save all statistics in one file) when that group does not fit.
    ``metric_work`` (the workspace of one more metric worker, the largest) sets how many of the
    ``max_workers`` workers the budget allows next to every group's held statistics.
    """
    def peak(group):
        return sum(u.hold + u.stream for u in group) + max((u.work for u in group), default=0)

    alone = [(peak([u]), u) for u in units]
    need = max((p for p, _ in alone), default=0)
    if need > budget:
        p, u = max(alone, key=lambda t: t[0])
        raise BudgetTooSmall(
            f"{what}: a budget of {format_size(budget)} cannot hold module {u.names[0]!r} alone (it needs "
            f"about {format_size(p)}); the smallest budget that would do is {format_size(need)}",
            hint=f"pass --max-memory {_round_up(need)} or more, or leave the widest modules out with -m", needed=need)
    if keep_all:
        total = peak(units)
        if total > budget:
            raise BudgetTooSmall(
                f"{what}: {keep_all_reason or 'this run'} holds every module at once, about {format_size(total)}, "
                f"over the budget of {format_size(budget)}",
                hint=f"pass --max-memory {_round_up(total)} or more, or take a module subset with -m", needed=total)
        groups = [list(units)]
    else:
        groups, cur = [], []
        for u in units:
            if cur and peak(cur + [u]) > budget:
                groups.append(cur)
                cur = []
            cur.append(u)
        if cur:
            groups.append(cur)
    peaks = [peak(g) for g in groups]
    workers = 1
    if metric_work and max_workers > 1:
        held = max(sum(u.hold for u in g) for g in groups)
        workers = int(max(1, min(max_workers, (budget - held) // max(metric_work, 1))))
        peaks = [max(p, sum(u.hold for u in g) + workers * metric_work) for p, g in zip(peaks, groups)]
    return Plan(what, [[n for u in g for n in u.names] for g in groups], peaks, budget, source, workers,
                prompt_sets, groups)
