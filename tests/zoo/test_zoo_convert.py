"""Converters: synthetic checkpoints built in each upstream layout load strictly and give the reference features."""

import argparse
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

import visionssl as vs
from visionssl.zoo import ZooError, convert_checkpoint, list_formats, load_file, load_strict, read_checkpoint


@vs.register_backbone("zoo_test_resnet", override=True)
def zoo_test_resnet(**kwargs):
    """A ResNet with ResNet-18's key names (BasicBlock, conv1/bn1/layer1..4/downsample) but 8-64 channel stages: fast."""
    return timm.models.resnet.ResNet(
        timm.models.resnet.BasicBlock, [1, 1, 1, 1], channels=(8, 16, 32, 64), stem_width=8, num_classes=0, **kwargs
    )


def randomize_bn(net: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def reference_net() -> torch.nn.Module:
    """The model whose weights go into the synthetic upstream checkpoint (random weights and BN statistics)."""
    return randomize_bn(zoo_test_resnet())


def reference_resnet18() -> torch.nn.Module:
    """torchvision's ResNet-18, the architecture the upstream repositories train."""
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    return randomize_bn(net)


def backbone_state(net: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def mlp_keys(prefix: str, dims=(512, 64, 32), bn: bool = True) -> dict:
    """The keys of a projector/predictor MLP head (Linear[, BN], ReLU, Linear) under ``prefix``."""
    out = {f"{prefix}0.weight": torch.randn(dims[1], dims[0]), f"{prefix}0.bias": torch.randn(dims[1])}
    if bn:
        out.update(
            {
                f"{prefix}1.weight": torch.ones(dims[1]),
                f"{prefix}1.bias": torch.zeros(dims[1]),
                f"{prefix}1.running_mean": torch.zeros(dims[1]),
                f"{prefix}1.running_var": torch.ones(dims[1]),
                f"{prefix}1.num_batches_tracked": torch.tensor(7),
            }
        )
    out.update({f"{prefix}3.weight": torch.randn(dims[2], dims[1]), f"{prefix}3.bias": torch.randn(dims[2])})
    return out


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def optimizer_state() -> dict:
    return {
        "state": {0: {"momentum_buffer": torch.randn(3)}},
        "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0]}],
    }


# One builder per upstream layout, following the authors' save code (see the converter docstrings).
def moco_v1(sd):  # main_moco.py save_checkpoint; v1's head is one Linear called fc
    state = {
        **prefixed(sd, "module.encoder_q."),
        "module.encoder_q.fc.weight": torch.randn(128, 512),
        "module.encoder_q.fc.bias": torch.randn(128),
        **prefixed(sd, "module.encoder_k."),
        "module.queue": torch.randn(128, 64),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    return {"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": optimizer_state()}


def moco_v2(sd):  # v2: fc becomes an MLP (fc.0, fc.2); main_moco.py saves epoch, arch, state_dict, optimizer
    state = {
        **prefixed(sd, "module.encoder_q."),
        **mlp_keys("module.encoder_q.fc.", bn=False),
        **prefixed(sd, "module.encoder_k."),
        "module.queue": torch.randn(128, 64),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    return {"epoch": 800, "arch": "resnet18", "state_dict": state, "optimizer": optimizer_state()}


def mocov3(sd):
    state = {
        **prefixed(sd, "module.base_encoder."),
        **mlp_keys("module.base_encoder.fc."),
        **prefixed(sd, "module.momentum_encoder."),
        **mlp_keys("module.momentum_encoder.fc."),
        **mlp_keys("module.predictor.", dims=(32, 64, 32)),
    }
    scaler = {
        "scale": 65536.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 17,
    }  # torch.cuda.amp.GradScaler.state_dict()
    lars = {
        "state": {0: {"mu": torch.randn(3)}},
        "param_groups": [{"lr": 4.8, "weight_decay": 1e-6, "momentum": 0.9, "trust_coefficient": 0.001, "params": [0]}],
    }
    return {"epoch": 1000, "arch": "resnet18", "state_dict": state, "optimizer": lars, "scaler": scaler}


def simsiam(sd):  # the projector lives in encoder.fc; main_simsiam.py saves epoch, arch, state_dict, optimizer
    state = {
        **prefixed(sd, "module.encoder."),
        **mlp_keys("module.encoder.fc."),
        **mlp_keys("module.predictor.", dims=(32, 64, 32)),
    }
    return {"epoch": 100, "arch": "resnet18", "state_dict": state, "optimizer": optimizer_state()}


def swav_model(sd, prototypes: dict) -> dict:  # the DDP state dict of swav's ResNet: trunk, projection head, prototypes
    return {**prefixed(sd, "module."), **prefixed(mlp_keys("projection_head."), "module."), **prototypes}


def swav_release(sd):  # swav_800ep_pretrain.pth.tar: the flat state dict; SwAV has one prototypes Linear
    return swav_model(sd, {"module.prototypes.weight": torch.randn(30, 32)})


def deepclusterv2_release(sd):  # deepclusterv2_800ep_pretrain.pth.tar: MultiPrototypes, one Linear per clustering
    return swav_model(sd, {f"module.prototypes.prototypes{i}.weight": torch.randn(30, 32) for i in range(3)})


def swav_training(sd):  # main_swav.py's checkpoint.pth.tar: epoch, state_dict, optimizer (LARC over SGD), amp
    return {
        "epoch": 800,
        "state_dict": swav_release(sd),
        "optimizer": optimizer_state(),
        "amp": OrderedDict(loss_scaler0={"loss_scale": 65536.0, "unskipped": 0}),
    }


def deepclusterv2_training(sd):  # main_deepclusterv2.py's checkpoint.pth.tar: no amp entry
    return {"epoch": 800, "state_dict": deepclusterv2_release(sd), "optimizer": optimizer_state()}


def vissl(sd):
    trunk = prefixed(sd, "_feature_blocks.")
    heads = {"0.clf.0.weight": torch.randn(4, 512), "0.clf.0.bias": torch.randn(4)}
    return {
        "phase_idx": 125,
        "iteration": 1000,
        "loss": {},
        "iteration_num": 1000,
        "train_phase_idx": 104,
        "classy_state_dict": {
            "train": True,
            "base_model": {"model": {"trunk": trunk, "heads": heads}, "meta": {}},
            "optimizer": optimizer_state(),
            "phase_idx": 125,
        },
    }


def vissl_model_state_dict(sd):  # the converted VISSL files
    return {"model_state_dict": prefixed(sd, "_feature_blocks.")}


def openmmlab(sd):  # mmselfsup 0.x (mmcv save_checkpoint, publish_model.py drops the optimizer): meta + state_dict
    state = {
        **prefixed(sd, "backbone."),
        **mlp_keys("neck.mlp."),
        **mlp_keys("head.predictor.mlp.", dims=(32, 64, 32)),
        **prefixed(sd, "target_net.0."),
        **mlp_keys("target_net.1.mlp."),
    }
    meta = {
        "env_info": "sys.platform: linux",
        "seed": 0,
        "exp_name": "byol_resnet50.py",
        "config": "model = dict(type='BYOL')",
        "mmcv_version": "1.4.2",
        "time": "Wed Dec 15 10:00:00 2021",
        "epoch": 200,
        "iter": 250200,
        "hook_msgs": {"last_ckpt": "work_dirs/byol/epoch_200.pth"},
    }
    return {"meta": meta, "state_dict": state}


def openmmlab_extracted(sd):  # mmselfsup's extract_backbone_weights.py: the backbone keys, prefix removed
    return {"state_dict": dict(sd), "author": "MMSelfSup"}


def torchvision_flat(sd):  # VICReg's backbone-only file: the bare state dict
    return dict(sd)


def torchvision_with_classifier(sd):  # a supervised torchvision file: fc is dropped
    return {**sd, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}


def visionssl_run(sd):  # our own training checkpoint
    return {
        "format": "visionssl",
        "version": 1,
        "config": {"backbone": {"name": "resnet18", "kwargs": {}}},
        "method": {**prefixed(sd, "backbone."), **mlp_keys("projector.")},
        "epoch": 3,
        "step": 30,
    }


LAYOUTS = [
    ("moco", moco_v1),
    ("moco", moco_v2),
    ("mocov3", mocov3),
    ("simsiam", simsiam),
    ("swav", swav_release),
    ("swav", deepclusterv2_release),
    ("swav", swav_training),
    ("swav", deepclusterv2_training),
    ("vissl", vissl),
    ("vissl", vissl_model_state_dict),
    ("openmmlab", openmmlab),
    ("openmmlab", openmmlab_extracted),
    ("torchvision", torchvision_flat),
    ("torchvision", torchvision_with_classifier),
    ("visionssl", visionssl_run),
]


@pytest.mark.parametrize("fmt, build", LAYOUTS, ids=[b.__name__ for _, b in LAYOUTS])
def test_upstream_layout_converts_and_gives_reference_features(tmp_path, fmt, build):
    reference = reference_net()
    path = tmp_path / "upstream.pth.tar"
    torch.save(build(backbone_state(reference)), path)

    net = load_file(path, fmt, "zoo_test_resnet").eval()

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())


def test_torchvision_upstream_weights_give_the_same_features_in_timm(tmp_path):
    # the upstream repositories train torchvision's ResNet; the zoo loads into timm's
    reference = reference_resnet18()
    path = tmp_path / "moco.pth.tar"
    torch.save(moco_v2(backbone_state(reference)), path)
    net = load_file(path, "moco", "resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), reference(x), rtol=1e-5, atol=1e-6)


def test_every_zoo_format_has_a_synthetic_layout_test():
    from test_zoo_convert_vit import RESNET_LAYOUTS, VIT_LAYOUTS

    tested = {fmt for fmt, _ in LAYOUTS + VIT_LAYOUTS + RESNET_LAYOUTS}
    assert tested == set(list_formats()) - {f for f in list_formats() if f.startswith("doc_")}


def test_legacy_non_zip_torch_file_loads(tmp_path):
    # MoCo v1/v2's release files predate torch's zip format
    reference = reference_net()
    path = tmp_path / "moco_v1_legacy.pth.tar"
    torch.save(moco_v1(backbone_state(reference)), path, _use_new_zipfile_serialization=False)
    net = load_file(path, "moco", "zoo_test_resnet").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))


def test_numpy_1x_module_names_are_allowed(tmp_path):
    # files pickled under numpy 1.x name numpy.core.multiarray (numpy 2 renamed it numpy._core)
    path = tmp_path / "old_numpy.pth.tar"
    torch.save({"acc": np.float64(68.1), "w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    loaded = read_checkpoint(path)
    assert loaded["acc"] == 68.1 and torch.equal(loaded["w"], torch.ones(2))


def test_namespace_metadata_is_allowed_but_nothing_else(tmp_path):
    path = tmp_path / "ns.pth.tar"
    torch.save({"args": argparse.Namespace(arch="resnet50", lr=0.05), "state_dict": {}}, path)
    assert read_checkpoint(path)["args"] == argparse.Namespace(arch="resnet50", lr=0.05)


class Payload:
    """Unpickling this runs code: it creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(1)}, "extra": Payload(marker)}, path)

    with pytest.raises(ZooError, match=r"refusing to load .*evil\.pth\.tar.*'exec'.*unsafe"):
        read_checkpoint(path)
    with pytest.raises(ZooError, match="refusing"):
        load_file(path, "moco", "zoo_test_resnet")
    assert not marker.exists()

    # the payload is real: the explicit unsafe flag would run it
    read_checkpoint(path, unsafe=True)
    assert marker.exists()


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ZooError, match="cannot read checkpoint .*cut.pth"):
        read_checkpoint(path)
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"\x10\x00garbage")
    with pytest.raises(ZooError, match="cannot read .*cut.safetensors as safetensors"):
        read_checkpoint(bad)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = backbone_state(reference_net())
    upstream = moco_v2(sd)
    del upstream["state_dict"]["module.encoder_q.layer1.0.conv1.weight"]
    upstream["state_dict"]["module.encoder_q.layer5.0.conv1.weight"] = torch.randn(3)
    net = zoo_test_resnet()
    with pytest.raises(
        ZooError, match=r"1 missing key\(s\) \[layer1\.0\.conv1\.weight\], 1 unexpected key\(s\) \[layer5"
    ):
        load_strict(net, convert_checkpoint("moco", upstream))


def test_wrong_shape_is_listed_with_both_shapes():
    sd = backbone_state(reference_net())
    net = zoo_test_resnet(in_chans=1)
    with pytest.raises(ZooError, match=r"conv1\.weight: checkpoint \(64, 3, 7, 7\) vs backbone \(64, 1, 7, 7\)"):
        load_strict(net, sd)


def test_wrong_architecture_fails_strictly():
    sd = backbone_state(reference_net())
    deeper = timm.models.resnet.ResNet(
        timm.models.resnet.BasicBlock, [2, 1, 1, 1], channels=(8, 16, 32, 64), stem_width=8, num_classes=0
    )
    with pytest.raises(ZooError, match=r"missing key\(s\) \[layer1\.1\.conv1\.weight"):
        load_strict(deeper, sd)


def test_missing_num_batches_tracked_is_tolerated():
    reference = reference_net()
    sd = {k: v for k, v in backbone_state(reference).items() if not k.endswith("num_batches_tracked")}
    net = zoo_test_resnet()
    load_strict(net, sd)
    assert torch.equal(net.bn1.running_var, reference.bn1.running_var)


def test_wrong_format_names_the_missing_level():
    upstream = vissl(backbone_state(reference_net()))
    with pytest.raises(ZooError, match=r"checkpoint has no key 'state_dict' \(found: 'phase_idx'.*format"):
        convert_checkpoint("moco", upstream)
    with pytest.raises(ZooError, match=r"no key of the checkpoint starts with 'module.encoder.'"):
        convert_checkpoint("simsiam", moco_v2(backbone_state(reference_net())))
    with pytest.raises(ZooError, match="unknown checkpoint format 'nope'; valid: .*moco"):
        convert_checkpoint("nope", {})


def test_torchvision_and_timm_resnet50_share_key_names_and_shapes():
    tv = torchvision.models.resnet50().state_dict()
    tm = timm.create_model("resnet50", num_classes=0).state_dict()
    tv.pop("fc.weight"), tv.pop("fc.bias")
    assert {k: v.shape for k, v in tv.items()} == {k: v.shape for k, v in tm.items()}


def test_padded_stem_of_vicreg_and_swav_equals_timm_stem():
    # VICReg/SwAV: ConstantPad2d(1) then a 7x7/2 convolution with padding 2; timm: padding 3
    x, w = torch.randn(2, 3, 33, 31), torch.randn(8, 3, 7, 7)
    assert torch.allclose(
        F.conv2d(F.pad(x, (1, 1, 1, 1)), w, stride=2, padding=2), F.conv2d(x, w, stride=2, padding=3), atol=1e-5
    )


def test_a_plain_pickle_is_not_a_torch_checkpoint(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ZooError, match="cannot read checkpoint .*plain.pkl .*not a torch file"):
        read_checkpoint(path)
