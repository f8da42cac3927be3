"""ViT converters (MoCo v3, DINO, MAE) and DINO's ResNet: tiny models in each upstream layout load strictly into timm."""

import argparse

import pytest
import timm
import torch
from test_zoo_convert import backbone_state, optimizer_state, prefixed, reference_net

from visionssl.zoo import ZooError, convert_checkpoint, load_file

TINY_VIT = {"img_size": 32, "depth": 2}  # vit_tiny_patch16_224 at 32 px: 4 patches, 2 blocks


def reference_vit(**kwargs) -> torch.nn.Module:
    """A tiny timm ViT with random weights everywhere, LayerNorms included (their defaults are ones and zeros)."""
    net = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY_VIT, **kwargs)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
            elif name in ("cls_token", "pos_embed"):
                p.normal_(0, 0.5)
    return net.eval()


def perturbed(sd: dict) -> dict:
    return {k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v for k, v in sd.items()}


def linears(prefix: str, indices, dims=(192, 64)) -> dict:
    """Linear layers ``prefix{i}.weight/bias`` (heads, projectors, predictors, decoders: only their keys matter)."""
    return {
        k: v
        for i in indices
        for k, v in {
            f"{prefix}{i}.weight": torch.randn(dims[1], dims[0]),
            f"{prefix}{i}.bias": torch.randn(dims[1]),
        }.items()
    }


def amp_scaler() -> dict:  # torch.cuda.amp.GradScaler.state_dict(), as MoCo v3, DINO and MAE save it
    return {
        "scale": 65536.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 3,
    }


# MoCo v3 (main_moco.py, moco/builder.py MoCo_ViT): the projector replaces the ViT's head (3-layer MLP with BN)
def mocov3_vit_training(sd):
    def encoder(weights):
        return {
            **weights,
            **linears("head.", (0, 3, 6)),
            "head.1.weight": torch.ones(64),
            "head.1.bias": torch.zeros(64),
            "head.1.running_mean": torch.zeros(64),
            "head.1.running_var": torch.ones(64),
            "head.1.num_batches_tracked": torch.tensor(5),
        }

    state = {
        **prefixed(encoder(sd), "module.base_encoder."),
        **prefixed(encoder(perturbed(sd)), "module.momentum_encoder."),
        **linears("module.predictor.", (0, 3), dims=(64, 64)),
    }
    return {
        "epoch": 300,
        "arch": "vit_small",
        "state_dict": state,
        "optimizer": optimizer_state(),
        "scaler": amp_scaler(),
    }


def mocov3_vit_deit(sd):  # convert_to_deit.py: {model: base_encoder without its head, prefix removed}
    return {"model": dict(sd)}


# DINO (main_dino.py): MultiCropWrapper(backbone, DINOHead); the student is DDP-wrapped, the ViT teacher is not
def dino_head(prefix: str, in_dim: int) -> dict:
    return {
        **linears(prefix + "mlp.", (0, 2), dims=(in_dim, 64)),
        **linears(prefix + "mlp.", (4,), dims=(64, 32)),
        prefix + "last_layer.weight_g": torch.ones(100, 1),
        prefix + "last_layer.weight_v": torch.randn(100, 32),
    }


def dino_full(sd, teacher_prefix: str, in_dim: int):
    return {
        "student": {**prefixed(perturbed(sd), "module.backbone."), **dino_head("module.head.", in_dim)},
        "teacher": {**prefixed(sd, teacher_prefix + "backbone."), **dino_head(teacher_prefix + "head.", in_dim)},
        "optimizer": optimizer_state(),
        "epoch": 100,
        "args": argparse.Namespace(
            arch="vit_small",
            patch_size=16,
            out_dim=65536,
            momentum_teacher=0.996,
            local_crops_number=10,
            global_crops_scale=(0.4, 1.0),
        ),
        "dino_loss": {"center": torch.randn(1, 100)},
        "fp16_scaler": amp_scaler(),
    }


def dino_vit_release(sd):  # dino_deitsmall16_pretrain.pth: the teacher backbone's flat state dict
    return dict(sd)


def dino_vit_full(sd):  # *_full_checkpoint.pth: the ViT teacher is not DDP-wrapped: backbone.*
    return dino_full(sd, "", 192)


def dino_resnet_release(sd):  # dino_resnet50_pretrain.pth: torchvision's ResNet-50 keys
    return dict(sd)


def dino_resnet_full(sd):  # ResNets have BatchNorm, so main_dino.py DDP-wraps the teacher too: module.backbone.*
    return dino_full(sd, "module.", 64)


# MAE (models_mae.py MaskedAutoencoderViT, util/misc.py save_model)
def mae_release(sd):  # mae_pretrain_vit_base.pth: {model: the encoder}
    return {"model": dict(sd)}


