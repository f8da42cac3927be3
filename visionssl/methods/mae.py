"""MAE (He et al., 2022, arXiv 2111.06377): a ViT encoder sees a random 25% of the patches; a light
decoder reconstructs the others."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from visionssl.losses import mae, patchify
from visionssl.methods import register_method
from visionssl.methods.base import SSLMethod


def random_masking(
    n: int, length: int, keep: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masks drawn in one batched call: (ids_keep (n, keep), ids_restore (n, length),
    mask (n, length) with 1 on the ``length - keep`` masked patches) from the argsort of uniform noise.

    Example:
        >>> ids_keep, ids_restore, mask = random_masking(2, 8, 2, torch.device("cpu"))
        >>> ids_keep.shape, mask.sum(1).tolist()
        (torch.Size([2, 2]), [6.0, 6.0])
    """
    ids_shuffle = torch.rand(n, length, device=device).argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(n, length, device=device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], ids_restore, mask.gather(1, ids_restore)


def mae_init_(vit: nn.Module) -> nn.Module:
    """The official MAE encoder initialisation, in place (``models_mae.py``'s ``initialize_weights``): every
    linear layer and the patch embedding (as a linear layer) xavier-uniform with zero bias, LayerNorms at 1 / 0,
    the class token N(0, 0.02), and a fixed (untrained) 2-D sin-cos position embedding, zero at the class token.

    On small data this is most of what MAE's features start from: timm's default (std-0.02 linear layers, a
    learned position embedding near 0) gives a CLS token that kNN reads far worse (docs/methods.md).

    Example:
        >>> import timm
        >>> vit = mae_init_(timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, num_classes=0))
        >>> vit.pos_embed.requires_grad, tuple(vit.pos_embed.shape), float(vit.pos_embed[0, 0].abs().sum())
        (False, (1, 17, 192), 0.0)
    """
    from timm.layers import build_sincos2d_pos_embed

    with torch.no_grad():
        for module in vit.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        proj = vit.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        if getattr(vit, "cls_token", None) is not None:
            nn.init.normal_(vit.cls_token, std=0.02)
        grid = list(vit.patch_embed.grid_size)
        sincos = build_sincos2d_pos_embed(grid, dim=vit.embed_dim, temperature=10000.0)
        vit.pos_embed.zero_()
        vit.pos_embed[0, vit.pos_embed.shape[1] - sincos.shape[0] :] = sincos.to(vit.pos_embed.dtype)
    vit.pos_embed.requires_grad_(False)
    return vit


