"""``features.decode_with_features`` re-implements the forward of dynamic-network-architectures' ``UNetDecoder``:
it must return exactly what ``decoder(skips)`` returns, for both decoders the plans can describe."""
import pytest
import torch

from nnunet_missingmod.training.features import decode_with_features, planned_network
from plans_helpers import tiny_2d, tiny_3d


@pytest.mark.parametrize("managers, dims", [(lambda: tiny_3d(residual=False), 3), (lambda: tiny_3d(residual=True), 3),
                                            (tiny_2d, 2)], ids=["PlainConvUNet-3d", "ResidualEncoderUNet-3d",
                                                                "PlainConvUNet-2d"])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_decode_with_features_returns_the_decoders_own_logits(managers, dims, deep_supervision):
    plans_manager, configuration_manager = managers()
    torch.manual_seed(0)
    network = planned_network(plans_manager, configuration_manager, 4, 3, deep_supervision).eval()
    x = torch.randn(2, 4, *configuration_manager.patch_size)
    with torch.no_grad():
        skips = network.encoder(x)
        expected = network.decoder(skips)
        logits, features, upsampled = decode_with_features(network.decoder, skips, return_upsampled=True)
    expected_list = expected if deep_supervision else [expected]
    got_list = logits if deep_supervision else [logits]
    assert isinstance(logits, list) == deep_supervision
    assert len(got_list) == len(expected_list)
    for got, want in zip(got_list, expected_list):
        assert torch.equal(got, want)
    assert len(features) == len(upsampled) == len(network.decoder.stages)
    assert features[-1].shape[2:] == x.shape[2:]  # the last decoder stage is at full resolution
