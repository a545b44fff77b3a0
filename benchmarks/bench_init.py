"""Which initialisation serves users best: nnscratch's He-normal default or PyTorch's.

    python benchmarks/bench_init.py [--seeds 3] [--epochs 10] [--threads N]

Trains on Fashion-MNIST (the full 60,000 / 10,000; Debian's dataset-fashion-mnist or a
download) from several seeds, each recipe with the layers' default initialisation
(``init="he"``: He-normal weights, zero biases) and with PyTorch's (``init="torch"``:
kaiming-uniform with a = sqrt(5), biases U(+-1/sqrt(fan_in))), and PyTorch itself on the
same recipe with its own initialisation:

* a recipe written for PyTorch: LeNet (models.lenet), SGD lr 0.01 momentum 0.9, batch 64;
* the command line's recipe: the MLP 784-256-128-10 (models.mlp), Adam lr 1e-3, batch 128.

Prints the test accuracy per seed and the mean of each column. The last Linear layer of
models.mlp is Glorot-initialised in both nnscratch columns (its outputs are logits); every
other Linear and Conv2d takes the column's initialisation.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def _reinit(model, init):
    """`model` with every Linear and Conv2d (but a Glorot-initialised last layer) drawn
    again by `init` from the library generator, in order."""
    import nnscratch as nn
    from nnscratch import init as _init

    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and layer.init != "xavier":
            w = layer.weight.data
            if isinstance(layer, nn.Linear):
                fan_in, fan_out = layer.in_features, layer.out_features
            else:
                field = w.shape[2] * w.shape[3]
                fan_in, fan_out = w.shape[1] * field, w.shape[0] * field
            w[...] = _init.draw(init, fan_in, fan_out, w.shape)
            if layer.bias is not None:
                layer.bias.data[...] = _init.draw_bias(init, fan_in, layer.bias.data.shape)
            layer.init = init
    return model


RECIPES = {
    "LeNet + SGD (a PyTorch recipe)": dict(build="lenet", flat=False, optimizer="sgd",
                                           lr=0.01, batch=64),
    "MLP + Adam (the CLI's recipe)": dict(build="mlp", flat=True, optimizer="adam", lr=1e-3,
                                          batch=128),
}


def _ours(recipe, init, seed, data, epochs):
    import nnscratch as nn

    X, y, X_test, y_test = data
    nn.seed(seed)
    model = _reinit(getattr(nn.models, recipe["build"])(), init)
    params = model.parameters()
    opt = nn.SGD(params, lr=recipe["lr"], momentum=0.9) if recipe["optimizer"] == "sgd" \
        else nn.Adam(params, lr=recipe["lr"])
    model.fit(X, y, loss=nn.CrossEntropyLoss(), optimizer=opt, epochs=epochs,
              batch_size=recipe["batch"], seed=seed, progress=False)
    return model.evaluate(X_test, y_test)["accuracy"]


def _torch(recipe, seed, data, epochs):
    import torch

    import nnscratch as nn
    from nnscratch.interop import to_torch

    X, y, X_test, y_test = data
    torch.manual_seed(seed)
    model = to_torch(getattr(nn.models, recipe["build"])())
    for module in model.modules():          # PyTorch's own initialisation
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            module.reset_parameters()
    params = model.parameters()
    opt = torch.optim.SGD(params, lr=recipe["lr"], momentum=0.9) \
        if recipe["optimizer"] == "sgd" else torch.optim.Adam(params, lr=recipe["lr"])
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(tx), generator=gen)
        for start in range(0, len(tx), recipe["batch"]):
            idx = order[start:start + recipe["batch"]]
            opt.zero_grad()
            loss_fn(model(tx[idx]), ty[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(X_test)).argmax(1).numpy()
    return float((pred == y_test).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    import nnscratch as nn

    try:
        import torch
    except ImportError:
        torch = None
    if args.threads:
        nn.set_num_threads(args.threads)
        if torch is not None:
            torch.set_num_threads(args.threads)
    print(f"# Fashion-MNIST, {args.epochs} epochs, seeds 0..{args.seeds - 1}, "
          f"{nn.get_num_threads()} threads; test accuracy", flush=True)
    for name, recipe in RECIPES.items():
        (X, y), (X_test, y_test) = nn.datasets.load_fashion_mnist(flatten=recipe["flat"])
        data = (X, y, X_test, y_test)
        columns: dict[str, list[float]] = {"init='he' (default)": [], "init='torch'": []}
        if torch is not None:
            columns["PyTorch"] = []
        print(f"\n{name}, {args.epochs} epochs", flush=True)
        for seed in range(args.seeds):
            start = time.perf_counter()
            columns["init='he' (default)"].append(_ours(recipe, "he", seed, data, args.epochs))
            columns["init='torch'"].append(_ours(recipe, "torch", seed, data, args.epochs))
            if torch is not None:
                columns["PyTorch"].append(_torch(recipe, seed, data, args.epochs))
            print(f"  seed {seed}: " + "  ".join(f"{k} {v[-1]:.4f}" for k, v in columns.items())
                  + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
        print("  mean:   " + "  ".join(f"{k} {statistics.mean(v):.4f}"
                                       for k, v in columns.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
