"""Model FLOPs of the PyTorch twins' training steps (forward + backward), the cross-check of the
`gflop` that `deno task bench` prints: `cd bench/torch && /usr/bin/python3 flops.py`. torch 1.13 has
no torch.utils.flop_counter, so a TorchDispatchMode counts every aten op as it runs: 2·M·N·K per
product (mm, addmm, bmm) and 2·N·O·C·kh·kw·Hout·Wout per convolution and per gradient that
convolution_backward computes (its output mask), as lib/tensor/ops/flops.ts counts them.
"""

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from models import Beit, VqVae, mim_batch


class CountFlops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.by_op = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm"):
            a, b = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
            batch = a.shape[0] if name == "bmm" else 1
            self.by_op[name] += 2 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]
        elif name == "convolution":
            w = args[1]
            self.by_op[name] += 2 * out.numel() * w.shape[1] * w.shape[2] * w.shape[3]
        elif name == "convolution_backward":
            grad, w, mask = args[0], args[2], args[-1]
            per_gradient = 2 * grad.numel() * w.shape[1] * w.shape[2] * w.shape[3]
            self.by_op[name] += per_gradient * (int(mask[0]) + int(mask[1]))
        return out


def mim(preset, image_size, channels, vocab, batch):
    """A bench/pretrain.ts case: the MIM step's forward and backward."""
    model = Beit(preset, image_size, channels, vocab)
    model.train()
    x, mask, masked_index, targets = mim_batch(model, batch, channels, image_size, vocab,
                                               torch.Generator().manual_seed(0))
    with CountFlops() as count:
        F.cross_entropy(model.mim_logits(x, mask, masked_index), targets).backward()
    return count.by_op


def tokenizer_mnist():
    """bench/tokenizer.ts's λ = 0 case: batch 8, 28². The EMA codebook update's onehotᵀ·z is a
    product here; peco sums the same statistics without one (codeStats)."""
    model = VqVae()
    model.train()
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    with CountFlops() as count:
        xhat, commitment = model(x)
        (F.mse_loss(xhat, x) + commitment).backward()
    return count.by_op


if __name__ == "__main__":
    steps = [
        ("pretrain mnist step", lambda: mim("mnist", 28, 1, 512, 32)),
        ("pretrain vit-b/16 step", lambda: mim("base", 224, 3, 8192, 2)),
        ("tokenizer-mnist λ=0 step", tokenizer_mnist),
    ]
    for name, step in steps:
        by_op = step()
        print(f"{name}: {sum(by_op.values()) / 1e9:.9f} GFLOP {dict(by_op)}")
