"""One linear module's update ΔW = W1 − W0, formed per PEFT method, one module at a time.

:func:`iter_module_deltas` walks the modules a fine-tune changes, reads each base weight lazily
from a :class:`~peftarena_cli.artifacts.safetensors_io.WeightSource`, asks the method's former (one file per
method in this package, named by the registry :mod:`peftarena_cli.methods`) for the update's structure, and yields a :class:`ModuleDelta`.
Low-rank updates stay as factors (ΔW = B @ A); ``dense()`` materialises only the current module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from peftarena_cli.artifacts.adapters import check_adapter_fits
from peftarena_cli.artifacts.keys import base_key, canonical_order, module_kind, module_layer, select_modules
from peftarena_cli.artifacts.safetensors_io import WeightSource
from peftarena_cli.errors import IncompatibleInputs, NumericalError, UsageError
from peftarena_cli.methods import METHODS, get_method, load_former
from peftarena_cli.weights.finetuned import Finetuned
from peftarena_cli.weights.full import check_full_finetune

# (name, W0) -> (U, S, Vh) of W0 in float32; lets PiSSA/MiLoRA reuse the cached base SVD.
SvdFn = Callable[[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class ModuleDelta:
    """The update of one linear module.

    Exactly one representation is set: ``factors`` (B, A) with ΔW = B @ A (low-rank methods),
    ``delta_t`` (ΔW itself), ``w1_t`` (the effective fine-tuned weight), or a right rotation for
    multiplicative methods, W1 = [diag(row_scale)] W0 M: ``rot_blocks`` (b, n, n) when M is
    block-diagonal (OFT), else the dense ``rotation`` M (BOFT).
    """

    name: str
    layer: int
    kind: str
    method: str
    w0: torch.Tensor
    factors: tuple[torch.Tensor, torch.Tensor] | None = None
    delta_t: torch.Tensor | None = None
    w1_t: torch.Tensor | None = None
    rotation: torch.Tensor | None = None
    rot_blocks: torch.Tensor | None = None
    row_scale: torch.Tensor | None = None  # with a rotation: W1 = diag(row_scale) @ W0 @ M (BOFT)
    form: str = ""  # how the saved adapter was read, e.g. "rslora", "pissa residual", "cayley-neumann(5 terms)"
    extra: dict = field(default_factory=dict)

    @property
    def is_low_rank(self) -> bool:
        return self.factors is not None

    @property
    def is_rotation(self) -> bool:
        return self.rotation is not None or self.rot_blocks is not None

    @property
    def multiplicative(self) -> bool:
        """W1 = W0 @ M for an (approximately) orthogonal M: OFT and BOFT (the registry's ``multiplicative``)."""
        m = METHODS.get(self.method)
        return bool(m and m.multiplicative)

    @property
    def rank_bound(self) -> int | None:
        return None if self.factors is None else int(self.factors[1].shape[0])

    def rotate(self, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """M @ x (or Mᵀ @ x) for the right rotation M of a multiplicative update, x (in, k)."""
        if self.rot_blocks is not None:
            b, n, _ = self.rot_blocks.shape
            blocks = self.rot_blocks.transpose(1, 2) if transpose else self.rot_blocks
            return torch.bmm(blocks, x.reshape(b, n, -1)).reshape(x.shape)
        m = self.rotation.T if transpose else self.rotation
        return m @ x

    def rotation_matrix(self) -> torch.Tensor:
        """The dense right rotation M (in, in)."""
        if self.rot_blocks is not None:
            return torch.block_diag(*self.rot_blocks.unbind(0))
        return self.rotation

    def rotation_orthogonality_error(self) -> float:
        """max |MᵀM − I| (block by block for OFT)."""
        if self.rot_blocks is not None:
            r = self.rot_blocks
            eye = torch.eye(r.shape[-1], device=r.device, dtype=r.dtype)
            return float((r.transpose(1, 2) @ r - eye).abs().max())
        m = self.rotation
        return float((m.T @ m - torch.eye(m.shape[0], device=m.device, dtype=m.dtype)).abs().max())

    def dense(self) -> torch.Tensor:
        """ΔW = W1 − W0, float32 (out, in)."""
        if self.factors is not None:
            b, a = self.factors
            return b @ a
        if self.delta_t is not None:
            return self.delta_t
        if self.is_rotation and self.row_scale is None:
            # W0 (M − I) = ((Mᵀ − I) W0ᵀ)ᵀ, blockwise for OFT
            w0t = self.w0.T.contiguous()
            return (self.rotate(w0t, transpose=True) - w0t).T
        return self.w1() - self.w0

    def w1(self) -> torch.Tensor:
        """The effective fine-tuned weight, float32 (out, in)."""
        if self.w1_t is not None:
            return self.w1_t
        if self.is_rotation:
            w = self.rotate(self.w0.T.contiguous(), transpose=True).T
            return w if self.row_scale is None else self.row_scale[:, None] * w
        return self.w0 + self.dense()

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW @ x for x (in, k), without forming ΔW when the structure allows."""
        if self.factors is not None:
            b, a = self.factors
            return b @ (a @ x)
        if self.is_rotation:
            y = self.w0 @ self.rotate(x)
            if self.row_scale is not None:
                y = self.row_scale[:, None] * y
            return y - self.w0 @ x
        return self.dense() @ x

    def fro2(self) -> float:
        """‖ΔW‖_F², from the factors' r×r Gram matrices when low-rank."""
        if self.factors is not None:
            b, a = self.factors
            return float(((b.T @ b) * (a @ a.T)).sum().clamp_min(0.0))
        return float(self.dense().square().sum())

    def singular_values(self) -> torch.Tensor:
        """Singular values of ΔW (descending); for low-rank forms from an r×r core (QR of the factors)."""
        if self.factors is not None:
            # thin factors (out × r, r × in): host LAPACK is faster than a GPU solver call on them
            b, a = (f.cpu() for f in self.factors)
            qb, rb = torch.linalg.qr(b)
            qa, ra = torch.linalg.qr(a.T)
            return torch.linalg.svdvals(rb @ ra.T)
        return torch.linalg.svdvals(self.dense())


def _check_finite(t: torch.Tensor, module: str, what: str) -> None:
    # one reduction instead of an elementwise mask: a NaN or ±Inf entry makes the sum non-finite;
    # only a non-finite sum (or a float32 overflow of it) pays for the exact check
    if math.isfinite(float(t.sum())):
        return
    if not torch.isfinite(t).all():
        raise NumericalError(f"{what} of module {module!r} contains NaN or Inf")


def iter_module_deltas(
    base: WeightSource,
    ft: Finetuned,
    modules: list[str] | None = None,
    layers: list[int] | None = None,
    device: str = "cpu",
    svd: SvdFn | None = None,
) -> Iterator[ModuleDelta]:
    """Yield one :class:`ModuleDelta` per selected module, in layer order.

    The fine-tune is checked against the base before the first yield, so a misfit fails before any
    work: an adapter may name no module the base lacks (:func:`check_adapter_fits`), a full fine-tune
    may lack no tensor of the base (:func:`check_full_finetune`), and every selected module must be a
    2-D weight of the base. ``svd`` supplies the base SVD for PiSSA/MiLoRA residual
    adapters (default: computed on the spot).
    """
    if ft.kind == "adapter":
        check_adapter_fits(ft.adapter, base, None, ft.spec)  # every module, not only the selected ones
    else:
        check_full_finetune(base.keys(), ft.source, ft.spec, ft.ref.directory)
    names = ft.module_names()
    if not names:
        raise UsageError(f"{ft.spec!r} changes no linear module", hint="check the adapter's target_modules")
    sel = canonical_order(select_modules(names, modules, layers))
    keys = {}
    for n in sel:
        k = base_key(base, n)
        if k is None or len(base.shape(k)) != 2:
            raise IncompatibleInputs(f"module {n!r} of the fine-tune is missing from the base model (no 2-D {n}.weight)")
        keys[n] = k
    ft.base_shapes = {n: base.shape(keys[n]) for n in sel} | {
        n: base.shape(k) for n in names if n not in keys and (k := base_key(base, n)) is not None}
    method = ft.method
    former = load_former(get_method(method))  # the registry's lazy reference (docs/methods.md)
    svd_fn = svd or _plain_svd
    for n in sel:
        w0 = base.get(keys[n]).to(device=device, dtype=torch.float32)
        _check_finite(w0, n, "the base weight")
        parts = former(n, w0, ft, device, svd_fn)
        md = ModuleDelta(name=n, layer=module_layer(n), kind=module_kind(n), method=parts.pop("method", method),
                         w0=w0, **parts)
        for what, t in (("the adapter factors", md.factors[0] if md.factors else None),
                        ("the adapter factors", md.factors[1] if md.factors else None),
                        ("the update", md.delta_t), ("the fine-tuned weight", md.w1_t),
                        ("the rotation", md.rotation), ("the rotation", md.rot_blocks),
                        ("the scale", md.row_scale)):
            if t is not None:
                _check_finite(t, n, what)
        yield md


def _plain_svd(name: str, w0: torch.Tensor):
    return torch.linalg.svd(w0, full_matrices=False)
