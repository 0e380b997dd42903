"""`deno task bench --torch` runs this with /usr/bin/python3: the PyTorch time of the bench cases
that have a twin here, one JSON line each ({"name", "torch_ms", "torch_cpu_ms", "steal"}), names equal to
the TypeScript cases' names; torch_cpu_ms is the process CPU time per step of a second run on one
thread (the work itself, without OpenMP's spinning), which a busy machine inflates far less than
the wall time. Arguments: [--filter TEXT] [--quick] (as bench/main.ts; the ViT-B case only when
the filter names it, as bench/pretrain.ts). Wall time on two threads, as the 2-core machine the
figures compare on. "steal": the share of the CPUs' time the hypervisor gave to other guests while
the case ran (/proc/stat, as bench/steal.ts; null where it is missing).
"""

import json
import sys
import time

import torch
import torch.nn.functional as F

from models import (Beit, MocoEncoder, VqVae, freeze, mim_batch, perceptual_input,
                    perceptual_loss)

torch.set_num_threads(2)


def cpu_counters():
    """(steal, total) clock ticks of all CPUs from /proc/stat's cpu line, or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(t) for t in fields[1:9]]
    return ticks[7], sum(ticks)


def steal_share(before, after):
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def time_steps(step, warmup=2, min_iters=3, min_ms=1000.0):
    """(wall ms, process CPU ms) per step."""
    for _ in range(warmup):
        step()
    iters = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    while iters < min_iters or (time.perf_counter() - start) * 1e3 < min_ms:
        step()
        iters += 1
    wall = (time.perf_counter() - start) * 1e3 / iters
    return wall, (time.process_time() - cpu_start) * 1e3 / iters


def mim_step_case(preset, image_size, channels, vocab, batch, timing):
    gen = torch.Generator().manual_seed(1)
    model = Beit(preset, image_size, channels, vocab)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "token" not in n
             and "pos_embed" not in n and "rel_table" not in n]
    no_decay = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-4, betas=(0.9, 0.98))
    x, mask, masked_index, targets = mim_batch(model, batch, channels, image_size, vocab, gen)

    def step():
        loss = F.cross_entropy(model.mim_logits(x, mask, masked_index), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, **timing)


def tokenizer_step_case(batch, perceptual_lambda=0.0):
    """bench/tokenizer.ts's MNIST step: pixel (L2) + λ·perceptual + commitment, clipping, Adam.
    With λ > 0 the perceptual network is the frozen MocoEncoder at its default width on the grey
    images repeated to RGB and pooled 28² → 14², as the stage does for images ≤ 32². Not twinned:
    the quantizer's k-means initialisation (peco's first, warmup, call) and its dead-code restart
    after each EMA update (a few element-wise ops on the 512 × 32 codebook per step)."""
    model = VqVae()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.5, 0.95))
    net = freeze(MocoEncoder()) if perceptual_lambda > 0 else None
    x = torch.rand(batch, 1, 28, 28) * 2 - 1

    def step():
        xhat, commitment = model(x)
        rec = F.mse_loss(xhat, x)
        if net is not None:
            percep = perceptual_loss(net, perceptual_input(x, 2), perceptual_input(xhat, 2))
            rec = rec + perceptual_lambda * percep
        loss = rec + commitment
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_steps(step, min_ms=3000.0)


def attention_fwd_case():
    b, h, t, d = 2, 12, 197, 64
    q, k, v = (torch.full((b, h, t, d), value) for value in (0.01, -0.02, 0.03))

    def step():
        with torch.no_grad():
            ((q @ k.transpose(-2, -1)) * d ** -0.5).softmax(-1) @ v

    return time_steps(step, min_iters=10)


def matmul_case(n):
    a = torch.full((n, n), 0.5)
    b = torch.full((n, n), -0.25)
    return time_steps(lambda: a @ b, min_iters=5)


CASES = [
    ("pretrain mnist preset 28² K=512 batch 32 step", False,
     lambda: mim_step_case("mnist", 28, 1, 512, 32, dict(min_ms=2000.0))),
    ("pretrain vit-b/16 224² K=8192 batch 2 step", True,
     lambda: mim_step_case("base", 224, 3, 8192, 2, dict(warmup=1, min_iters=1, min_ms=0.0))),
    ("tokenizer-mnist train λ=0 b=8", False, lambda: tokenizer_step_case(8)),
    ("tokenizer-mnist train λ=1 builtin b=8", False, lambda: tokenizer_step_case(8, 1.0)),
    ("attention fwd B=2 T=197 H=12 D=64", True, attention_fwd_case),
    ("matmul 256³", False, lambda: matmul_case(256)),
    ("matmul 512³", False, lambda: matmul_case(512)),
    ("matmul 1024³", True, lambda: matmul_case(1024)),
]
# Run only when the filter names them (minutes per step), as the TypeScript side does.
ONLY_WHEN_NAMED = {"pretrain vit-b/16 224² K=8192 batch 2 step"}


def main(argv):
    text = None
    quick = "--quick" in argv
    for i, arg in enumerate(argv):
        if arg == "--filter" and i + 1 < len(argv):
            text = argv[i + 1]
        elif arg.startswith("--filter="):
            text = arg[len("--filter="):]
    for name, slow, run in CASES:
        if text is not None and text not in name:
            continue
        if name in ONLY_WHEN_NAMED and not text:
            continue
        if quick and slow:
            continue
        counters = cpu_counters()
        wall_ms, _ = run()
        steal = steal_share(counters, cpu_counters())
        # CPU time from a second run on one thread: with two, OpenMP's waiting threads spin, and on
        # a busy machine that spinning (counted as CPU time) grew PyTorch's CPU time per step 5-25x.
        torch.set_num_threads(1)
        _, cpu_ms = run()
        torch.set_num_threads(2)
        print(json.dumps({"name": name, "torch_ms": wall_ms, "torch_cpu_ms": cpu_ms,
                          "steal": steal}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
