"""What tests/torch_twins_test.ts compares with peco's models: the twins' parameter shapes, the
MocoEncoder twin's tapped feature shapes, and the perceptual loss and its gradient with respect to
the reconstruction on the weights and images the test sends. Reads one JSON object from stdin:
{"moco": {name: {"shape", "data"}}, "x": {...}, "xhat": {...}, "pool"}; prints one JSON object.
"""

import json
import sys

import torch

from models import MocoEncoder, VqVae, freeze, perceptual_input, perceptual_loss


def from_json(record):
    return torch.tensor(record["data"], dtype=torch.float32).reshape(record["shape"])


def sizes(module):
    """Parameter count and the sorted parameter shapes (the two models order them differently)."""
    shapes = sorted(list(p.shape) for p in module.parameters())
    return {"params": sum(p.numel() for p in module.parameters()), "shapes": shapes}


def main():
    request = json.load(sys.stdin)
    net = freeze(MocoEncoder())
    net.load_state_dict({name: from_json(r) for name, r in request["moco"].items()})
    x = from_json(request["x"])
    xhat = from_json(request["xhat"]).requires_grad_(True)
    pool = request["pool"]
    loss = perceptual_loss(net, perceptual_input(x, pool), perceptual_input(xhat, pool))
    loss.backward()
    print(json.dumps({
        "vqvae": sizes(VqVae()),
        "moco": sizes(net),
        "taps": [list(f.shape) for f in net.features(perceptual_input(x, pool))],
        "perceptual": loss.item(),
        "grad": xhat.grad.reshape(-1).tolist(),
    }))


if __name__ == "__main__":
    main()
