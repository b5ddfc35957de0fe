import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from sagrflow.cli import main as cli_main
from sagrflow.model.backbone import VLMBackbone, select_layers
from sagrflow.model.config import FrameworkConfig
from sagrflow.model.tiny import make_tiny

from .conftest import IMG, C, build_policy


def test_config_from_dict_rejects_unknown_keys_by_dotted_name():
    with pytest.raises(ValueError, match=r"framework\.action_model\.loss_w_dynn"):
        FrameworkConfig.from_dict({"action_model": {"loss_w_dynn": 0.3}})
    with pytest.raises(ValueError, match=r"framework\.backbone\.pathh"):
        FrameworkConfig.from_dict({"backbone": {"pathh": "x"}})


def test_config_defaults_and_validation_messages():
    cfg = FrameworkConfig.from_dict({})
    am = cfg.action_model
    assert (am.loss_w_fm, am.loss_w_dyn, am.loss_w_geo, am.loss_w_reg) == (1.0, 0.2, 0.1, 1e-3)
    assert am.rrr_threshold == 2.5 and am.world_action_source == "teacher"
    assert cfg.backbone.path == "tiny:qwen2_5_vl"
    with pytest.raises(ValueError, match="world_action_source"):
        FrameworkConfig.from_dict({"action_model": {"world_action_source": "expert"}})
    with pytest.raises(ValueError, match="dit_heads"):
        FrameworkConfig.from_dict({"action_model": {"dit_width": 30, "dit_heads": 4}})
    with pytest.raises(ValueError, match="geometry_encoder is 'none'"):
        FrameworkConfig.from_dict({"action_model": {"use_geometric_branch": True, "geometry_encoder": "none"}})
    with pytest.raises(ValueError, match=r"compile_world='graph': use one of \(False, True, 'graphs'\)"):
        FrameworkConfig.from_dict({"action_model": {"compile_world": "graph"}})
    assert FrameworkConfig.from_dict({"action_model": {"compile_world": "graphs"}}).action_model.compile_world == "graphs"
    assert FrameworkConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"framework\.action_model\.action_horizon: expected an integer"):
        FrameworkConfig.from_dict({"action_model": {"action_horizon": "eight"}})
    layers = FrameworkConfig.from_dict({"backbone": {"layers": [0, -1]}, "action_model": {"dit_depth": 2}})
    assert layers.backbone.layers == [0, -1]


def test_select_layers_first_last_list_and_clear_errors():
    assert select_layers("first", 2, 4) == [0, 1]
    assert select_layers("last", 2, 4) == [2, 3]
    assert select_layers([0, -1], 2, 4) == [0, 3]
    with pytest.raises(ValueError, match="DiT has 6 blocks but the VLM has only 4 layers"):
        select_layers("last", 6, 4)
    with pytest.raises(ValueError, match="lists 3 VLM layers but the DiT has 2 blocks"):
        select_layers([0, 1, 2], 2, 4)
    with pytest.raises(ValueError, match="out of range"):
        select_layers([0, 4], 2, 4)


def test_policy_rejects_dit_deeper_than_vlm(tiny_dir):
    with pytest.raises(ValueError, match="dit_depth <= 4"):
        build_policy(tiny_dir, dit_depth=5)
    policy = build_policy(tiny_dir, dit_depth=2)
    assert policy.layer_ids == [2, 3] and len(policy.head.dit.blocks) == 2


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl", "llava"])
def test_backbone_returns_every_layer_mask_and_visual_positions(tiny_dirs, arch):
    bb = VLMBackbone.from_pretrained(tiny_dirs[arch])
    images = torch.randint(0, 256, (2, C, 3, IMG, IMG), dtype=torch.uint8)
    out = bb(images, ["pick up the red cup", "go"])
    assert len(out.hidden_states) == bb.num_layers + 1 == 5
    seq = out.attention_mask.shape[1]
    assert all(h.shape == (2, seq, bb.hidden_size) for h in out.hidden_states)
    # 2x2 merged tokens per camera (Qwen) / 2x2 patches (LLaVA), for each of the C cameras
    assert out.visual_mask.sum(1).tolist() == [4 * C, 4 * C]
    assert out.attention_mask.sum(1)[0] > out.attention_mask.sum(1)[1]  # "go" is padded
    assert not (out.visual_mask & ~out.attention_mask).any()
    # right padding is inert: the short prompt alone gives the same hidden states
    alone = bb(images[1:], ["go"])
    n = alone.attention_mask.shape[1]
    assert n == int(out.attention_mask[1].sum())
    torch.testing.assert_close(alone.hidden_states[-1][0], out.hidden_states[-1][1, :n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_tiny_qwen_keeps_the_configured_image_resolution(tiny_dirs, arch):
    """112 px cameras give 4x4 merged tokens each, not the 2x2 of a processor capped at 56 px."""
    bb = VLMBackbone.from_pretrained(tiny_dirs[arch])
    images = torch.randint(0, 256, (1, C, 3, 2 * IMG, 2 * IMG), dtype=torch.uint8)
    assert bb(images, ["go"]).visual_mask.sum(1).tolist() == [16 * C]


def test_make_tiny_cli_writes_a_standard_checkpoint(tmp_path):
    out = tmp_path / "tiny_llava"
    assert cli_main(["model", "make-tiny", "--arch", "llava", "--out", str(out)]) == 0
    model = AutoModelForImageTextToText.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    proc = AutoImageProcessor.from_pretrained(out)
    assert model.config.model_type == "llava"
    assert tok.convert_tokens_to_ids("<image>") == model.config.image_token_id
    assert "Pil" in type(proc).__name__  # no torchvision needed
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "LlavaProcessor"
    with pytest.raises(ValueError, match="unknown tiny arch"):
        make_tiny("gpt2", tmp_path / "x")
    for arch, preset in (("llava", "qwen2_5_vl_3b"), ("qwen2_5_vl", "qwen2_5_vl_7b")):
        with pytest.raises(ValueError, match="presets are"):
            make_tiny(arch, tmp_path / "y", preset=preset)


def test_same_seed_gives_same_tiny_weights(tmp_path):
    a = AutoModelForImageTextToText.from_pretrained(make_tiny("qwen2_5_vl", tmp_path / "a"))
    b = AutoModelForImageTextToText.from_pretrained(make_tiny("qwen2_5_vl", tmp_path / "b"))
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "llava"])
def test_a_tiny_config_without_weights_builds_the_same_architecture(tmp_path, arch):
    shapes = make_tiny(arch, tmp_path / "shapes", weights=False)
    assert not any(shapes.glob("*.safetensors"))
    empty = VLMBackbone.from_config_dir(shapes)
    full = VLMBackbone.from_pretrained(make_tiny(arch, tmp_path / "full"))
    assert {n: p.shape for n, p in empty.named_parameters()} == {n: p.shape for n, p in full.named_parameters()}
    assert all(p.is_meta for p in empty.parameters())


def test_unsupported_architecture_is_refused_before_loading(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="unsupported VLM architecture 'gpt2'"):
        VLMBackbone.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a model directory"):
        VLMBackbone.from_pretrained(tmp_path / "nope")


def test_tiny_default_path_builds_once_into_the_cache(tmp_path, monkeypatch):
    from sagrflow.model.backbone import resolve_path

    monkeypatch.setenv("SAGRFLOW_CACHE", str(tmp_path))
    first = resolve_path("tiny:llava")
    assert first.parent == tmp_path / "tiny" and (first / "model.safetensors").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve_path("tiny:llava") == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown tiny arch"):
        resolve_path("tiny:gpt2")