@register_method("mae")
class MAE(SSLMethod):
    """MAE on a timm ViT: 75% of the patches masked per sample, the encoder (the backbone's own
    patch embedding, position embedding, class token, blocks and norm) on the visible ones only, a
    decoder of ``decoder_depth`` transformer blocks of width ``decoder_dim`` over the encoded tokens
    plus a shared learned mask token, and ``vs.losses.mae`` on the masked patches (normalised pixels).

    The encoder starts from the official initialisation (``mae_init_``: xavier-uniform layers, a fixed 2-D
    sin-cos position embedding) when it is built from a name; a module you pass is used as you built it
    (``encoder_init`` overrides either way). The decoder's position embedding is learned (the paper fixes it
    to 2-D sin-cos). The backbone stays a plain timm ViT: ``method.backbone(x)`` returns its pooled (B, D)
    features (CLS token, or the mean of the tokens with ``backbone_kwargs={"global_pool": "avg"}``) for kNN
    and linear probes.

    Args:
        backbone: a timm ViT name or module (``patch_embed``, ``pos_embed``, ``blocks``, ``norm``); for
            small images set ``img_size`` and ``patch_size`` in ``backbone_kwargs``.
        mask_ratio: fraction of the patches hidden from the encoder.
        decoder_dim, decoder_depth, decoder_heads: the decoder (the paper: 512, 8, 16).
        norm_pix_loss: reconstruct per-patch normalised pixels.
        encoder_init: "mae" (``mae_init_``, the official initialisation) or "timm" (the backbone's weights as
            built); None: "mae" for a backbone given by name, "timm" for a module.

    Example:
        >>> import torch, visionssl as vs
        >>> kw = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
        >>> m = vs.create_method("mae", backbone="vit_tiny_patch16_224", backbone_kwargs=kw, decoder_dim=16,
        ...                      decoder_depth=1, decoder_heads=2)
        >>> out = m([torch.randn(2, 3, 16, 16)]); out["loss"].backward()
        >>> tuple(out["embedding"].shape), int(out["mask"].sum(1)[0])
        ((2, 32), 12)
    """

    augmentation = "mae"
    hparam_choices: ClassVar[dict] = {"encoder_init": ("mae", "timm")}  # or None: by how the backbone is given
    num_views = 1
    decay_norm_and_bias = False  # the official main_pretrain.py: no weight decay on biases and norms

    def __init__(
        self,
        backbone: str | nn.Module = "vit_base_patch16_224",
        backbone_kwargs: dict[str, Any] | None = None,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        encoder_init: str | None = None,
    ):
        if encoder_init not in (None, "mae", "timm"):
            raise ValueError(f"encoder_init must be 'mae' or 'timm' (or None), got {encoder_init!r}")
        super().__init__(backbone, backbone_kwargs)
        from timm.models.vision_transformer import Block

        vit = self.backbone
        missing = [a for a in ("patch_embed", "pos_embed", "blocks", "norm") if getattr(vit, a, None) is None]
        if missing:
            raise ValueError(f"MAE needs a timm ViT backbone; {type(vit).__name__} has no {', '.join(missing)}")
        if getattr(vit.patch_embed, "dynamic_img_size", False) or getattr(vit, "dynamic_img_size", False):
            raise ValueError("MAE needs a fixed image size: build the ViT without dynamic_img_size")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if (encoder_init or ("mae" if isinstance(backbone, str) else "timm")) == "mae":
            mae_init_(vit)
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.patch_size = vit.patch_embed.patch_size[0]
        num_patches, dim = vit.patch_embed.num_patches, vit.embed_dim
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches, decoder_dim))
        self.decoder_blocks = nn.Sequential(
            *[Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * vit.patch_embed.proj.in_channels)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)

    def encode_visible(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder tokens (B, prefix + visible, D) of a random subset of patches, the mask, ids_restore."""
        vit = self.backbone
        tokens = vit.patch_embed(x)
        prefix_count = vit.num_prefix_tokens
        pos = vit.pos_embed
        patch_pos, prefix_pos = (pos, None) if vit.no_embed_class else (pos[:, prefix_count:], pos[:, :prefix_count])
        tokens = tokens + patch_pos
        n, length, dim = tokens.shape
        keep = max(1, int(length * (1 - self.mask_ratio)))
        ids_keep, ids_restore, mask = random_masking(n, length, keep, x.device)
        visible = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        prefix = [t for t in (vit.cls_token, getattr(vit, "reg_token", None)) if t is not None]
        if prefix:
            prefix = torch.cat(prefix, dim=1)
            if prefix_pos is not None:
                prefix = prefix + prefix_pos
            visible = torch.cat([prefix.expand(n, -1, -1), visible], dim=1)
        return vit.norm(vit.blocks(vit.norm_pre(visible))), mask, ids_restore

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predicted patches (B, L, p * p * C) for every position."""
        prefix_count = self.backbone.num_prefix_tokens
        y = self.decoder_embed(latent)
        n, length = ids_restore.shape
        visible = y[:, prefix_count:]
        tokens = torch.cat([visible, self.mask_token.expand(n, length - visible.shape[1], -1)], dim=1)
        tokens = tokens.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, y.shape[-1])) + self.decoder_pos_embed
        tokens = self.decoder_norm(self.decoder_blocks(torch.cat([y[:, :prefix_count], tokens], dim=1)))
        return self.decoder_pred(tokens[:, prefix_count:])

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(views) != 1:
            raise ValueError(f"MAE takes 1 view, got {len(views)}")
        x = views[0]
        latent, mask, ids_restore = self.encode_visible(x)
        pred = self.decode(latent, ids_restore)
        loss = mae(pred, patchify(x, self.patch_size), mask, self.norm_pix_loss)
        embedding = latent[:, 0] if self.backbone.num_prefix_tokens else latent.mean(1)  # of the visible patches
        return {"loss": loss, "embedding": embedding.detach(), "mask": mask}
