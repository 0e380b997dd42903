#!/usr/bin/python3
"""Writes fixtures/perceptual/: reduced-width VGG16, ResNet-50 and ViT-B/16 built in plain PyTorch
with the module layout (hence the state-dict names) of torchvision / timm / MoCo v3, random weights
from a fixed seed, and their reference outputs for tests/perceptual_test.ts.

    /usr/bin/python3 tools/make_perceptual_fixtures.py [out-dir]

Needs only Debian's python3-torch (`apt-get install -y python3-torch`): torchvision, timm and the
safetensors package are not used (a small safetensors writer is below).

Per network NAME it writes
  NAME.safetensors      the state dict, including the classifier head a real checkpoint carries
                        (the loader ignores it); metadata "config" = the architecture config (JSON)
  NAME_ref.safetensors  x, xhat [2, 3, 32, 32] in [-1, 1]; feature.K = the K-th tapped feature map
                        of x, as [N, C, H, W]; loss = the perceptual loss of (x, xhat);
                        grad_xhat = d loss / d xhat
"""

import json
import os
import struct
import sys

import torch
from torch import nn
import torch.nn.functional as F

torch.manual_seed(1234)
torch.set_default_dtype(torch.float32)

# LPIPS's scaling layer and the ImageNet statistics (inputs in [-1, 1]).
LPIPS_SHIFT = [-0.030, -0.088, -0.188]
LPIPS_SCALE = [0.458, 0.448, 0.450]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def channel_affine(x, mul, add):
    return x * torch.tensor(mul).view(1, 3, 1, 1) + torch.tensor(add).view(1, 3, 1, 1)


def lpips_input(x):
    return channel_affine(x, [1 / s for s in LPIPS_SCALE],
                          [-m / s for m, s in zip(LPIPS_SHIFT, LPIPS_SCALE)])


def imagenet_input(x):
    # ((x + 1) / 2 - mean) / std
    return channel_affine(x, [0.5 / s for s in IMAGENET_STD],
                          [(0.5 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])


# ---- VGG16 (torchvision layout: features.N = conv / relu / pool) --------------------------------

VGG_CONVS = [2, 2, 3, 3, 3]


class VGG16(nn.Module):
    def __init__(self, widths, classes=10):
        super().__init__()
        layers, taps, c = [], [], 3
        for stage, (width, convs) in enumerate(zip(widths, VGG_CONVS)):
            if stage > 0:
                layers.append(nn.MaxPool2d(2, 2))
            for _ in range(convs):
                layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=False)]
                c = width
            taps.append(len(layers) - 1)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
        layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.taps = taps
        # Stand-in for torchvision's classifier (unused by the perceptual features).
        self.classifier = nn.Sequential(nn.Linear(c, classes))

    def feature_maps(self, x):
        h, out = lpips_input(x), []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
                if len(out) == len(self.taps):
                    break
        return out


# ---- ResNet-50 (torchvision layout: Bottleneck with the stride on conv2) ------------------------

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(h + identity)


class ResNet50(nn.Module):
    def __init__(self, width, blocks, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = width
        for stage, count in enumerate(blocks):
            w = width * 2 ** stage
            layer = []
            for b in range(count):
                layer.append(Bottleneck(cin, w, 2 if stage > 0 and b == 0 else 1))
                cin = w * Bottleneck.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(cin, classes)

    def feature_maps(self, x):
        h = self.maxpool(self.relu(self.bn1(self.conv1(imagenet_input(x)))))
        out = []
        for stage in range(4):
            h = getattr(self, f"layer{stage + 1}")(h)
            out.append(h)
        return out


# ---- ViT-B/16 (timm / MoCo v3 layout) -----------------------------------------------------------

class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        out = a.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, image_size, patch, dim, depth, heads, mlp_ratio, taps, classes=10):
        super().__init__()
        self.grid = image_size // patch
        self.taps = taps
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, dim))
        self.patch_embed = PatchEmbed(patch, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def feature_maps(self, x):
        n = x.shape[0]
        t = self.patch_embed.proj(imagenet_input(x)).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(n, -1, -1), t], dim=1) + self.pos_embed
        out = []
        for i, block in enumerate(self.blocks):
            t = block(t)
            if i + 1 in self.taps:
                patches = t[:, 1:].transpose(1, 2)
                out.append(patches.reshape(n, -1, self.grid, self.grid))
        return out