def mae_training(sd):  # checkpoint-N.pth: the whole autoencoder, optimizer, epoch, scaler, args
    decoder = {
        "mask_token": torch.randn(1, 1, 64),
        "decoder_pos_embed": torch.randn(1, 5, 64),
        **linears("decoder_", ("embed",)),
        **linears("decoder_blocks.0.attn.", ("qkv", "proj"), dims=(64, 64)),
        "decoder_norm.weight": torch.ones(64),
        "decoder_norm.bias": torch.zeros(64),
        **linears("decoder_", ("pred",), dims=(64, 768)),
    }
    return {
        "model": {**sd, **decoder},
        "optimizer": optimizer_state(),
        "epoch": 1599,
        "scaler": amp_scaler(),
        "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75, norm_pix_loss=True),
    }


VIT_LAYOUTS = [
    ("mocov3_vit", mocov3_vit_training),
    ("mocov3_vit", mocov3_vit_deit),
    ("dino", dino_vit_release),
    ("dino", dino_vit_full),
    ("mae", mae_release),
    ("mae", mae_training),
]
RESNET_LAYOUTS = [("dino", dino_resnet_release), ("dino", dino_resnet_full)]


@pytest.mark.parametrize("fmt, build", VIT_LAYOUTS, ids=[b.__name__ for _, b in VIT_LAYOUTS])
def test_vit_layout_converts_and_gives_reference_features(tmp_path, fmt, build):
    reference = reference_vit()
    path = tmp_path / "upstream.pth"
    torch.save(build(backbone_state(reference)), path)

    net = load_file(path, fmt, "vit_tiny_patch16_224", **TINY_VIT).eval()

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in reference.state_dict().items())


@pytest.mark.parametrize("fmt, build", RESNET_LAYOUTS, ids=[b.__name__ for _, b in RESNET_LAYOUTS])
def test_dino_resnet_layout_converts_and_gives_reference_features(tmp_path, fmt, build):
    reference = reference_net()
    path = tmp_path / "upstream.pth"
    torch.save(build(backbone_state(reference)), path)
    net = load_file(path, fmt, "zoo_test_resnet").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))


def test_dino_full_checkpoint_gives_the_teacher_not_the_student():
    sd = backbone_state(reference_vit())
    state = convert_checkpoint("dino", dino_vit_full(sd))
    assert all(torch.equal(state[k], v) for k, v in sd.items())
    student = {k.removeprefix("module.backbone."): v for k, v in dino_vit_full(sd)["student"].items()}
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], student["blocks.0.attn.qkv.weight"])


def test_upstream_vit_key_names_are_timms():
    # the encoder modules as upstream names them (dino vision_transformer.py; timm 0.4.9 / 0.3.2 VisionTransformer,
    # Block, Attention, Mlp, PatchEmbed, which moco-v3 vits.py and mae models_mae.py use), written out for depth 1
    block = [
        f"blocks.0.{m}.{p}"
        for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias")
    ]
    upstream = [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        *block,
        "norm.weight",
        "norm.bias",
    ]
    for kwargs in ({}, {"global_pool": "avg", "fc_norm": False}):
        assert sorted(
            timm.create_model("vit_small_patch16_224", num_classes=0, depth=1, **kwargs).state_dict()
        ) == sorted(upstream)


def test_mae_pooling_choices_use_the_released_norm(tmp_path):
    # token: norm then the CLS token (MAE's linear probe, --cls_token); avg with fc_norm=False: norm then the patch mean
    reference = reference_vit()
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save(mae_release(backbone_state(reference)), path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = reference.forward_features(x)  # (B, 1 + 4, D) after the final norm
        token_net = load_file(path, "mae", "vit_tiny_patch16_224", **TINY_VIT).eval()
        avg_net = load_file(path, "mae", "vit_tiny_patch16_224", global_pool="avg", fc_norm=False, **TINY_VIT).eval()
        assert torch.equal(token_net(x), tokens[:, 0])
        assert torch.allclose(avg_net(x), tokens[:, 1:].mean(1), atol=1e-6)
    with pytest.raises(
        ZooError, match=r"missing key\(s\) \[fc_norm.weight, fc_norm.bias\], 2 unexpected key\(s\) \[norm"
    ):
        load_file(path, "mae", "vit_tiny_patch16_224", global_pool="avg", **TINY_VIT)


def test_wrong_layouts_name_what_is_missing():
    sd = backbone_state(reference_vit())
    with pytest.raises(ZooError, match=r"checkpoint has no key 'model' \(found: 'cls_token'"):
        convert_checkpoint("mae", dino_vit_release(sd))
    with pytest.raises(ZooError, match=r"no key of the checkpoint starts with 'module.base_encoder.'"):
        convert_checkpoint("mocov3_vit", {"state_dict": prefixed(sd, "module.encoder_q.")})
