"""The SVD of a base weight W0 = U Σ Vᵀ, cached on disk and reused across every adapter of that base.

The SVD does not depend on the adapter, so it is computed once per base tensor and stored under
``$PEFTARENA_HOME/cache/svd/<tensor identity>.safetensors`` (float32 S, Vh and, where it is kept,
U; see :func:`thin_svd`'s ``with_u``). The key is the
tensor's identity (file header hash + size + name + dtype/shape/offsets, see
:func:`peftarena_cli.artifacts.identity.tensor_identity`), so a changed base file never hits a
stale entry. Writes are atomic. The decomposition runs in float64 on the device the weight is on
(never in bf16/fp16), through the eigendecomposition of the smaller Gram matrix (see
:func:`thin_svd`); the cache stores it in the weight's dtype.
"""

from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

VERSION = "v2"  # bump when the stored layout or the algorithm changes
KAPPA_DERIVED_U = 100.0  # U is left out (and derived as W0 V Σ⁻¹ when needed) only up to this σ_1/σ_k


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
        if hit is not None and hit[1].device == w0.device:
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
                from peftarena_cli.artifacts.safetensors_io import WeightSource

                src = WeightSource(path, device=str(w0.device))
                u, s, vh = src.get("U") if "U" in src else None, src.get("S"), src.get("Vh")
                k = min(w0.shape)
                if (u is None or u.shape == (w0.shape[0], k)) and vh.shape == (k, w0.shape[1]):
                    with self._lock:
                        self.hits += 1
                    return u, s, vh
            except Exception:  # a corrupt cache entry is recomputed, never trusted
                pass
        u, s, vh = thin_svd(w0, with_u=False)
        with self._lock:
            self.misses += 1
        if path is not None:
            self._store(path, u, s, vh)
        return u, s, vh

    def _store(self, path: Path, u, s, vh) -> None:
        from peftarena_cli.artifacts.atomic import atomic_path, write_safetensors
        from peftarena_cli.errors import OutputError

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                parts = {"S": s.contiguous().cpu(), "Vh": vh.contiguous().cpu()}
                if u is not None:
                    parts["U"] = u.contiguous().cpu()
                write_safetensors(parts, tmp, metadata={"format": "pt", "peftarena_svd": VERSION})
            for old in path.parent.glob(path.name.replace(f"-{VERSION}.", "-v*.")):
                if old != path:  # the same tensor's entry in an earlier layout: never read again
                    old.unlink(missing_ok=True)
        except (OSError, OutputError):
            pass  # a read-only or full cache directory only costs speed


def thin_svd(w0: torch.Tensor, with_u: bool = True):
    """U (out, k), S (k,), Vh (k, in) of a float32/float64 matrix, k = min(out, in), in w0's dtype.

    Computed in float64 through the eigendecomposition of the smaller Gram matrix G = W0ᵀW0 (or
    W0W0ᵀ): G = V Σ² Vᵀ, then σ_i = ‖W0 v_i‖ and u_i = W0 v_i / σ_i. In float64 this is as accurate
    as LAPACK's float64 SVD for singular values down to ~1e-6·σ_1 (the error in σ_i² is
    ~1e-16·σ_1²) and faster than its float32 SVD on these shapes. A matrix with a smaller singular
    value (or a zero one) goes to the float64 SVD instead.

    With ``with_u=False``, U is returned as None when it is the side that costs a product
    (W0 at least as tall as wide) and W0 is well conditioned (σ_1/σ_k ≤ ``KAPPA_DERIVED_U``): then
    σ_i = √λ_i and U = W0 V Σ⁻¹ (:func:`left_vectors`, :func:`ut_times`) is as accurate in float32
    as a stored U, to within κ·2⁻²⁴ ≤ 6e-6.
    """
    dtype = w0.dtype if w0.dtype in (torch.float32, torch.float64) else torch.float32
    w = w0.double()
    if w.numel() == 0:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        return u.to(dtype), s.to(dtype), vh.to(dtype)
    tall = w.shape[0] >= w.shape[1]
    g = gram(w if tall else w.T)
    lam, vecs = eigh(g)
    lam, vecs = lam.flip(0), vecs.flip(1)
    if tall and not with_u:
        top = float(lam[0])
        if math.isfinite(top) and top > 0 and float(lam[-1]) >= top / KAPPA_DERIVED_U**2:
            s = lam.sqrt()  # eigh returns them in order, each accurate to ~1e-16·σ_1²/σ_i ≤ 1e-12·σ_i here
            return None, s.to(dtype), vecs.T.to(dtype).contiguous()
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


_thread = threading.local()


def eigh(g: torch.Tensor):
    """Eigenvalues (ascending) and eigenvectors of a symmetric matrix.

    In a thread started under :func:`single_threaded_numpy_lapack` (spectrum's CPU workers), NumPy's
    LAPACK does it: its dsyevd (OpenBLAS in NumPy's wheels) is faster than torch's (MKL) on the
    base's Gram matrices (docs/spectrum.md, "Speed and memory"). Elsewhere, torch's.
    """
    if getattr(_thread, "numpy_lapack", False) and g.device.type == "cpu":
        import numpy as np

        lam, vecs = np.linalg.eigh(g.numpy())
        return torch.from_numpy(lam), torch.from_numpy(vecs)
    return torch.linalg.eigh(g)


@contextmanager
def single_threaded_numpy_lapack():
    """Limit NumPy's BLAS/LAPACK to one thread for the duration (threadpoolctl) and yield an
    initializer for worker threads: in them :func:`eigh` uses NumPy.

    With several workers, a multithreaded OpenBLAS call in each oversubscribes the cores (the cold
    run took twice as long, docs/spectrum.md). So NumPy is used only where every BLAS that
    threadpoolctl finds is down to one thread; otherwise the initializer does nothing.
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        levels = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        ok = bool(levels) and all(n == 1 for n in levels)

        def init() -> None:
            _thread.numpy_lapack = ok

        yield init


def gram(x: torch.Tensor, blocks: int = 3) -> torch.Tensor:
    """xᵀx for x (n, k).

    torch has no symmetric rank-k update (syrk), and a plain ``x.T @ x`` spends half its flops on
    the mirror image. On the CPU the columns are split into ``blocks`` groups and only the blocks
    on and above the diagonal are multiplied (6 of 9): 1.5x faster than ``x.T @ x`` on
    smollm2-135m's shapes, in float64 and float32. On a GPU the single product is faster.
    """
    k = x.shape[1]
    if x.device.type != "cpu" or k < 64 * blocks:
        return x.T @ x
    edges = [round(i * k / blocks) for i in range(blocks + 1)]
    cols = [x[:, edges[i]:edges[i + 1]] for i in range(blocks)]
    g = torch.empty(k, k, dtype=x.dtype, device=x.device)
    for i in range(blocks):
        for j in range(i, blocks):
            b = cols[i].T @ cols[j]
            g[edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = b
            if i != j:
                g[edges[j]:edges[j + 1], edges[i]:edges[i + 1]] = b.T
    return g


def left_vectors(w0: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """U = W0 V Σ⁻¹, for an SVD whose U was left out (float32, w0's device)."""
    return ((w0.double() @ vh.double().T) / s.double()).to(torch.float32)


def ut_times(u, s: torch.Tensor, vh: torch.Tensor, w0: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Uᵀ b for b (out, r); without U as Σ⁻¹ Vᵀ (W0ᵀ b) in float64, which costs O(out·in·r)."""
    if u is not None:
        return u.T @ b
    y = vh.double() @ (w0.double().T @ b.double())
    return (y / s.double()[:, None]).to(b.dtype)
