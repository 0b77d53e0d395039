"""The SVD of a base weight W0 = U Σ Vᵀ, cached on disk and reused across every adapter of that base.

The SVD does not depend on the adapter, so it is computed once per base tensor and stored under
``$PEFTARENA_HOME/cache/svd/<tensor identity>.safetensors`` (float32 U, S, Vh). The key is the
tensor's identity (file header hash + size + name + dtype/shape/offsets, see
:func:`peftarena_cli.artifacts.identity.tensor_identity`), so a changed base file never hits a
stale entry. Writes are atomic. The decomposition runs in float64 on the device the weight is on
(never in bf16/fp16), through the eigendecomposition of the smaller Gram matrix (see
:func:`thin_svd`); the cache stores it in the weight's dtype.
"""

from __future__ import annotations

import os
import threading
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
        # the modules being worked on (several at once with worker threads) are asked for more than once
        self._recent: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def path_for(self, tensor_id: str) -> Path:
        return self.root / f"{tensor_id}-{VERSION}.safetensors"

    def get(self, base, key: str, w0: torch.Tensor):
        """The thin SVD of ``w0`` (the base tensor ``key`` of WeightSource ``base``), on w0's device."""
        tid = base.tensor_id(key)
        with self._lock:
            hit = self._recent.get(tid)
        if hit is not None and hit[0].device == w0.device:
            return hit
        usv = self._get(tid, w0)
        with self._lock:
            self._recent[tid] = usv
            while len(self._recent) > 16:
                self._recent.pop(next(iter(self._recent)))
        return usv

    def _get(self, tid: str, w0: torch.Tensor):
        path = self.path_for(tid) if self.enabled else None
        if path is not None and path.is_file():
            try:
                from peftarena_cli.artifacts.weights import WeightSource

                src = WeightSource(path, device=str(w0.device))
                u, s, vh = src.get("U"), src.get("S"), src.get("Vh")
                k = min(w0.shape)
                if u.shape == (w0.shape[0], k) and vh.shape == (k, w0.shape[1]):
                    with self._lock:
                        self.hits += 1
                    return u, s, vh
            except Exception:  # a corrupt cache entry is recomputed, never trusted
                pass
        u, s, vh = thin_svd(w0)
        with self._lock:
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
    """U (out, k), S (k,), Vh (k, in) of a float32/float64 matrix, k = min(out, in), in w0's dtype.

    Computed in float64 through the eigendecomposition of the smaller Gram matrix G = W0ᵀW0 (or
    W0W0ᵀ): G = V Σ² Vᵀ, then σ_i = ‖W0 v_i‖ and u_i = W0 v_i / σ_i. In float64 this is as accurate
    as LAPACK's float64 SVD for singular values down to ~1e-6·σ_1 (the error in σ_i² is
    ~1e-16·σ_1²) and faster than its float32 SVD on these shapes. A matrix with a smaller singular
    value (or a zero one) goes to the float64 SVD instead.
    """
    dtype = w0.dtype if w0.dtype in (torch.float32, torch.float64) else torch.float32
    w = w0.double()
    if w.numel() == 0:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return u.to(dtype), s.to(dtype), vh.to(dtype)
    tall = w.shape[0] >= w.shape[1]
    g = w.T @ w if tall else w @ w.T
    _, vecs = torch.linalg.eigh(g)
    vecs = vecs.flip(1)
    x = w @ vecs if tall else w.T @ vecs
    s = torch.linalg.norm(x, dim=0)
    if not bool(torch.isfinite(s).all()) or float(s.min()) <= 1e-6 * float(s.max()):
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return u.to(dtype), s.to(dtype), vh.to(dtype)
    s, order = torch.sort(s, descending=True, stable=True)
    vecs, x = vecs[:, order], x[:, order]
    x = x / s
    u, vh = (x, vecs.T) if tall else (vecs, x.T)
    return u.to(dtype).contiguous(), s.to(dtype), vh.to(dtype).contiguous()
