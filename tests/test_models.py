"""Model shapes, layer groups, and the article's CNN with its padding fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.errors import ConfigError
from mnist_lab.models import CNN, MLP, ConvNet, LeNet5


@pytest.mark.parametrize("model_class", [CNN, MLP, LeNet5, ConvNet])
@pytest.mark.parametrize("num_classes", [10, 26])
def test_forward_shape_and_groups(model_class, num_classes):
    model = model_class(num_classes=num_classes)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, num_classes)
    assert model.group_names[-1] == "head"
    # Every parameter belongs to exactly one named group.
    grouped = [id(p) for name in model.group_names for p in getattr(model, name).parameters()]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_cnn_is_the_articles_network():
    model = CNN()
    conv1, conv2 = model.conv1[0], model.conv2[0]
    assert (conv1.in_channels, conv1.out_channels, conv1.kernel_size, conv1.padding) == (1, 32, (5, 5), (2, 2))
    assert (conv2.in_channels, conv2.out_channels, conv2.kernel_size, conv2.padding) == (32, 64, (3, 3), (1, 1))
    assert model.fc1[1].in_features == 64 * 7 * 7 and model.fc1[1].out_features == 128
    assert model.head.in_features == 128 and model.head.out_features == 10
    assert sum(p.numel() for p in model.parameters()) == 422_154


def test_pool_before_relu_matches_the_articles_order():
    """The article applies ReLU then max-pool; we pool first. Outputs and gradients agree."""
    torch.manual_seed(0)
    model = CNN()
    x = torch.randn(8, 1, 28, 28)

    def article_forward(m: CNN, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(m.conv1[0](x)), 2)
        x = F.max_pool2d(F.relu(m.conv2[0](x)), 2)
        x = F.relu(m.fc1[1](x.view(-1, 64 * 7 * 7)))
        return m.head(x)

    ours = model(x)
    ours.sum().backward()
    ours_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    theirs = article_forward(model, x)
    theirs.sum().backward()
    assert torch.equal(ours, theirs)
    for a, p in zip(ours_grads, model.parameters()):
        assert torch.equal(a, p.grad)


def test_cnn_options():
    model = CNN(conv1_channels=8, conv2_channels=16, hidden=32, dropout=0.5, batch_norm=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.conv1)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_norm_after_pool_differs_only_in_the_statistics_training_sees():
    before = CNN(conv1_channels=8, conv2_channels=16, hidden=32, batch_norm=True)
    after = CNN(conv1_channels=8, conv2_channels=16, hidden=32, batch_norm=True, norm_after_pool=True)
    assert [type(m) for m in after.conv1] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU]
    # The default order keeps its indices, so checkpoints trained before the option still load.
    assert [type(m) for m in before.conv1] == [nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU]
    torch.manual_seed(0)
    for m in before.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2.0)  # positive scales: the per-channel affine map is increasing
            m.bias.data.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    moved = {
        k.replace(".1.", ".2.") if k.startswith(("conv1.1.", "conv2.1.")) else k: v
        for k, v in before.state_dict().items()
    }
    after.load_state_dict(moved)
    x = torch.randn(4, 1, 28, 28)
    # Evaluated, batch norm is that increasing per-channel map, which commutes with max-pool: the same outputs.
    before.eval(), after.eval()
    torch.testing.assert_close(after(x), before(x))
    # Training, it normalises with the batch's statistics, over the pooled values or over all of them.
    before.train(), after.train()
    assert not torch.allclose(after(x), before(x), atol=1e-3)


@pytest.mark.parametrize("blocks", [[[8]], [[8, 8], [16, 16]], [[4], [4, 8], [8], [8]]])
def test_convnet_blocks_are_layer_groups(blocks):
    model = ConvNet(blocks=blocks, hidden=16)
    assert model.group_names == (*(f"conv{i}" for i in range(1, len(blocks) + 1)), "fc1", "head")
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    for i, widths in enumerate(blocks, 1):
        convs = [m for m in getattr(model, f"conv{i}") if isinstance(m, nn.Conv2d)]
        assert [c.out_channels for c in convs] == widths and all(c.kernel_size == (3, 3) for c in convs)
    side = 28 >> len(blocks)  # one 2x2 pool per block
    assert model.fc1[1].in_features == blocks[-1][-1] * side * side


def test_convnet_block_dropout_keeps_the_checkpoint_keys():
    """Dropout closes each block, so weights trained without it load into a net with it."""
    plain, dropped = ConvNet(hidden=16), ConvNet(hidden=16, block_dropout=0.5)
    dropped.load_state_dict(plain.state_dict())  # strict: same keys, same shapes
    assert [type(m) for m in dropped.conv1][-1] is nn.Dropout and dropped.conv2[-1].p == 0.5
    x = torch.randn(4, 1, 28, 28)
    plain.eval(), dropped.eval()
    assert torch.equal(plain(x), dropped(x))  # dropout is the identity in eval
    dropped.train()
    assert not torch.equal(dropped(x), dropped(x))


def test_convnet_default_keeps_the_cnn_group_names():
    """Two blocks: the CNN's strategies (frozen: [conv1, conv2]) apply unchanged."""
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config(["model=convnet", "finetune=freeze_conv"])
    net = instantiate(cfg.model)
    assert net.group_names == CNN.group_names
    instantiate(cfg.finetune).bind(net)


@pytest.mark.parametrize("blocks", [[], [[]], [[8]] * 5, [[8, 0]]])
def test_convnet_refuses_impossible_blocks(blocks):
    with pytest.raises(ConfigError, match="model.blocks"):
        ConvNet(blocks=blocks)
