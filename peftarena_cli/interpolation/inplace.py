"""One loaded model, moved along a path in place: ``set_alpha(α)`` never reloads anything.

* :class:`NativePathModel` wraps a live ``PeftModel`` and copies the adapter's natively scaled
  tensors (:func:`peftarena_cli.interpolation.native.scale_adapter_tensors`) into it: a copy of the
  adapter's size per α, and PEFT's own forward does the rest.
* :class:`DensePathModel` holds a plain model plus, for each changed weight, W0 and ΔW, and
  writes W0 + αΔW into the weight (one fused add per module per α).

Where the pieces come from:

* ΔW of an adapter: :func:`peftarena_cli.interpolation.sweep.dense_deltas_from_adapter` (the method's
  former in ``peftarena_cli.weights``);
* ΔW of a full fine-tune: :func:`dense_deltas_from_full` (every parameter that differs, read
  lazily from the fine-tuned checkpoint one tensor at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peftarena_cli.artifacts.keys import base_key
from peftarena_cli.errors import IncompatibleInputs, NumericalError
from peftarena_cli.interpolation.native import (base_row_norms_from_weights, check_relative_to_base, magnitude_modules,
                                        native_method, scale_adapter_tensors)
from peftarena_cli.interpolation.oft_rotation import OFT_KEY_SUFFIX
from peftarena_cli.weights.full import check_full_finetune
from peftarena_cli.weights.oft import cayley, oft_parts, orthogonality_error, variant_of


def _tuner_base_weight(peft_model, module: str):
    sub = peft_model.get_base_model().get_submodule(module)
    base = sub.get_base_layer() if hasattr(sub, "get_base_layer") else sub
    return base.weight


class NativePathModel:
    """A PeftModel whose adapter tensors are rescaled in place to sit at path position α."""

    path = "native"

    def __init__(self, peft_model, config: dict, scale_mode: str = "linear", layer_scales: dict | None = None,
                 adapter_name: str = "default", merge: bool = False):
        from peft import get_peft_model_state_dict

        check_relative_to_base(config)
        self.model = peft_model
        self.config = config
        self.entry = native_method(config)  # the registry's native path: its kind, scaled tensors, linearity
        self.method = self.entry.name
        self.scale_mode = scale_mode
        self.layer_scales = layer_scales
        self.adapter_name = adapter_name
        self.tensors = {k: v.detach().clone() for k, v in
                        get_peft_model_state_dict(peft_model, adapter_name=adapter_name).items()}
        self.base_row_norms = None
        if self.entry.moves_magnitude:
            mods = magnitude_modules(self.tensors)
            self.base_row_norms = base_row_norms_from_weights(lambda m: _tuner_base_weight(peft_model, m).detach(), mods)
        self.alpha = 1.0
        self.current = self.tensors
        self._live = self._map_live_params()
        self._dirty: set[str] = set()
        # merge=True: after each α, PEFT's own merge writes W(α) into the base weights (from a kept
        # copy of W0), so forward passes cost what the base model's do (OFT otherwise re-forms its
        # rotations on every forward). Used by sweeps that evaluate.
        self.merge = merge
        self._tuners = []
        self._tuner_names: list[str] = []
        if merge:
            from peft.tuners.tuners_utils import BaseTunerLayer

            for name, mod in peft_model.get_base_model().named_modules():
                if isinstance(mod, BaseTunerLayer) and adapter_name in getattr(mod, "merged_adapters", []) + list(
                        getattr(mod, "active_adapters", [])):
                    base = mod.get_base_layer()
                    if getattr(base, "weight", None) is not None:
                        self._tuners.append((mod, base.weight, base.weight.detach().clone()))
                        self._tuner_names.append(name)
        # a native path linear in α (the registry's ``linear``: LoRA, VeRA, MiSS scale one factor by α)
        # has the merged weight W0 + α·ΔW(1): after one PEFT merge at α = 1 (and a check at α = 1/2
        # that the path really is linear), done here at setup, each α is one fused add per weight
        # instead of PEFT's merge of every module
        self._delta1: list | None = None
        self._oft_keys: list | None = None
        if merge and self.entry.linear and not layer_scales and self._live is not None and self._tuners:
            self._delta1 = self._linear_deltas()  # part of the setup; leaves the model merged at α = 1
        elif merge and self.entry.rotates and self._live is not None and self._tuners:
            # OFT: W(α) = W0 Rᵀ(α) formed here, all blocks of a module at once (the rotation code
            # spectrum uses, tested against PEFT's merge), checked once against PEFT's merge at
            # α = 1/2; PEFT's per-module merge is the fallback
            self._oft_keys = self._oft_fast_keys()

    def _map_live_params(self) -> dict | None:
        """saved key -> live tensor (PEFT inserts the adapter name into the key); None if any key is unmapped."""
        live = self.model.state_dict(keep_vars=True)
        out = {}
        a = self.adapter_name
        for k in self.tensors:
            head, _, last = k.rpartition(".")
            for cand in (f"{head}.{a}.{last}", f"{k}.{a}", f"{k}.{a}.weight"):
                if cand in live and tuple(live[cand].shape) == tuple(self.tensors[k].shape):
                    out[k] = live[cand]
                    break
            else:
                return None
        return out

    def tensors_at(self, alpha: float) -> dict:
        return scale_adapter_tensors(self.config, self.tensors, alpha, scale_mode=self.scale_mode,
                                     base_row_norms=self.base_row_norms, layer_scales=self.layer_scales)

    def set_alpha(self, alpha: float) -> None:
        import torch

        with torch.no_grad():
            self._set_tensors(alpha)
            if self._delta1 is not None:
                for (mod, weight, w0), d in zip(self._tuners, self._delta1):
                    torch.add(w0, d, alpha=float(alpha), out=weight.data)
            elif self._oft_keys is not None:
                self._oft_merge()
            else:
                self._peft_merge()
        self.alpha = float(alpha)

    def _set_tensors(self, alpha: float) -> None:
        """Copy the adapter tensors at ``alpha`` into the live model (no merge); call under no_grad."""
        from peft import set_peft_model_state_dict

        self.current = self.tensors_at(alpha)
        if self._live is not None:  # direct copies of the tensors that differ from the saved ones
            for k, v in self.current.items():
                if v is self.tensors[k] and k not in self._dirty:
                    continue
                self._live[k].data.copy_(v)
                if v is self.tensors[k]:
                    self._dirty.discard(k)
                else:
                    self._dirty.add(k)
        else:  # pragma: no cover - PEFT's own key mapping
            res = set_peft_model_state_dict(self.model, self.current, adapter_name=self.adapter_name)
            bad = list(getattr(res, "unexpected_keys", []))
            if bad:
                raise IncompatibleInputs(f"adapter tensors did not map into the model: {bad[0]}")

    def _peft_merge(self) -> None:
        for mod, weight, w0 in self._tuners:
            weight.data.copy_(w0)
            mod.merged_adapters = []
            mod.merge(adapter_names=[self.adapter_name])

    def _matches_peft_merge(self, fast_merge, rtol: float, atol: float) -> bool:
        """Whether ``fast_merge()`` (after the adapter tensors are set to α = 1/2) writes the weights
        PEFT's merge writes; ``atol`` is relative to each weight's largest entry. Leaves the model
        as it was (at ``self.alpha``, merged by PEFT)."""
        import torch

        here = self.alpha
        with torch.no_grad():
            try:
                self._set_tensors(0.5)
                self._peft_merge()
                want = [weight.detach().clone() for _, weight, _ in self._tuners]
                fast_merge()
                return all(torch.allclose(weight, w, rtol=rtol, atol=atol * float(w.abs().max()))
                           for (_, weight, _), w in zip(self._tuners, want))
            except Exception:  # noqa: BLE001 - anything the fast path cannot do goes to PEFT's merge
                return False
            finally:
                self._set_tensors(here)
                self._peft_merge()

    def _linear_deltas(self) -> list | None:
        """ΔW(1) per merged weight, if W0 + ΔW(1)/2 is PEFT's merge at α = 1/2; else None."""
        import torch

        with torch.no_grad():
            self._set_tensors(1.0)
            self._peft_merge()
            deltas = [weight.detach() - w0 for _, weight, w0 in self._tuners]

        def half():
            for (_, weight, w0), d in zip(self._tuners, deltas):
                torch.add(w0, d, alpha=0.5, out=weight.data)

        return deltas if self._matches_peft_merge(half, rtol=1e-5, atol=1e-6) else None

    def _oft_merge(self, keys: list | None = None) -> None:
        """W(α) = W0 Rᵀ(α) for every OFT tuner, from the current (α-scaled) generators."""
        import types

        import torch

        for (mod, weight, w0), name, key in zip(self._tuners, self._tuner_names, keys or self._oft_keys):
            ft = types.SimpleNamespace(modules={name: {"oft_R.weight": self.current[key]}}, config=self.config)
            rot = oft_parts(name, w0, ft, str(w0.device), None)["rot_blocks"].to(w0.dtype)  # (b, n, n)
            b, n, _ = rot.shape
            w = torch.bmm(w0.reshape(w0.shape[0], b, n).transpose(0, 1), rot)  # (b, out, n)
            weight.data.copy_(w.transpose(0, 1).reshape(w0.shape))
            mod.merged_adapters = [self.adapter_name]

    def _oft_fast_keys(self) -> list | None:
        """The generator key of every tuner, if the fast OFT merge equals PEFT's at α = 1/2; else None."""
        keys = []
        for name in self._tuner_names:
            hit = [k for k in self.tensors if k.endswith(f"{name}.oft_R.weight")]
            if len(hit) != 1:
                return None
            keys.append(hit[0])
        return keys if self._matches_peft_merge(lambda: self._oft_merge(keys), rtol=1e-4, atol=1e-5) else None

    def orthogonality_error(self) -> float | None:
        """max ‖RᵀR − I‖_F over the OFT blocks at the current α (None for non-OFT methods)."""
        if not self.entry.rotates:
            return None
        neumann, terms = variant_of(self.config)
        errs = [orthogonality_error(cayley(v, neumann, terms)) for k, v in self.current.items() if k.endswith(OFT_KEY_SUFFIX)]
        return max(errs) if errs else None


