"""IRNet (METHOD.md 13.3) and load_irn_checkpoint (13.7): shapes, key layout, frozen trunk,
reference checkpoint layouts. One ResNet-50 network is built and run once for the module; every
other check runs on the toy ResNet-18 trunk."""
from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from net.irn_net import IRNet, MeanShift, alias_groups, load_irn_checkpoint
from tool.common.errors import UserError

# Radius-10 path-index buckets (METHOD.md 13.4.2): path length -> number of paths.
R10_BUCKETS = {2: 2, 3: 2, 4: 4, 5: 2, 6: 6, 7: 4, 8: 10, 9: 2, 10: 12, 11: 4, 12: 12, 13: 2,
               14: 8, 15: 8, 16: 22, 18: 16, 19: 6, 20: 20, 21: 4, 22: 6}
N_SRC = 13090  # sources of the 128x128 training grid
TOY = dict(backbone="resnet18", backbone_width=0.25, crop_size=64)


# ----------------------------------------------------- reference layout (METHOD.md 13.7.2)

def _bn(shapes: dict, prefix: str, c: int) -> None:
    shapes.update({f"{prefix}.{s}": (c,) for s in ("weight", "bias", "running_mean",
                                                    "running_var")})
    shapes[f"{prefix}.num_batches_tracked"] = ()


def resnet50_layout() -> dict[str, tuple[int, ...]]:
    """IRN's ``resnet50.*`` keys and shapes (torchvision names, no fc), from the architecture."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    _bn(shapes, "bn1", 64)
    c_in = 64
    for layer, (p, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            pre = f"layer{layer}.{b}"
            shapes[f"{pre}.conv1.weight"] = (p, c_in if b == 0 else 4 * p, 1, 1)
            _bn(shapes, f"{pre}.bn1", p)
            shapes[f"{pre}.conv2.weight"] = (p, p, 3, 3)
            _bn(shapes, f"{pre}.bn2", p)
            shapes[f"{pre}.conv3.weight"] = (4 * p, p, 1, 1)
            _bn(shapes, f"{pre}.bn3", 4 * p)
            if b == 0:
                shapes[f"{pre}.downsample.0.weight"] = (4 * p, c_in, 1, 1)
                _bn(shapes, f"{pre}.downsample.1", 4 * p)
        c_in = 4 * p
    return shapes


def edge_displacement_layout() -> dict[str, tuple[int, ...]]:
    """The 1 035 keys of IRN's ``EdgeDisplacement`` state dict with their shapes (13.7.2)."""
    trunk = resnet50_layout()
    shapes = {f"resnet50.{k}": v for k, v in trunk.items()}
    for k, v in trunk.items():  # stage1 = (conv1, bn1, relu, maxpool), stage2..5 = (layer1..4)
        head, rest = k.split(".", 1)
        if head.startswith("layer"):
            stage = f"{int(head[5:])}.0.{rest}"
        else:
            stage = f"0.{0 if head == 'conv1' else 1}.{rest}"
        i, tail = stage.split(".", 1)
        shapes[f"stage{int(i) + 1}.{tail}"] = v
        shapes[f"backbone.{i}.{tail}"] = v
    shapes["mean_shift.running_mean"] = (2,)

    heads: dict[str, tuple[int, ...]] = {}
    for i, c_in in enumerate((64, 256, 512, 1024, 2048), start=1):
        heads[f"fc_edge{i}.0.weight"] = (32, c_in, 1, 1)
        heads[f"fc_edge{i}.1.weight"] = heads[f"fc_edge{i}.1.bias"] = (32,)
    heads["fc_edge6.weight"], heads["fc_edge6.bias"] = (1, 160, 1, 1), (1,)
    for i, (c_out, c_in) in enumerate(((64, 64), (128, 256), (256, 512), (256, 1024),
                                       (256, 2048), (256, 768)), start=1):
        heads[f"fc_dp{i}.0.weight"] = (c_out, c_in, 1, 1)
        heads[f"fc_dp{i}.1.weight"] = heads[f"fc_dp{i}.1.bias"] = (c_out,)
    heads.update({"fc_dp7.0.weight": (256, 448, 1, 1), "fc_dp7.1.weight": (256,),
                  "fc_dp7.1.bias": (256,), "fc_dp7.3.weight": (2, 256, 1, 1),
                  "fc_dp7.4.running_mean": (2,)})
    for k, v in heads.items():
        name, rest = k.split(".", 1)
        alias = (f"edge_layers.{int(name[7:]) - 1}" if name.startswith("fc_edge")
                 else f"dp_layers.{int(name[5:]) - 1}")
        shapes[k] = shapes[f"{alias}.{rest}"] = v
    return shapes


