"""MST-KDNet network (transformer stage on the planned nnU-Net U-Net), on tiny plans."""
from __future__ import annotations

import math

import pytest
import torch

from nnunet_missingmod.training.features import DECODER, ENCODER, LOGITS, planned_network
from nnunet_missingmod.training.methods.mstkd.network import (
    ATTENTION, CONTENT, FUSED, GSME_FEATURES, MST_FEATURES, SMALL, TransformerConfig, build_mstkd_network,
    select_transformer_stage, token_patch_size)
from plans_helpers import tiny_2d, tiny_3d

torch.set_num_threads(1)

PLANS = {"3d": lambda: tiny_3d(), "3d_residual": lambda: tiny_3d(residual=True), "2d": tiny_2d}
N_IN, N_OUT = 4, 3


def _build(name, deep_supervision=True, config=SMALL):
    plans_manager, configuration_manager = PLANS[name]()
    torch.manual_seed(0)
    network = build_mstkd_network(plans_manager, configuration_manager, N_IN, N_OUT, deep_supervision, config)
    return network, plans_manager, configuration_manager


def _shapes(output):
    return [tuple(o.shape) for o in output] if isinstance(output, (list, tuple)) else tuple(output.shape)


# ---------------------------------------------------------------------------------------------- placement rules
def test_transformer_stage_selection():
    iso = [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert select_transformer_stage(iso) == 3  # cumulative 8 on every axis
    assert select_transformer_stage(iso[:4]) == 3  # 1/8 is the bottleneck
    assert select_transformer_stage(iso[:3]) == 2  # plans stop at 1/4: the bottleneck
    # anisotropic: axis 0 is downsampled 8x only at the bottleneck, so no stage is (8, 8, 8); the deepest stage not
    # coarser than 8 on any axis is (2, 8, 8)
    aniso = [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert select_transformer_stage(aniso) == 3
    # an axis that never reaches 8 must be fully downsampled: (2, 8, 8) with the bottleneck at (2, 32, 32)
    assert select_transformer_stage([[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]) == 3
    assert select_transformer_stage([[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]], stage_stride=4) == 2


def test_token_patch_rule():
    assert token_patch_size((20, 24, 16)) == (4, 4, 4)  # official 160x192x128 at 1/8
    assert token_patch_size((3, 4, 2)) == (1, 4, 2)
    assert token_patch_size((6, 10), max_token_patch=4) == (2, 2)
    assert token_patch_size((16, 12), max_token_patch=8) == (8, 2)


def test_config_validation():
    with pytest.raises(ValueError):
        TransformerConfig(embed_dim=100, num_heads=12)
    with pytest.raises(ValueError):
        TransformerConfig(extract_layers=(3, 6, 13, 12))
    with pytest.raises(ValueError):
        TransformerConfig(extract_layers=(3, 6, 9))


# --------------------------------------------------------------------------------------------- network outputs
@pytest.mark.parametrize("name", list(PLANS))
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_logits_match_planned_network_shapes(name, deep_supervision):
    network, plans_manager, configuration_manager = _build(name, deep_supervision)
    planned = planned_network(plans_manager, configuration_manager, N_IN, N_OUT, deep_supervision)
    x = torch.randn(2, N_IN, *configuration_manager.patch_size)
    with torch.no_grad():
        ours, reference = network(x), planned(x)
    assert isinstance(ours, list) == deep_supervision
    assert _shapes(ours) == _shapes(reference)


@pytest.mark.parametrize("name", list(PLANS))
def test_feature_dict(name):
    network, _, configuration_manager = _build(name)
    network.eval()  # deterministic, so the dict's logits can be compared with network(x)
    x = torch.randn(2, N_IN, *configuration_manager.patch_size)
    with torch.no_grad():
        plain = network(x)
        features = network(x, return_features=True)
    assert set(features) == {LOGITS, ENCODER, DECODER, ATTENTION, MST_FEATURES, GSME_FEATURES, FUSED, CONTENT}
    for ours, reference in zip(features[LOGITS], plain):
        torch.testing.assert_close(ours, reference)
    assert len(features[ENCODER]) == network.num_stages
    assert len(features[DECODER]) == network.num_stages - 1

    stage_shape = (2, *network.fused_shape)
    assert [tuple(g.shape) for g in features[GSME_FEATURES]] == [stage_shape] * 3  # Gram matrices pair them
    assert features[FUSED] is features[GSME_FEATURES][1]
    assert features[CONTENT] is features[GSME_FEATURES][2]
    assert features[ENCODER][network.transformer_stage].shape == stage_shape
    assert len({id(g) for g in features[GSME_FEATURES]}) == 3

    # multi-scale features: z3 @ s, z6 @ 2s, z9 @ s, z12 @ s / min(p, 2), channels = decoder_channels
    s = network.fused_shape[1:]
    mid = tuple(size // min(p, 2) for size, p in zip(s, network.transformer.token_patch))
    expected = [(2, c, *spatial) for c, spatial in zip(SMALL.decoder_channels, (s, tuple(2 * v for v in s), s, mid))]
    assert [tuple(f.shape) for f in features[MST_FEATURES]] == expected

    attention = features[ATTENTION]
    tokens = math.prod(network.transformer.token_grid)
    assert len(attention) == len(SMALL.extract_layers)
    for probabilities in attention:
        assert probabilities.shape == (2, SMALL.num_heads, tokens, tokens)
        assert probabilities.dtype == torch.float32
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(2, SMALL.num_heads, tokens))
        assert (probabilities >= 0).all()


def test_content_is_decoder_upsampled_map_below_the_bottleneck():
    """2d plans: the transformer stage (1/8) is above the bottleneck (1/16), so content comes from the decoder."""
    network, _, configuration_manager = _build("2d")
    assert not network.is_bottleneck and not hasattr(network, "content_block")
    network.eval()
    x = torch.randn(1, N_IN, *configuration_manager.patch_size)
    with torch.no_grad():
        features = network(x, return_features=True)
    decoder_stage = network.num_stages - 2 - network.transformer_stage
    deeper = features[DECODER][decoder_stage - 1] if decoder_stage else features[ENCODER][-1]
    torch.testing.assert_close(features[CONTENT], network.decoder.transpconvs[decoder_stage](deeper))


def test_attention_maps_only_when_asked():
    network, _, configuration_manager = _build("3d")
    stage_map = torch.randn(1, *network.fused_shape)
    with torch.no_grad():
        _, _, attention = network.transformer(stage_map, need_attention=False)
        _, _, asked = network.transformer(stage_map, need_attention=True)
    assert attention == [] and len(asked) == len(SMALL.extract_layers)


def test_deep_supervision_toggle():
    network, _, configuration_manager = _build("3d", deep_supervision=True)
    x = torch.randn(1, N_IN, *configuration_manager.patch_size)
    with torch.no_grad():
        assert isinstance(network(x), list)
        network.decoder.deep_supervision = False
        output = network(x)
        logits = network(x, return_features=True)[LOGITS]
    assert torch.is_tensor(output) and output.shape == (1, N_OUT, *configuration_manager.patch_size)
    assert torch.is_tensor(logits)


def test_positional_embedding_interpolation():
    network, _, _ = _build("3d")
    embedding = network.transformer.embedding
    grid = embedding.token_grid
    assert embedding.positional_embedding(grid) is embedding.position
    with torch.no_grad():
        embedding.position.fill_(0.5)
    resized = embedding.positional_embedding((4, 2, 3))
    assert resized.shape == (1, 24, SMALL.embed_dim)
    torch.testing.assert_close(resized, torch.full_like(resized, 0.5))  # a constant table stays constant


@pytest.mark.parametrize("size", [(32, 32, 32), (24, 40, 16)])
def test_other_input_sizes(size):
    """32^3: another token grid (interpolated positional embedding); 24x40x16: the stage map (3x5x2) is not
    divisible by the token patch (1, 4, 2) and is padded."""
    network, _, _ = _build("3d", deep_supervision=False)
    with torch.no_grad():
        network.transformer.embedding.position.normal_()
        features = network(torch.randn(1, N_IN, *size), return_features=True)
    assert features[LOGITS].shape == (1, N_OUT, *size)
    stage = tuple(v // 8 for v in size)
    assert [tuple(g.shape[2:]) for g in features[GSME_FEATURES]] == [stage] * 3


@pytest.mark.parametrize("name", ["3d", "2d"])
def test_gradients_reach_every_parameter(name):
    """Every parameter (transformer included) gets a gradient from the logits alone: DDP needs no
    find_unused_parameters."""
    network, _, configuration_manager = _build(name)
    network.train()
    output = network(torch.randn(2, N_IN, *configuration_manager.patch_size))
    sum(o.square().mean() for o in output).backward()
    missing = [n for n, p in network.named_parameters() if p.grad is None]
    assert not missing
    transformer = network.transformer
    for parameter in (transformer.embedding.projection.weight, transformer.embedding.position,
                      transformer.blocks[0].attention.qkv.weight, transformer.blocks[-1].mlp[0].weight):
        assert parameter.grad.abs().sum() > 0


def test_compiles_without_graph_breaks():
    """Dynamo traces both call forms in one graph (backend 'eager' checks tracing without code generation)."""
    network, _, configuration_manager = _build("3d")
    network.eval()
    compiled = torch.compile(network, backend="eager", fullgraph=True)
    x = torch.randn(1, N_IN, *configuration_manager.patch_size)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x)[0], network(x)[0])
        features = compiled(x, return_features=True)
    assert len(features[ATTENTION]) == len(SMALL.extract_layers)


def test_default_official_config_builds():
    """The official ViT-B size on the tiny plans: built once, no forward; reports its parameter count."""
    network, _, _ = _build("3d", config=TransformerConfig())
    total = sum(p.numel() for p in network.parameters())
    blocks = sum(p.numel() for p in network.transformer.blocks.parameters())
    # 12 x (4 E^2 + 2 E mlp + biases/norms) with E = 768, mlp 2048 (official blocks)
    assert blocks == 12 * (4 * 768 * 768 + 4 * 768 + 2 * 768 * 2048 + 2048 + 768 + 4 * 768)
    assert len(network.transformer.blocks) == 12
    assert network.transformer.embedding.position.shape == (1, math.prod(network.transformer.token_grid), 768)
    print(f"MST-KDNet default config on tiny_3d plans: {total / 1e6:.1f} M parameters ({blocks / 1e6:.1f} M in blocks)")


def test_feature_api_works_through_torch_compile():
    """``network(x, return_features=True)`` goes through ``__call__``, so torch.compile compiles the feature path
    too; nnU-Net disables compile on CPU, so it is exercised here. Backend ``aot_eager``: Dynamo's graph through
    AOTAutograd's functionalisation and decompositions, the stages inductor runs before its code generation (CPU
    C++ code generation, which GPUs do not use, made this test 20 s instead of 4 s here)."""
    torch.manual_seed(0)
    plans_manager, configuration_manager = tiny_3d()
    network = build_mstkd_network(plans_manager, configuration_manager, 4, 3, True, transformer=SMALL).eval()
    x = torch.randn(1, 4, *configuration_manager.patch_size)
    compiled = torch.compile(network, backend="aot_eager")
    with torch.no_grad():
        ours, eager = compiled(x, return_features=True), network(x, return_features=True)
    assert isinstance(compiled, torch._dynamo.OptimizedModule)
    for key in (LOGITS, ATTENTION, MST_FEATURES, GSME_FEATURES):
        assert len(ours[key]) == len(eager[key])
        for a, b in zip(ours[key], eager[key]):
            assert torch.allclose(a, b, atol=1e-4), key


def test_attention_maps_are_float32_under_autocast():
    """Under autocast (CPU bfloat16 here, float16 on CUDA) the attention logits and softmax still run in float32:
    EVD compares products of these maps whose differences (~1e-8 before its weight 1e8) are below half precision.
    The maps also agree with the float32 forward's to well within bfloat16's resolution of the logits."""
    network, _, configuration_manager = _build("3d")
    network.eval()  # no dropout: both forwards see the same network
    x = torch.randn(2, N_IN, *configuration_manager.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = network(x, return_features=True)[ATTENTION]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = network(x, return_features=True)[ATTENTION]
    assert len(maps) == len(SMALL.extract_layers)
    assert [m.dtype for m in maps] == [torch.float32] * len(maps)
    for m, r in zip(maps, reference):
        # rows still sum to 1 in float32 (a bfloat16 softmax is off by up to ~N * 2^-9)
        assert torch.allclose(m.sum(-1), torch.ones(()), atol=1e-5)
        assert (m - r).abs().max() < 0.05  # q, k come from bfloat16 linears: the maps move, but stay close
