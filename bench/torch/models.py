"""PyTorch twins of peco's benchmarked models, for `deno task bench --torch`.

Beit: the masked-image-modelling ViT of lib/models/beit.ts (pre-norm blocks, qkv without bias plus
q_bias and v_bias, layer scale, optional shared relative position bias, drop path, final norm and
lm_head on the masked tokens). VqVae: the taming-style VQ-VAE of lib/models/vqvae.ts with an EMA
vector quantizer (lib/models/quantizer.ts). MocoEncoder and perceptual_loss: the built-in frozen
perceptual network (lib/models/moco.ts) and the perceptual loss on its taps
(lib/models/perceptual/loss.ts). Sizes come from the presets in the TypeScript files; the initial
values do not matter for speed and are PyTorch's defaults.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-6

# BEiT presets (lib/models/beit.ts, BEIT_PRESETS).
BEIT_PRESETS = {
    "mnist": dict(patch=4, dim=64, depth=4, heads=4, mlp_ratio=4, rel_pos_bias=False,
                  layer_scale=0.1, drop_path=0.0),
    "base": dict(patch=16, dim=768, depth=12, heads=12, mlp_ratio=4, rel_pos_bias=True,
                 layer_scale=0.1, drop_path=0.1),
}


def relative_position_index(h, w):
    """BEiT's relative_position_index for an h×w grid with [CLS] (as beit.ts computes it)."""
    t = h * w
    n = t + 1
    r = (2 * h - 1) * (2 * w - 1) + 3
    index = torch.zeros(n * n, dtype=torch.long)
    rows = torch.arange(t) // w
    cols = torch.arange(t) % w
    dr = rows[:, None] - rows[None, :] + h - 1
    dc = cols[:, None] - cols[None, :] + w - 1
    index.view(n, n)[1:, 1:] = dr * (2 * w - 1) + dc
    index.view(n, n)[0, 1:] = r - 3
    index.view(n, n)[1:, 0] = r - 2
    index[0] = r - 1
    return index, r


def drop_path(x, rate, training):
    if not training or rate == 0:
        return x
    keep = torch.rand(x.shape[0], 1, 1) >= rate
    return x * keep / (1 - rate)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias=None):
        b, t, c = x.shape
        qkv_bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        q, k, v = qkv.reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, layer_scale, drop_rate):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)
        self.gamma_1 = nn.Parameter(torch.full((dim,), layer_scale))
        self.gamma_2 = nn.Parameter(torch.full((dim,), layer_scale))
        self.drop_rate = drop_rate

    def forward(self, x, bias):
        h = self.gamma_1 * self.attn(self.norm1(x), bias)
        x = x + drop_path(h, self.drop_rate, self.training)
        h = self.gamma_2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return x + drop_path(h, self.drop_rate, self.training)


class Beit(nn.Module):
    def __init__(self, preset, image_size, channels, vocab_size):
        super().__init__()
        p = BEIT_PRESETS[preset]
        dim, heads = p["dim"], p["heads"]
        self.grid = image_size // p["patch"]
        tokens = self.grid * self.grid
        self.patch_embed = nn.Conv2d(channels, dim, p["patch"], stride=p["patch"])
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.heads = heads
        if p["rel_pos_bias"]:
            index, r = relative_position_index(self.grid, self.grid)
            self.register_buffer("rel_index", index)
            self.rel_table = nn.Parameter(torch.zeros(r, heads))
            self.pos_embed = None
        else:
            self.rel_table = None
            self.pos_embed = nn.Parameter(torch.randn(1, 1 + tokens, dim) * 0.02)
        depth = p["depth"]
        self.blocks = nn.ModuleList([
            Block(dim, heads, p["mlp_ratio"], p["layer_scale"],
                  p["drop_path"] * i / (depth - 1) if depth > 1 else 0.0)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.lm_head = nn.Linear(dim, vocab_size)

    def mim_logits(self, x, mask, masked_index):
        n = x.shape[0]
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        w = mask.unsqueeze(-1)
        tokens = tokens * (1 - w) + self.mask_token * w
        h = torch.cat([self.cls_token.expand(n, -1, -1), tokens], 1)
        if self.pos_embed is not None:
            h = h + self.pos_embed
        bias = None
        if self.rel_table is not None:
            t = h.shape[1]
            bias = self.rel_table[self.rel_index].reshape(t, t, self.heads).permute(2, 0, 1)
        for block in self.blocks:
            h = block(h, bias)
        h = self.norm(h)
        patches = h[:, 1:].reshape(-1, h.shape[-1])
        return self.lm_head(patches[masked_index])


# ---- VQ-VAE (lib/models/vqvae.ts, tokenizer preset "mnist") ----------------------------------

def group_norm(channels, groups):
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, groups):
        super().__init__()
        self.norm1 = group_norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if self.nin_shortcut else x) + h


