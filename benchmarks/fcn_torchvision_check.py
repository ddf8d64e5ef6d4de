"""FCN-ResNet-50 against torchvision's ``fcn_resnet50``, with torchvision's weights copied in.

    python benchmarks/fcn_torchvision_check.py [--size 64] [--batch 2]

Needs torch and torchvision (not a dependency of the project). Builds torchvision's model
(``num_classes=2``, no weights), randomises its BatchNorm statistics and affine parameters so that
they matter, copies every ``state_dict`` entry into :class:`FCNResNet50` through
``torchvision_name`` and compares the eval-mode logits on the same images (repeated to 3 channels
for torchvision). Prints the largest absolute and relative difference; exits 1 if they differ by
more than float32 rounding.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from cmseg_jax.models.fcn_resnet import FCNResNet50, torchvision_name  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    import torch
    from torchvision.models.segmentation import fcn_resnet50

    torch.manual_seed(0)
    net = fcn_resnet50(weights=None, weights_backbone=None, num_classes=2, aux_loss=False).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    state = {k: v.numpy() for k, v in net.state_dict().items()}

    model = FCNResNet50()
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, args.size, args.size))
    x = x.astype(np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1], train=False))

    def copy(path, _):
        collection, *keys = (p.key for p in path)
        value = state[torchvision_name(collection, tuple(keys))]
        return jnp.asarray(value.transpose(2, 3, 1, 0) if value.ndim == 4 else value)

    variables = jax.tree_util.tree_map_with_path(copy, shapes)
    ours = np.asarray(model.apply(variables, x, train=False)["maps"])
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)[:, None].expand(-1, 3, -1, -1))["out"]
    theirs = theirs.numpy().transpose(0, 2, 3, 1)
    diff = np.abs(ours - theirs).max()
    rel = diff / np.abs(theirs).max()
    print(f"max |flax - torchvision| = {diff:.3g} ({rel:.3g} of the largest logit)")
    sys.exit(0 if rel < 1e-4 else 1)


if __name__ == "__main__":
    main()
