"""The SVD of a base weight W0 = U Σ Vᵀ, cached on disk and reused across every adapter of that base.

The SVD does not depend on the adapter, so it is computed once per base tensor and stored under
``$PEFTARENA_HOME/cache/svd/<tensor identity>.safetensors`` (float32 U, S, Vh). The key is the
tensor's identity (file header hash + size + name + dtype/shape/offsets, see
:func:`peftarena_cli.artifacts.identity.tensor_identity`), so a changed base file never hits a
stale entry. Writes are atomic. The SVD runs in float32 (``torch.linalg.svd``, thin) on the device
the weight is on; never in bf16/fp16.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

VERSION = "v1"  # bump when the stored layout or the algorithm changes


def default_root() -> Path:
    from peftarena_cli import registry

    return registry.home() / "cache" / "svd"


class BaseSvdCache:
    """``get(base, key, w0) -> (U, S, Vh)``; ``hits``/``misses`` count how it went."""

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True):
        self.root = Path(root) if root is not None else default_root()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self._last: tuple[str, tuple] | None = None  # the module being worked on is asked for more than once

    def path_for(self, tensor_id: str) -> Path:
        return self.root / f"{tensor_id}-{VERSION}.safetensors"

    def get(self, base, key: str, w0: torch.Tensor):
        """The thin SVD of ``w0`` (the base tensor ``key`` of WeightSource ``base``), on w0's device."""
        tid = base.tensor_id(key)
        if self._last is not None and self._last[0] == tid and self._last[1][0].device == w0.device:
            return self._last[1]
        usv = self._get(tid, w0)
        self._last = (tid, usv)
        return usv

    def _get(self, tid: str, w0: torch.Tensor):
        path = self.path_for(tid) if self.enabled else None
        if path is not None and path.is_file():
            try:
                from safetensors.torch import load_file

                d = load_file(str(path), device=str(w0.device))
                u, s, vh = d["U"], d["S"], d["Vh"]
                k = min(w0.shape)
                if u.shape == (w0.shape[0], k) and vh.shape == (k, w0.shape[1]):
                    self.hits += 1
                    return u, s, vh
            except Exception:  # a corrupt cache entry is recomputed, never trusted
                pass
        u, s, vh = thin_svd(w0)
        self.misses += 1
        if path is not None:
            self._store(path, u, s, vh)
        return u, s, vh

    def _store(self, path: Path, u, s, vh) -> None:
        from safetensors.torch import save_file

        from peftarena_cli.artifacts.atomic import atomic_path

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"U": u.contiguous().cpu(), "S": s.contiguous().cpu(), "Vh": vh.contiguous().cpu()},
                          str(tmp), metadata={"format": "pt", "peftarena_svd": VERSION})
        except OSError:
            pass  # a read-only or full cache directory only costs speed


def thin_svd(w0: torch.Tensor):
    """U (out, k), S (k,), Vh (k, in) of a float32/float64 matrix, k = min(out, in)."""
    if w0.dtype not in (torch.float32, torch.float64):
        w0 = w0.float()
    return torch.linalg.svd(w0, full_matrices=False)