def training_only_keys() -> dict[str, torch.Tensor]:
    """The 21 keys of IRN's training wrapper, with their shapes (path indices as broadcast
    views: torch.save writes only their small storage)."""
    keys = {}
    for g, (length, n) in enumerate(R10_BUCKETS.items()):
        keys[f"path_indices{g}"] = torch.arange(length).view(1, length, 1).expand(n, length,
                                                                                  N_SRC)
    keys["disp_target"] = torch.randn(1, 2, 152, 1)
    return keys


def random_state(model: IRNet, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the model's layout: one tensor per alias group, shared by all its
    names (as in a reference file); BN variances positive, counters 0."""
    gen = torch.Generator().manual_seed(seed)
    own, state = model.state_dict(), {}
    for group in alias_groups(model):
        ref = own[group[0]]
        if not ref.is_floating_point():
            value = torch.zeros_like(ref)
        else:
            value = torch.randn(ref.shape, generator=gen) * 0.05
            if group[0].endswith("running_var"):
                value = value.abs() + 1
        state.update({k: value for k in group})
    return state


# ------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def irn50():
    """The reference network (random weights, eval mode) and its edge_displacement outputs on
    a 375x500 pair: the one ResNet-50 forward of the module."""
    torch.set_num_threads(1)
    model = IRNet().eval()
    image = torch.randn(1, 3, 375, 500, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        edge, disp = model.edge_displacement(torch.cat([image, image.flip(-1)]))
    return model, edge, disp


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return IRNet(**TOY).eval()


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


# ---------------------------------------- canned network checks (verified against IRN)

def test_edge_displacement_shapes_375x500(irn50):
    _, edge, disp = irn50
    assert edge.shape == (1, 94, 125) and disp.shape == (2, 94, 125)
    assert bool(((edge > 0) & (edge < 1)).all()) and bool(disp.isfinite().all())


def test_state_dict_is_the_edge_displacement_layout(irn50):
    model, _, _ = irn50
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = edge_displacement_layout()
    assert len(expected) == 1035
    assert own == expected


def test_reference_checkpoint_loads_dropping_the_training_keys(irn50, tmp_path):
    model, _, _ = irn50
    extra = training_only_keys()
    weights = random_state(model)
    path = tmp_path / "res50_irn.pth"
    torch.save({**extra, **weights}, path)  # the wrapper's buffers first, as state_dict() does

    report = load_irn_checkpoint(model, path)
    assert sorted(report["dropped"]) == sorted(extra) and len(report["dropped"]) == 21
    assert report["aliased"] == [] and report["filled"] == []
    own = model.state_dict()
    for key in ("resnet50.layer4.2.conv3.weight", "stage1.1.running_var", "fc_edge6.bias",
                "dp_layers.6.3.weight", "mean_shift.running_mean"):
        assert torch.equal(own[key], weights[key])


# ---------------------------------------------------------------------------- the network

def test_parameter_groups(irn50):
    model, _, _ = irn50
    edge, disp = model.trainable_parameters()
    assert (len(edge), len(disp)) == (17, 22)
    assert (sum(p.numel() for p in edge), sum(p.numel() for p in disp)) == (125_409, 1_269_120)
    assert sum(p.numel() for p in model.parameters()) == 24_902_561
    trunk = {id(p) for p in model.resnet50.parameters()}
    assert not trunk & {id(p) for p in edge + disp}


def test_trunk_stays_frozen_and_in_eval_mode(toy):
    assert toy.train() is toy and toy.eval() is toy  # IRN's train() returned None (Q18)
    toy.train()
    assert toy.training and toy.fc_edge1.training and toy.dp_layers[6].training
    assert not any(m.training for m in toy.resnet18.modules())
    assert not any(m.training for m in toy.backbone.modules())
    assert not any(p.requires_grad for p in toy.resnet18.parameters())

    before = {k: v.clone() for k, v in toy.resnet18.state_dict().items()}
    edge, disp = toy(torch.randn(2, 3, 64, 64))
    (edge.sum() + disp.sum()).backward()
    assert all(p.grad is None for p in toy.resnet18.parameters())
    assert all(p.grad is not None for group in toy.trainable_parameters() for p in group)
    after = toy.resnet18.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # FixedBN: stats untouched


def test_toy_backbone_forward_64():
    net = IRNet(**TOY)
    edge, disp = net(torch.randn(3, 3, 64, 64))
    assert edge.shape == (3, 1, 16, 16) and disp.shape == (3, 2, 16, 16)
    assert [len(g) for g in net.trainable_parameters()] == [17, 22]
    assert net.stage_channels(net.trunk) == (16, 16, 32, 64, 128)


def test_heads_shrink_odd_sizes_to_the_stride4_grid(toy):
    edge, disp = toy(torch.randn(1, 3, 61, 77))
    assert edge.shape[-2:] == disp.shape[-2:] == (16, 20)  # ceil(61 / 4), ceil(77 / 4)


def test_mean_shift_applies_in_eval_mode_only():
    shift = MeanShift(2)
    shift.running_mean.copy_(torch.tensor([1.0, -2.0]))
    x = torch.randn(2, 2, 3, 4)
    assert torch.equal(shift.train()(x), x)
    assert torch.allclose(shift.eval()(x), x - torch.tensor([1.0, -2.0]).view(1, 2, 1, 1))


def test_mean_shift_is_registered_twice(toy):
    assert toy.fc_dp7[4] is toy.mean_shift and toy.dp_layers[6][4] is toy.mean_shift


def test_estimate_mean_shift(toy):
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(2, 3, 64, 64, generator=gen) for _ in range(3)]
    with torch.no_grad():  # train mode: the shift is the identity, so this is the raw field
        raw = torch.stack([toy.train()(b)[1].mean(dim=(0, 2, 3)) for b in batches])
    toy.mean_shift.running_mean.fill_(5.0)  # a previous estimate is not subtracted first
    mean = toy.estimate_mean_shift({"img": b} for b in batches)
    assert toy.training  # mode restored
    assert torch.allclose(mean, raw.mean(0), atol=1e-6)
    assert torch.equal(toy.mean_shift.running_mean, mean)
    with pytest.raises(UserError, match="shorter than one batch"):
        toy.estimate_mean_shift([])


def test_edge_displacement_semantics(toy):
    gen = torch.Generator().manual_seed(5)
    image = torch.randn(1, 3, 45, 59, generator=gen)
    pair = torch.cat([image, image.flip(-1)])
    with torch.no_grad():
        edge, disp = toy.edge_displacement(pair)
        logits, field = toy(F.pad(pair, [0, 64 - 59, 0, 64 - 45]))
    h, w = 12, 15
    logits, field = logits[..., :h, :w], field[..., :h, :w]
    assert torch.allclose(edge, torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2))
    assert torch.equal(disp, field[0])
    with pytest.raises(ValueError, match=r"\(2, 3, H, W\)"):
        toy.edge_displacement(image)


def test_edge_displacement_pads_large_images_instead_of_cropping(toy):
    pair = torch.randn(2, 3, 70, 90)  # above the 64 crop: padded to 80 x 96 (Q7 fix)
    with torch.no_grad():
        edge, disp = toy.edge_displacement(pair)
        logits, _ = toy(F.pad(pair, [0, 6, 0, 10]))
    assert edge.shape == (1, 18, 23) and disp.shape == (2, 18, 23)
    logits = logits[..., :18, :23]
    assert torch.allclose(edge, torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2))


def test_edge_displacement_unpadded(toy):
    toy.pad_to_crop = False  # June-2019 checkpoints were used without padding (Q31)
    pair = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        edge, _ = toy.edge_displacement(pair)
        logits, _ = toy(pair)
    assert torch.allclose(edge, torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2))


def test_cuda_if_available():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    net = IRNet(**TOY).cuda().eval()
    with torch.no_grad():
        edge, disp = net.edge_displacement(torch.randn(2, 3, 50, 60, device="cuda"))
    assert edge.device.type == disp.device.type == "cuda"
    net.estimate_mean_shift([torch.randn(2, 3, 64, 64)])  # CPU batches move to the model


# ------------------------------------------------------------------------ backbone weights

def test_missing_backbone_weights_file_is_one_line(tmp_path):
    path = tmp_path / "resnet50-19c8e357.pth"
    with pytest.raises(UserError) as e:
        IRNet(backbone_weights=path)
    text = _one_line(e)
    assert str(path) in text and "resnet50-19c8e357.pth" in text and "nothing is downloaded" in text


def test_backbone_weights_load_from_a_local_file(tmp_path):
    trunk = IRNet(**TOY).trunk.state_dict()
    trunk = {k: v + 1 if v.is_floating_point() else v for k, v in trunk.items()}
    path = tmp_path / "toy_imagenet.pth"
    torch.save({**trunk, "fc.weight": torch.zeros(1000, 128)}, path)
    net = IRNet(backbone_weights=path, **TOY)
    assert net.backbone_source == str(path)
    assert torch.equal(net.stage3[0][0].conv1.weight, trunk["layer2.0.conv1.weight"])

    del trunk["layer3.1.bn2.running_var"]
    torch.save(trunk, path)
    with pytest.raises(UserError, match=r"lacks 1 keys.*layer3\.1\.bn2\.running_var"):
        IRNet(backbone_weights=path, **TOY)


def test_other_backbones_are_refused():
    with pytest.raises(UserError, match="IRN backbone must be one of"):
        IRNet(backbone="effb3")
    with pytest.raises(UserError, match="stride 4"):
        IRNet(stride=8, **TOY)


# ------------------------------------------------------------------------ checkpoint loader

def test_june_2019_layout_loads(toy, tmp_path):
    """Old files: index Parameters, a BatchNorm MeanShift, no ``mean_shift.*`` key (13.7.3)."""
    state = random_state(toy, seed=1)
    del state["mean_shift.running_mean"]
    old = {"path_indices0": torch.zeros(2, 2, 5, dtype=torch.long),
           "ind_from": torch.zeros(1, 5, dtype=torch.long),
           "ind_to": torch.zeros(152, 5, dtype=torch.long)}
    for prefix in ("fc_dp7.4", "dp_layers.6.4"):
        old[f"{prefix}.running_var"] = torch.ones(2)
        old[f"{prefix}.num_batches_tracked"] = torch.tensor(990)
    path = tmp_path / "old.pth"
    torch.save({**old, **state}, path)
    report = load_irn_checkpoint(toy, path)
    assert sorted(report["dropped"]) == sorted(old)
    assert report["aliased"] == ["mean_shift.running_mean"] and report["filled"] == []
    assert torch.equal(toy.mean_shift.running_mean, state["fc_dp7.4.running_mean"])


def test_wrapped_and_prefixed_files_load(toy, tmp_path):
    state = random_state(toy, seed=2)
    path = tmp_path / "dp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    assert load_irn_checkpoint(toy, path) == {"dropped": [], "aliased": [], "filled": []}
    assert torch.equal(toy.fc_edge3[0].weight, state["fc_edge3.0.weight"])


def test_one_name_per_tensor_is_enough(toy, tmp_path):
    state = random_state(toy, seed=3)
    kept = {g[0] for g in alias_groups(toy)}
    path = tmp_path / "minimal.pth"
    torch.save({k: v for k, v in state.items() if k in kept}, path)
    report = load_irn_checkpoint(toy, path)
    assert sorted(report["aliased"]) == sorted(set(state) - kept)
    assert torch.equal(toy.backbone[4][0][1].conv2.weight, state["resnet18.layer4.1.conv2.weight"])


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.update({"fc_edge7.weight": torch.zeros(1)}), r"1 unexpected keys \(fc_edge7"),
    (lambda s: s.update({"fc_edge6.bias": torch.zeros(2)}), r"shape mismatch \(fc_edge6\.bias"),
    (lambda s: [s.pop(k) for k in ("fc_dp2.1.bias", "dp_layers.1.1.bias")],
     r"2 missing keys \(fc_dp2\.1\.bias, dp_layers\.1\.1\.bias\)"),
    (lambda s: s.update({"edge_layers.0.0.weight": s["fc_edge1.0.weight"] + 1}),
     "edge_layers.0.0.weight differs from fc_edge1.0.weight"),
])
def test_bad_files_are_one_line_errors(toy, tmp_path, damage, message):
    state = random_state(toy, seed=4)
    damage(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=message) as e:
        load_irn_checkpoint(toy, path)
    assert str(path) in _one_line(e)


def test_heads_only_file_needs_the_imagenet_backbone(toy, tmp_path):
    heads = {k: v for k, v in random_state(toy, seed=5).items()
             if not k.startswith(("resnet18.", "stage", "backbone."))}
    path = tmp_path / "heads.pth"
    torch.save(heads, path)
    with pytest.raises(UserError, match="holds no backbone weights") as e:
        load_irn_checkpoint(toy, path)
    assert str(path) in _one_line(e)

    imagenet = tmp_path / "toy_imagenet.pth"
    torch.save(toy.trunk.state_dict(), imagenet)
    net = IRNet(backbone_weights=imagenet, **TOY)
    trunk = {k: v.clone() for k, v in net.trunk.state_dict().items()}
    net.trunk.conv1.weight.data.zero_()  # an earlier load changed it: the file's trunk returns
    report = load_irn_checkpoint(net, path)
    assert report["dropped"] == [] and report["aliased"] == []
    assert len(report["filled"]) == 3 * len(trunk)
    assert all(torch.equal(v, net.trunk.state_dict()[k]) for k, v in trunk.items())
    assert torch.equal(net.fc_dp5[1].bias, heads["fc_dp5.1.bias"])


def test_unsafe_pickles_are_refused(toy, tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": random_state(toy), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UserError, match="allow_pickle") as e:
        load_irn_checkpoint(toy, path)
    _one_line(e)
