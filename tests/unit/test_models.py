"""Weight compatibility and numerical parity with torchvision's ShuffleNetV2."""

import pytest
import torch
import torchvision

from shufflenet_trainer.errors import ConfigError
from shufflenet_trainer.model import shufflenetv2 as models


@pytest.mark.parametrize("arch", models.ARCHS)
def test_state_dict_keys_and_shapes_match_torchvision(arch) -> None:
    ours = models.build_model(arch).state_dict()
    theirs = getattr(torchvision.models, arch)(weights=None).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def _outputs_and_grads(model, x, grad_out):
    x = x.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.backward(grad_out)
    return out.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0"])
@pytest.mark.parametrize("shuffle", models.SHUFFLE_MODES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_torchvision_checkpoint_gives_same_outputs_and_gradients(
    arch, shuffle, channels_last, train
) -> None:
    theirs = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    # Non-trivial BN statistics, so eval mode is checked against real running stats.
    theirs.train()
    with torch.no_grad():
        theirs(torch.randn(4, 3, 64, 64))
    ours = models.build_model(arch, num_classes=10, shuffle=shuffle)
    ours.load_state_dict(theirs.state_dict())
    ours.train(train)
    theirs.train(train)

    x = torch.randn(2, 3, 64, 64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        ours = ours.to(memory_format=torch.channels_last)
        theirs = theirs.to(memory_format=torch.channels_last)
    grad_out = torch.randn(2, 10)
    out_a, gx_a, gp_a = _outputs_and_grads(ours, x, grad_out)
    out_b, gx_b, gp_b = _outputs_and_grads(theirs, x, grad_out)
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_a, gx_b, rtol=1e-5, atol=1e-6)
    for name in gp_b:
        torch.testing.assert_close(gp_a[name], gp_b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_fused_model_keeps_channels_last_between_blocks() -> None:
    # torchvision's .contiguous() turns channels_last activations back into NCHW after every
    # block; the fused op keeps the format, so the convolutions never convert layouts.
    model = models.build_model("shufflenet_v2_x0_5").to(memory_format=torch.channels_last)
    seen = []
    model.stage3.register_forward_hook(lambda m, i, o: seen.append(o))
    model(torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_both_shuffle_modes_give_the_same_results() -> None:
    fused = models.build_model("shufflenet_v2_x0_5", num_classes=5).eval()
    reference = models.build_model("shufflenet_v2_x0_5", num_classes=5, shuffle="reference")
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(reference.eval()(x), fused(x))


def test_compiled_model_matches_eager() -> None:
    model = models.build_model("shufflenet_v2_x0_5", num_classes=5).eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(compiled(x), model(x))


def test_unknown_arch_and_mode_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="--arch"):
        models.build_model("shufflenet_v3")
    with pytest.raises(ConfigError, match="--shuffle"):
        models.build_model("shufflenet_v2_x0_5", shuffle="fast")