@dataclass
class DensePathModel:
    """A plain model whose changed weights are set to W0 + αΔW in place.

    The changed parameters are re-pointed into one flat buffer per (dtype, device), with W0 and ΔW
    stored flat alongside, so moving to α is a single fused ``add`` over all modules.
    """

    model: object
    w0: dict = field(default_factory=dict)      # parameter name -> W0 (a view into the flat W0 buffer)
    delta: dict = field(default_factory=dict)   # parameter name -> ΔW (a view into the flat ΔW buffer)
    path: str = "dense"
    alpha: float = 1.0

    def __post_init__(self):
        import torch

        params = dict(self.model.named_parameters())
        groups: dict = {}
        for name in self.delta:
            if name not in params:
                raise IncompatibleInputs(f"the model has no parameter {name!r}")
            p = params[name]
            groups.setdefault((p.dtype, p.device), []).append(name)
        self._flat = []
        for (dtype, device), names in groups.items():
            total = sum(params[n].numel() for n in names)
            fw0 = torch.empty(total, dtype=dtype, device=device)
            fd = torch.empty(total, dtype=dtype, device=device)
            fp = torch.empty(total, dtype=dtype, device=device)
            off = 0
            with torch.no_grad():
                for n in names:
                    p = params[n]
                    k = p.numel()
                    fw0[off:off + k].copy_(self.w0[n].reshape(-1))
                    fd[off:off + k].copy_(self.delta[n].reshape(-1))
                    fp[off:off + k].copy_(p.data.reshape(-1))
                    p.data = fp[off:off + k].view(p.shape)
                    self.w0[n] = fw0[off:off + k].view(p.shape)
                    self.delta[n] = fd[off:off + k].view(p.shape)
                    off += k
            self._flat.append((fw0, fd, fp))

    def set_alpha(self, alpha: float) -> None:
        import torch

        with torch.no_grad():
            for fw0, fd, fp in self._flat:
                torch.add(fw0, fd, alpha=float(alpha), out=fp)
        self.alpha = float(alpha)

    def orthogonality_error(self):
        return None