# ---- the perceptual loss (docs/paper-to-code.md) ---------------------------------------------

def unit_normalize(f):
    # LPIPS's normalize_tensor, with 1e-20 under the root so that an all-zero position (common
    # after a ReLU in a narrow network) has a finite gradient; it changes no value above ~1e-10.
    return f / (torch.sqrt((f * f).sum(dim=1, keepdim=True) + 1e-20) + 1e-10)


def perceptual_loss(net, x, xhat):
    with torch.no_grad():
        target = net.feature_maps(x)
    total = 0.0
    for a, b in zip(net.feature_maps(xhat), target):
        d = (unit_normalize(a) - unit_normalize(b)) ** 2
        total = total + d.sum(dim=1).mean()  # channels summed; positions and batch averaged
    return total


# ---- random weights -----------------------------------------------------------------------------

def randomize(net):
    """Weights that keep activations O(1) through the depth, and non-trivial norm statistics."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif p.dim() >= 2 and name not in ("cls_token", "pos_embed"):
                fan_in = p[0].numel()
                p.normal_(0.0, (2.0 / fan_in) ** 0.5)
            else:  # norm weights, tokens, position embeddings
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0.0, 0.5)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return net.eval()


# ---- safetensors --------------------------------------------------------------------------------

DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.int32: "I32"}


def write_safetensors(path, tensors, metadata):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":"))
    text += " " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text.encode())
        for blob in blobs:
            f.write(blob)
    return os.path.getsize(path)


# ---- main ---------------------------------------------------------------------------------------

def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "fixtures/perceptual"
    os.makedirs(out_dir, exist_ok=True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    xhat = (x + 0.3 * torch.randn(x.shape)).clamp(-1, 1)
    configs = {
        "vgg16": {"widths": [4, 8, 16, 32, 32]},
        "resnet50": {"width": 4, "blocks": [2, 1, 1, 1]},
        "vit_b": {"imageSize": 32, "patchSize": 8, "dim": 24, "depth": 4, "heads": 3,
                  "mlpRatio": 4, "taps": [1, 2, 3, 4]},
    }
    builders = {
        "vgg16": lambda c: VGG16(c["widths"]),
        "resnet50": lambda c: ResNet50(c["width"], c["blocks"]),
        "vit_b": lambda c: VisionTransformer(c["imageSize"], c["patchSize"], c["dim"], c["depth"],
                                             c["heads"], c["mlpRatio"], c["taps"]),
    }
    total = 0
    for name, config in configs.items():
        net = randomize(builders[name](config))
        for p in net.parameters():
            p.requires_grad_(False)
        meta = {"config": json.dumps(config), "made_by": "tools/make_perceptual_fixtures.py",
                "torch": torch.__version__}
        total += write_safetensors(os.path.join(out_dir, f"{name}.safetensors"),
                                   net.state_dict(), meta)
        with torch.no_grad():
            features = net.feature_maps(x)
        xh = xhat.clone().requires_grad_(True)
        loss = perceptual_loss(net, x, xh)
        loss.backward()
        assert torch.isfinite(xh.grad).all(), f"{name}: non-finite gradient"
        for i, f in enumerate(features):
            zero = ((f * f).sum(dim=1) == 0).float().mean().item()
            print(f"{name} feature.{i} {list(f.shape)} all-zero positions {zero:.2f}")
        ref = {"x": x, "xhat": xhat, "loss": loss.detach().reshape([]), "grad_xhat": xh.grad}
        ref.update({f"feature.{i}": f for i, f in enumerate(features)})
        total += write_safetensors(os.path.join(out_dir, f"{name}_ref.safetensors"), ref, meta)
        print(f"{name}: loss {loss.item():.6f}")
    print(f"wrote {total} bytes to {out_dir}")


if __name__ == "__main__":
    main()