class AttnBlock(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.norm = group_norm(c, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, -1).transpose(1, 2)
        k = self.k(h).reshape(b, c, -1)
        v = self.v(h).reshape(b, c, -1)
        w = (q @ k * c ** -0.5).softmax(-1)
        out = (v @ w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def middle(c, groups):
    return nn.Sequential(ResnetBlock(c, c, groups), AttnBlock(c, groups), ResnetBlock(c, c, groups))


class Encoder(nn.Module):
    def __init__(self, cin, ch, mult, blocks, groups, z):
        super().__init__()
        layers = [nn.Conv2d(cin, ch, 3, padding=1)]
        c = ch
        for i, m in enumerate(mult):
            for _ in range(blocks):
                layers.append(ResnetBlock(c, ch * m, groups))
                c = ch * m
            if i != len(mult) - 1:
                layers.append(Downsample(c))
        layers += [middle(c, groups), group_norm(c, groups), nn.SiLU(), nn.Conv2d(c, z, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, cout, ch, mult, blocks, groups, z):
        super().__init__()
        c = ch * mult[-1]
        layers = [nn.Conv2d(z, c, 3, padding=1), middle(c, groups)]
        for i in reversed(range(len(mult))):
            for _ in range(blocks + 1):
                layers.append(ResnetBlock(c, ch * mult[i], groups))
                c = ch * mult[i]
            if i != 0:
                layers.append(Upsample(c))
        layers += [group_norm(c, groups), nn.SiLU(), nn.Conv2d(c, cout, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class EmaQuantizer(nn.Module):
    """Nearest code, straight-through, β·commitment; EMA codebook updates without gradients."""

    def __init__(self, k, d, beta=0.25, decay=0.95, eps=1e-5):
        super().__init__()
        self.beta, self.decay, self.eps = beta, decay, eps
        self.register_buffer("weight", torch.randn(k, d))
        self.register_buffer("cluster_size", torch.ones(k))
        self.register_buffer("embed_avg", self.weight.clone())

    def forward(self, z):
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.weight.t()
                + self.weight.pow(2).sum(1)[None])
        idx = dist.argmin(1)
        zq = self.weight[idx]
        if self.training:
            with torch.no_grad():
                onehot = F.one_hot(idx, self.weight.shape[0]).type(flat.dtype)
                self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                self.embed_avg.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
                n = self.cluster_size.sum()
                size = (self.cluster_size + self.eps) / (n + self.weight.shape[0] * self.eps) * n
                self.weight.copy_(self.embed_avg / size[:, None])
        commitment = self.beta * F.mse_loss(flat, zq.detach())
        zq = flat + (zq - flat).detach()
        return zq.reshape(b, h, w, d).permute(0, 3, 1, 2), commitment


class VqVae(nn.Module):
    """Tokenizer preset "mnist" of lib/models/tokenizer_config.ts by default."""

    def __init__(self, image_channels=1, ch=16, mult=(1, 2, 2), blocks=1, groups=8, code_dim=32,
                 codebook=512):
        super().__init__()
        self.encoder = Encoder(image_channels, ch, mult, blocks, groups, code_dim)
        self.quant_conv = nn.Conv2d(code_dim, code_dim, 1)
        self.quantize = EmaQuantizer(codebook, code_dim)
        self.post_quant_conv = nn.Conv2d(code_dim, code_dim, 1)
        self.decoder = Decoder(image_channels, ch, mult, blocks, groups, code_dim)

    def forward(self, x):
        zq, commitment = self.quantize(self.quant_conv(self.encoder(x)))
        return self.decoder(self.post_quant_conv(zq)), commitment


# ---- Built-in perceptual network and perceptual loss (lib/models/moco.ts, perceptual/) --------

class ConvNormAct(nn.Module):
    """3×3 conv (bias, padding 1) → GroupNorm (eps 1e-5, peco's default) → ReLU."""

    def __init__(self, cin, cout, stride, groups):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(groups, cout, eps=1e-5)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class Stage(nn.Module):
    """One resolution: a stride-2 ConvNormAct then `depth` stride-1 ones."""

    def __init__(self, cin, cout, depth, groups):
        super().__init__()
        self.layers = nn.ModuleList([ConvNormAct(cin, cout, 2, groups)] +
                                    [ConvNormAct(cout, cout, 1, groups) for _ in range(depth)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class MocoEncoder(nn.Module):
    """MOCO_ENCODER_DEFAULT by default, with peco's parameter names: a Stage per width;
    features() taps every stage's output. Images enter as they are (no input scaling)."""

    def __init__(self, widths=(16, 32, 64), depth=1, groups=8):
        super().__init__()
        cins = (3,) + tuple(widths[:-1])
        self.stages = nn.ModuleList([Stage(cin, w, depth, groups) for cin, w in zip(cins, widths)])

    def features(self, x):
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def freeze(net):
    """As peco's freeze(): eval mode and no weight gradients (gradients still reach the input)."""
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def perceptual_input(x, pool):
    """Grey repeated to RGB, average-pooled by `pool` (lib/train/tokenizer_step.ts)."""
    y = x if x.shape[1] == 3 else torch.cat([x, x, x], 1)
    return F.avg_pool2d(y, pool) if pool > 1 else y


def unit_normalize(f):
    """f / (sqrt(Σ_c f² + 1e-20) + 1e-10) at every position, as peco's unitNormalize."""
    return f / ((f.square().sum(1, keepdim=True) + 1e-20).sqrt() + 1e-10)


def perceptual_loss(net, x, xhat):
    """Σ over the taps of Σ_c (f̂ − ĝ)² averaged over batch and positions; the target's features
    without a tape, as peco's perceptualLoss."""
    with torch.no_grad():
        target = net.features(x)
    total = 0
    for f, g in zip(net.features(xhat), target):
        positions = f.numel() // f.shape[1]
        total = total + (unit_normalize(f) - unit_normalize(g)).square().sum() / positions
    return total


def beit_masked_count(tokens):
    """BEiT's masking budget, 75 of 196 patches, scaled to the grid (lib/train/mim.ts)."""
    return max(1, round(75 / 196 * tokens))


def mim_batch(model, batch, channels, image_size, vocab, generator):
    t = model.grid * model.grid
    masked = beit_masked_count(t)
    mask = torch.zeros(batch, t)
    for i in range(batch):
        mask[i, torch.randperm(t, generator=generator)[:masked]] = 1
    x = torch.randn(batch, channels, image_size, image_size, generator=generator)
    masked_index = mask.reshape(-1).nonzero().squeeze(1)
    targets = torch.randint(vocab, (masked_index.numel(),), generator=generator)
    return x, mask, masked_index, targets


def math_check():
    assert math.isclose(beit_masked_count(196), 75)
