"""Batch norms folded into the convolutions that feed them: a CNN's inference form. In eval mode a batch norm
is an affine map per channel, so conv -> BN equals one conv with scaled weights and a bias; on a CPU the BN
passes were 28 % of a Lite0 forward at 632x224 (torch profiler, benchmarks/RESULTS.md §13).

Written here because torch's own folding (`torch.fx.experimental.optimization.fuse`) needs a symbolic trace, and
timm's feature extractors have data-dependent control flow that does not trace. The pairs are found from one
real forward instead: a batch norm is folded when its input is the very tensor a Conv2d module returned. The
folded model is checked against the original on a random input before it is used (`fold_batch_norms`), so a
model where a conv output also feeds something else (a pattern we do not know) is refused, not silently
changed. Values change only by float rounding (~1e-6 relative)."""

from __future__ import annotations

import copy

import torch
from torch import nn

# the folded model's outputs must match the original's to this relative error (float32 rounding is ~1e-6)
_CHECK_RTOL = 1e-4


def _conv_bn_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, batch-norm name) of every BatchNorm2d whose input is exactly the output of one Conv2d call,
    each module called once, from one forward of `probe`."""
    names = {m: n for n, m in model.named_modules()}
    made_by: dict[int, str] = {}  # id of a conv's output tensor -> the conv's name
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []
    keep: list[torch.Tensor] = []  # outputs kept alive so their ids are not reused during the forward

    def hook(module: nn.Module, args: tuple, out: object) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(module, nn.Conv2d) and isinstance(out, torch.Tensor):
            made_by[id(out)] = name
            keep.append(out)
        # a batch norm without running statistics normalises by the batch's: not an affine map, not folded
        elif isinstance(module, nn.BatchNorm2d) and module.running_var is not None and args:
            if id(args[0]) in made_by:
                pairs.append((made_by[id(args[0])], name))

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)
    ]
    try:
        with torch.inference_mode():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return [(c, b) for c, b in pairs if calls[c] == 1 and calls[b] == 1]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Module:
    """Scale conv's weights and set its bias to absorb bn (in float64); return what replaces bn: its
    activation for timm's BatchNormAct2d (drop + act, identities in eval where unused), else nothing."""
    w = conv.weight.detach().double()
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - mean) * scale + beta
    conv.weight = nn.Parameter((w * scale.reshape(-1, 1, 1, 1)).to(conv.weight.dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    after = [getattr(bn, a) for a in ("drop", "act") if isinstance(getattr(bn, a, None), nn.Module)]
    return nn.Sequential(*after) if after else nn.Identity()


def fold_batch_norms(model: nn.Module, probe_hw: tuple[int, int] = (96, 64)) -> nn.Module:
    """A copy of the eval-mode `model` with every conv -> batch-norm pair folded, checked on a seeded random
    input of `probe_hw`; the original model itself if nothing folds or the check fails (then nothing changes
    but speed)."""
    if model.training:
        raise ValueError("fold_batch_norms: the model must be in eval mode (running statistics)")
    device = next(model.parameters()).device
    probe = torch.randn(1, 3, *probe_hw, generator=torch.Generator().manual_seed(0)).to(device)
    pairs = _conv_bn_pairs(model, probe)
    if not pairs:
        return model
    folded = copy.deepcopy(model)
    for conv, bn in pairs:
        _set(folded, bn, _fold_pair(folded.get_submodule(conv), folded.get_submodule(bn)))
    with torch.inference_mode():
        ref, out = model(probe), folded(probe)
    ref = list(ref) if isinstance(ref, list | tuple) else [ref]
    out = list(out) if isinstance(out, list | tuple) else [out]
    for a, b in zip(ref, out, strict=True):
        if not torch.allclose(
            b.float(), a.float(), rtol=_CHECK_RTOL, atol=_CHECK_RTOL * float(a.abs().max())
        ):
            return model
    return folded
