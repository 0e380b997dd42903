#!/usr/bin/python3
"""Writes fixtures/perceptual/names/: the tensor names, dtypes and shapes (no weights) of the
full-size checkpoints `train-tokenizer --perceptual vgg16|resnet50|vit-b` loads, for
tests/perceptual_names_test.ts, which builds a random state dict from each list, writes it as
safetensors and loads it with strict checking.

    /usr/bin/python3 tools/make_perceptual_names.py [out-dir]

- vgg16.json, resnet50.json: `state_dict()` of torchvision's `vgg16()` and `resnet50()` (Debian's
  python3-torchvision; the names torchvision 0.14 saves).
- vit_base_patch16_224.json: timm's `vit_base_patch16_224` (cls_token, pos_embed for 14×14
  patches + the class token, patch_embed.proj, blocks.0-11.{norm1, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2}, norm, the 1000-class head). timm is not installed here: the list is written
  from that architecture.
- moco_v3_vit_base.json: a MoCo v3 training checkpoint's `state_dict` for ViT-B/16 as its
  main_moco.py saves it from the DistributedDataParallel wrapper: `module.base_encoder.*` and
  `module.momentum_encoder.*` (the ViT above, its classifier replaced by the 3-layer projector MLP
  as head.0-7: Linear without bias, BatchNorm1d, ReLU, ..., a last BatchNorm1d without affine
  parameters; hidden 4096, output 256) and `module.predictor.*` (the 2-layer MLP 256-4096-256 of
  the same kind). Written from that architecture.
- pos_embed_resample.json: position embeddings resampled to other patch grids as timm's
  resample_abs_pos_embed does (class token kept; F.interpolate bicubic, antialias=True,
  align_corners=False), the reference of lib/models/perceptual/pos_embed.ts.
"""

import json
import os
import sys

import torch
import torchvision


def entries(state_dict):
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    return [[name, dtypes[t.dtype], list(t.shape)] for name, t in state_dict.items()]


def f32(name, *shape):
    return [name, "F32", list(shape)]


def linear(prefix, cin, cout, bias=True):
    out = [f32(f"{prefix}.weight", cout, cin)]
    return out + ([f32(f"{prefix}.bias", cout)] if bias else [])


def layer_norm(prefix, dim):
    return [f32(f"{prefix}.weight", dim), f32(f"{prefix}.bias", dim)]


def batch_norm_1d(prefix, dim, affine=True):
    out = layer_norm(prefix, dim) if affine else []
    return out + [f32(f"{prefix}.running_mean", dim), f32(f"{prefix}.running_var", dim),
                  [f"{prefix}.num_batches_tracked", "I64", []]]


def vit(dim=768, depth=12, patch=16, grid=14, mlp_ratio=4, head=None):
    """timm's VisionTransformer names, in its state-dict order; `head` = the classifier's entries."""
    out = [f32("cls_token", 1, 1, dim), f32("pos_embed", 1, 1 + grid * grid, dim),
           f32("patch_embed.proj.weight", dim, 3, patch, patch), f32("patch_embed.proj.bias", dim)]
    for i in range(depth):
        b = f"blocks.{i}"
        out += layer_norm(f"{b}.norm1", dim)
        out += linear(f"{b}.attn.qkv", dim, 3 * dim) + linear(f"{b}.attn.proj", dim, dim)
        out += layer_norm(f"{b}.norm2", dim)
        out += linear(f"{b}.mlp.fc1", dim, dim * mlp_ratio)
        out += linear(f"{b}.mlp.fc2", dim * mlp_ratio, dim)
    return out + layer_norm("norm", dim) + (head if head is not None else linear("head", dim, 1000))


def moco_mlp(prefix, layers, cin, hidden, cout):
    """MoCo v3's _build_mlp: Linear (no bias) + BatchNorm1d + ReLU, ..., Linear + BN (no affine)."""
    out, index = [], 0
    for layer in range(layers):
        last = layer == layers - 1
        out += linear(f"{prefix}.{index}", cin if layer == 0 else hidden, cout if last else hidden,
                      bias=False)
        out += batch_norm_1d(f"{prefix}.{index + 1}", cout if last else hidden, affine=not last)
        index += 2 if last else 3  # Linear, BatchNorm1d[, ReLU]
    return out


def moco_v3_vit_base(dim=256, mlp_dim=4096):
    encoder = vit(head=moco_mlp("head", 3, 768, mlp_dim, dim))
    out = []
    for part in ("base_encoder", "momentum_encoder"):
        out += [[f"module.{part}.{name}", dtype, shape] for name, dtype, shape in encoder]
    return out + moco_mlp("module.predictor", 2, dim, mlp_dim, dim)


def resample_cases():
    """timm's resample_abs_pos_embed (one prefix token) on small random embeddings."""
    torch.manual_seed(16)
    cases = []
    for old, new, dim in [((3, 3), (2, 5), 3), ((14, 14), (4, 4), 2), ((4, 4), (7, 6), 2),
                          ((14, 14), (14, 14), 1)]:
        posemb = torch.randn(1, 1 + old[0] * old[1], dim, dtype=torch.float64)
        grid = posemb[:, 1:].reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
        grid = torch.nn.functional.interpolate(grid, size=new, mode="bicubic", antialias=True,
                                               align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
        out = torch.cat([posemb[:, :1], grid], dim=1)
        cases.append({"from": list(old), "to": list(new), "dim": dim,
                      "posemb": posemb.flatten().tolist(), "resampled": out.flatten().tolist()})
    return cases


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "fixtures/perceptual/names"
    os.makedirs(out_dir, exist_ok=True)
    tv = f"torchvision {torchvision.__version__}"
    lists = {
        "vgg16": (f"{tv} vgg16().state_dict()", entries(torchvision.models.vgg16().state_dict())),
        "resnet50": (f"{tv} resnet50().state_dict()",
                     entries(torchvision.models.resnet50().state_dict())),
        "vit_base_patch16_224": ("timm vit_base_patch16_224 (written from the architecture)",
                                 vit()),
        "moco_v3_vit_base": ("MoCo v3 ViT-B/16 training checkpoint state_dict (written from the "
                             "architecture)", moco_v3_vit_base()),
    }
    for name, (source, tensors) in lists.items():
        path = os.path.join(out_dir, f"{name}.json")
        with open(path, "w") as f:
            # One tensor per line: small diffs when a list changes.
            f.write('{\n  "source": ' + json.dumps(source) + ',\n  "tensors": [\n')
            f.write(",\n".join("    " + json.dumps(t, separators=(", ", ": ")) for t in tensors))
            f.write("\n  ]\n}\n")
        print(f"{path}: {len(tensors)} tensors")
    path = os.path.join(os.path.dirname(out_dir.rstrip("/")) or ".", "pos_embed_resample.json")
    with open(path, "w") as f:
        json.dump({"source": f"torch {torch.__version__} F.interpolate bicubic antialias",
                   "cases": resample_cases()}, f, indent=2)  # as `deno fmt` writes it
        f.write("\n")
    print(f"{path}: resampling references")


if __name__ == "__main__":
    main()