def _check_finite(name: str, t) -> None:
    import torch

    if not bool(torch.isfinite(t).all()):
        raise NumericalError(f"ΔW of {name} contains NaN or Inf")


def dense_deltas_from_full(model, finetuned_source, callback=None):
    """(w0, delta) for every parameter of ``model`` (the base) that differs in the fine-tuned checkpoint.

    ``finetuned_source`` is a :class:`~peftarena_cli.artifacts.safetensors_io.WeightSource`; tensors are
    read one at a time. A checkpoint lacking one of the base's parameters is refused
    (:func:`~peftarena_cli.weights.full.check_full_finetune`); a tied head is not among the
    parameters (``named_parameters`` lists a shared tensor once, under the embedding's name).
    """
    import torch

    w0, delta = {}, {}
    named = list(model.named_parameters())
    # tied=False: a head listed here is a parameter of its own, so the checkpoint must hold it
    check_full_finetune([n for n, _ in named], finetuned_source, "the fine-tuned checkpoint", tied=False)
    for i, (name, p) in enumerate(named):
        key = name if name in finetuned_source else (
            base_key(finetuned_source, name[: -len(".weight")]) if name.endswith(".weight") else finetuned_source.find(name))
        if key is not None:
            w1 = finetuned_source.get(key)
            if tuple(w1.shape) != tuple(p.shape):
                raise IncompatibleInputs(f"{name}: fine-tuned shape {tuple(w1.shape)} != base shape {tuple(p.shape)}")
            d = w1.to(device=p.device, dtype=torch.float32) - p.detach().float()
            _check_finite(name, d)
            if bool(d.abs().max() > 0):
                w0[name] = p.detach().clone()
                delta[name] = d.to(p.dtype)
        if callback:
            callback(i + 1, len(named), name)
    if not delta:
        raise IncompatibleInputs("the fine-tuned checkpoint has no parameter that differs from the base",
                                 hint="check that the two models are different checkpoints of the same architecture")
    return w0, delta
