"""Batch norms folded into convolutions (features.bn_fold) against the unfolded model, with non-trivial
running statistics, at an input size other than the probe's; and the refusals: a conv output that also feeds
something else, a model in training mode."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from exdd_core.features.backbone import BackboneSpec, PatchFeatureExtractor, to_tensor
from exdd_core.features.bn_fold import fold_batch_norms


def randomise_norms(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_folded_model_gives_the_same_features(name):
    torch.manual_seed(0)
    model = randomise_norms(timm.create_model(name, features_only=True, out_indices=(2, 3)), 1)
    folded = fold_batch_norms(model)
    assert folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())  # every one folded
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original untouched
    x = torch.randn(2, 3, 120, 88, generator=torch.Generator().manual_seed(2))  # not the probe's size
    with torch.inference_mode():
        for a, b in zip(model(x), folded(x), strict=True):
            scale = float(a.abs().max())
            assert float((a - b).abs().max()) <= 1e-5 * scale


class ConvOutputUsedTwice(nn.Module):
    """conv -> bn, plus the conv output itself: folding the bn into the conv would change the second use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv(x)
        return self.bn(c) + c


def test_norms_without_affine_or_running_statistics():
    # affine=False folds (scale 1, shift 0); no running statistics (batch statistics in eval) must not fold
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)).eval()
    plain[1].running_mean.copy_(torch.randn(4, generator=torch.Generator().manual_seed(5)))
    folded = fold_batch_norms(plain)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        assert torch.allclose(folded(x), plain(x), rtol=1e-5, atol=1e-5)
    batch_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    assert fold_batch_norms(batch_stats) is batch_stats


def test_unknown_patterns_are_refused_and_training_mode_too():
    model = randomise_norms(ConvOutputUsedTwice(), 3)
    assert fold_batch_norms(model) is model
    model.train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(model)


def test_extractor_runs_the_folded_module_and_keeps_timms_for_exports():
    ext = PatchFeatureExtractor(BackboneSpec("resnet18", "random", (2, 3), 0))
    assert any(isinstance(m, nn.BatchNorm2d) for m in ext.model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ext.runner.modules())
    image = np.random.default_rng(4).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    state = {k: v.clone() for k, v in ext.model.state_dict().items()}
    again = PatchFeatureExtractor.with_state_dict("resnet18", [2, 3], state, 3, "padded_bilinear")
    assert torch.equal(ext(image), again(image))
    state["bn1.running_mean"] += 0.5  # loaded weights the runner must be folded from again
    moved = PatchFeatureExtractor.with_state_dict("resnet18", [2, 3], state, 3, "padded_bilinear")
    x = to_tensor(image, "cpu", moved.stats)
    with torch.inference_mode():
        for a, b, before in zip(moved.model(x), moved.runner(x), ext.runner(x), strict=True):
            assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())
            assert not torch.allclose(b, before)
