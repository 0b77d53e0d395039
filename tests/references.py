"""Independent reference computations and shared data for the tests (no test module imports another;
the ones that share a reference import it from here).

* ``dense_reference`` / ``direct_outputs``: act-geom's metrics computed densely in token space, and
  module outputs from unbatched forward passes;
* ``peft_merged`` / ``base_weights`` and ``METHOD_CASES``: PEFT's own merge as the reference for
  ΔW / W1, and one adapter config per method variant;
* ``PROMPTS``: the short prompt set of the activation tests.
"""

from __future__ import annotations

import math

PROMPTS = ["Ava has 3 apples.", "What is 12 + 7?", "Hello there, how are you today my friend?",
           "x", "Tom buys 4 books and sells 2. How many are left?", "The capital of France is"]


def dense_reference(X0, X1, ks=(32, 64)):
    """act-geom's metrics computed directly in token space, float64 (the reference for the streamed sums)."""
    import torch

    X0 = X0.double()
    X1 = X1.double()
    X0c = X0 - X0.mean(0)
    X1c = X1 - X1.mean(0)
    raw = (X1c - X0c).norm() / X0c.norm()
    U, _, Vh = torch.linalg.svd(X1c.T @ X0c)
    R = U @ Vh
    proc = (X1c @ R - X0c).norm() / X0c.norm()
    Z0 = X0 / X0.norm(dim=1, keepdim=True)
    Z1 = X1 / X1.norm(dim=1, keepdim=True)
    K0, K1 = Z0 @ Z0.T, Z1 @ Z1.T
    gram = (K1 - K0).norm() / K0.norm()
    K, L = X0c @ X0c.T, X1c @ X1c.T  # token-space HSIC form of linear CKA
    cka = (K * L).sum() / torch.sqrt((K * K).sum() * (L * L).sum())
    cos = torch.nn.functional.cosine_similarity(X0, X1, dim=1)
    lnr = (X1.norm(dim=1) / X0.norm(dim=1)).log().abs().mean()
    # the study's per-token statistics, directly: arccos of the cosine (float64; these angles are not
    # small), the torch median (lower middle value), the norm ratio's population std
    angle = torch.arccos(cos.clamp(-1, 1))
    ratio = X1.norm(dim=1) / (X0.norm(dim=1) + 1e-12)
    out = dict(raw_residual=raw, procrustes_residual=proc, procrustes_improvement=raw - proc,
               gram_distortion=gram, cka=cka, cos_drift=1 - cos.mean(), log_norm_ratio=lnr,
               angular_drift_mean=angle.mean(), angular_drift_median=angle.median(),
               norm_ratio_mean=ratio.mean(), norm_ratio_std=ratio.std(unbiased=False))
    for k in ks:
        V0 = torch.linalg.svd(X0c, full_matrices=False)[2][:k].T
        V1 = torch.linalg.svd(X1c, full_matrices=False)[2][:k].T
        out[f"pca_dist_{k}"] = (V0 @ V0.T - V1 @ V1.T).norm() / math.sqrt(2 * k)
    return {k: float(v) for k, v in out.items()}


def direct_outputs(model, tok, prompts, names, max_length=512):
    """Unbatched forward passes; each module's output rows concatenated over prompts."""
    import torch

    mods = dict(model.named_modules())
    store = {n: [] for n in names}
    hs = [mods[n].register_forward_hook(lambda m, i, o, n=n: store[n].append(o[0].detach())) for n in names]
    with torch.no_grad():
        for p in prompts:
            ids = tok(p)["input_ids"][:max_length]
            model(input_ids=torch.tensor([ids]))
    for h in hs:
        h.remove()
    return {n: torch.cat(v) for n, v in store.items()}


def peft_merged(model_dir, adapter_dir) -> dict:
    """Reference: PEFT loads the adapter onto the base and merges it (its own code path)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    pm = PeftModel.from_pretrained(base, str(adapter_dir))
    merged = pm.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def base_weights(model_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def lora_all_linear(**kw):
    from peft import LoraConfig

    return LoraConfig(target_modules="all-linear", lora_dropout=0.0, **kw)


def peft_all_linear(name, **kw):
    import peft

    return getattr(peft, name)(target_modules="all-linear", **kw)


# case -> (config factory, method reported, substring of `form`)
METHOD_CASES = {
    "lora": (lambda: lora_all_linear(r=4, lora_alpha=8), "lora", None),
    "rslora": (lambda: lora_all_linear(r=4, lora_alpha=8, use_rslora=True), "rslora", "rslora"),
    "patterns": (lambda: lora_all_linear(r=4, lora_alpha=8, rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 3}),
                 "lora", None),
    "dora": (lambda: lora_all_linear(r=4, lora_alpha=8, use_dora=True), "dora", "magnitude"),
    "pissa_residual": (lambda: lora_all_linear(r=4, lora_alpha=4, init_lora_weights="pissa"), "pissa", "pissa residual"),
    "adalora": (lambda: peft_all_linear("AdaLoraConfig", init_r=6, target_r=4, lora_alpha=8, total_step=10), "adalora", None),
    "vera": (lambda: peft_all_linear("VeraConfig", r=8), "vera", "saved projections"),
    "vera_unsaved": (lambda: peft_all_linear("VeraConfig", r=8, save_projection=False), "vera", "regenerated"),
    "ia3": (lambda: __import__("peft").IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                                 feedforward_modules=["down_proj"]), "ia3", None),
    "oft_neumann": (lambda: peft_all_linear("OFTConfig", oft_block_size=16, use_cayley_neumann=True), "oft", "cayley-neumann"),
    "oft_exact": (lambda: peft_all_linear("OFTConfig", oft_block_size=16, use_cayley_neumann=False), "oft", "cayley-exact"),
    "oft_coft_share": (lambda: peft_all_linear("OFTConfig", oft_block_size=16, use_cayley_neumann=False, coft=True, eps=0.3,
                                     block_share=True), "coft", "coft"),  # a coft adapter is the registry's coft entry
    "boft": (lambda: peft_all_linear("BOFTConfig", boft_block_size=8, boft_n_butterfly_factor=2), "boft", "butterfly"),
    "miss": (lambda: peft_all_linear("MissConfig", r=8), "miss", "standard"),
    "miss_bat": (lambda: peft_all_linear("MissConfig", r=8, init_weights="bat"), "miss", "bat"),
    "miss_mini": (lambda: peft_all_linear("MissConfig", r=8, init_weights="mini", mini_r=4), "miss", "mini"),
}
