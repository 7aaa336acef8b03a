from __future__ import annotations

import open_clip
import pytest
import torch

from wrf4cir.config import ModelConfig
from wrf4cir.models import (
    PROJECT_ARCHITECTURES,
    Combiner,
    ModelError,
    build_model,
    create_backbone,
    list_architectures,
    module_of,
)


def batch(model, n=4):
    size = model.clip.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g)
    tokens = open_clip.get_tokenizer("wrf-tiny-vit")(["make the small red circle blue"] * n)
    return images, tokens, images.flip(0)


def test_project_architectures_are_open_clip_configs():
    assert {"wrf-tiny-vit", "wrf-tiny-rn"} <= set(PROJECT_ARCHITECTURES)
    names = list_architectures()
    assert "wrf-tiny-vit" in names and "ViT-B-32" in names and "RN50" in names


@pytest.mark.parametrize("name", ["wrf-tiny-vit", "wrf-tiny-rn"])
@pytest.mark.parametrize("fusion", ["sum", "combiner"])
def test_forward_gives_normalised_query_and_target(name, fusion):
    model, transform, tokenizer = build_model(ModelConfig(name=name, pretrained=None,
                                                          fusion=fusion))
    query, target = model(*batch(model))
    assert query.shape == target.shape == (4, 128)
    torch.testing.assert_close(query.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(target.norm(dim=-1), torch.ones(4))


def test_pretrained_path_loads_through_open_clip(tmp_path):
    torch.manual_seed(1)
    clip, _, _ = create_backbone("wrf-tiny-rn")
    path = tmp_path / "weights.pt"
    torch.save(clip.state_dict(), path)
    torch.manual_seed(2)  # a different random init, which loading must overwrite
    model, _, _ = build_model(ModelConfig(name="wrf-tiny-rn", pretrained=str(path)))
    for k, v in clip.state_dict().items():
        assert torch.equal(model.clip.state_dict()[k], v), k


def test_pretrained_tag_goes_through_open_clip_download(tmp_path, monkeypatch):
    """`pretrained: openai` asks open_clip for the tag; only the download itself is faked."""
    torch.manual_seed(3)
    clip, _, _ = create_backbone("wrf-tiny-vit")
    path = tmp_path / "downloaded.pt"
    torch.save(clip.state_dict(), path)
    asked = {}

    def fake_cfg(model, tag):
        asked["tag"] = (model, tag)
        return {"url": "https://example.invalid/w.pt", "hf_hub": ""}

    monkeypatch.setattr(open_clip.factory, "get_pretrained_cfg", fake_cfg)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda cfg, cache_dir=None:
                        str(path))
    model, _, _ = build_model(ModelConfig(name="wrf-tiny-vit", pretrained="openai"))
    assert asked["tag"] == ("wrf-tiny-vit", "openai")
    w = "clip.visual.conv1.weight"
    assert torch.equal(model.state_dict()[w], clip.state_dict()["visual.conv1.weight"])


def test_unknown_tag_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="pretrained"):
        build_model(ModelConfig(name="wrf-tiny-vit", pretrained="no-such-tag"))
    with pytest.raises(ModelError, match="does not exist"):
        build_model(ModelConfig(name="wrf-tiny-vit", pretrained=str(tmp_path / "w.pt")))


def test_unknown_architecture_suggests_names():
    with pytest.raises(ModelError, match="unknown open_clip architecture 'ViT-B-33'.*ViT-B-32"):
        build_model(ModelConfig(name="ViT-B-33", pretrained=None))


@pytest.mark.parametrize("freeze_image,freeze_text", [(True, False), (False, True), (True, True)])
def test_frozen_encoders_get_no_gradient(freeze_image, freeze_text):
    model, _, _ = build_model(ModelConfig(pretrained=None, fusion="combiner",
                                          freeze_image=freeze_image, freeze_text=freeze_text))
    q, t = model(*batch(model))
    (q * t).sum().backward()
    for name, p in model.named_parameters():
        part = module_of(name)
        frozen = (part == "image" and freeze_image) or (part == "text" and freeze_text)
        assert p.requires_grad == (not frozen), name
        if frozen:
            assert p.grad is None, name
    assert any(p.grad is not None for n, p in model.named_parameters() if n.startswith("fusion"))


def test_logit_scale_fixed_or_learnable():
    fixed, _, _ = build_model(ModelConfig(pretrained=None, logit_scale="fixed",
                                          logit_scale_init=100.0))
    assert not fixed.clip.logit_scale.requires_grad
    assert float(fixed.logit_scale()) == pytest.approx(100.0, rel=1e-5)
    learn, _, _ = build_model(ModelConfig(pretrained=None))
    assert learn.clip.logit_scale.requires_grad
    # the backbone's own initial temperature
    assert float(learn.logit_scale().detach()) == pytest.approx(1 / 0.07, rel=1e-4)


def test_combiner_mixes_features_as_described():
    torch.manual_seed(0)
    comb = Combiner(dim=8, proj_dim=16, hidden_dim=32, dropout=0.5).eval()
    img = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    with torch.no_grad():
        comb.output.weight.zero_()
        comb.output.bias.zero_()
        comb.mix[3].weight.zero_()
        comb.mix[3].bias.fill_(10.0)  # lambda ~ 1: the text feature dominates
    out = comb(img, txt)
    torch.testing.assert_close(out, torch.nn.functional.normalize(txt, dim=-1), atol=1e-3,
                               rtol=0)
