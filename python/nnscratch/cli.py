"""The `nnscratch` command line: train, evaluate, predict, info, bench.

    nnscratch train                       a good MLP on the best data this machine has
    nnscratch train --model cnn --epochs 10 --save cnn.npz --plot curves.png
    nnscratch evaluate cnn.npz            accuracy, per-class accuracy, confusion matrix
    nnscratch predict cnn.npz shoe.jpg    the class of an image (--resize: of any size)
    nnscratch info                        version, backend, threads, CPU features, data found
    nnscratch explain                     every number of one training step of a 2-2-2 network
    nnscratch train --lr-find             final loss per learning rate: too low, too high
    nnscratch bench --quick               speed against NumPy and PyTorch, one table

Training checkpoints after every epoch (model, optimizer state, history, arguments) to
`--checkpoint` (default: `<save>.ckpt.npz`, or `nnscratch-checkpoint.npz`), so an interrupted
run continues with `--resume` from the epoch after the last one saved (a printed epoch line
means that epoch is saved). Each epoch shuffles with its own seed (seed * 1000 + epoch) and
the checkpoint keeps the library generator (dropout masks), so a resumed run gives the
weights the uninterrupted run would have, bit for bit (same backend and thread count).
"""
import argparse
import dataclasses
import math
import os
import sys
import time

import numpy as np

from . import __version__, _random
from .datasets import DATASET_NAMES

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]
# --data: "auto", a data set of nnscratch.datasets (their aliases too: "kuzushiji-49"), or a
# folder of the user's images
DATA_NAMES = ("auto",) + DATASET_NAMES
DATA_HELP = ("data set: auto (Fashion-MNIST if found, else the bundled sample), "
             + ", ".join(DATASET_NAMES) + "; or a folder of your own images, one subfolder "
             "per class (with train/ and test/ subfolders of that kind: your own split; else "
             "20%% of each class is held out for testing); a folder named like a data set: "
             "./name")
FOLDER_TEST_SPLIT = 0.2    # --data folder without train/ and test/: held out for testing


class CLIError(Exception):
    """A bad argument or input: printed as `nnscratch: error: ...`, exit status 2."""


# --- argument parsing -------------------------------------------------------------------

def _number(kind, accept, requirement):
    """An argparse type: text -> kind(text), which must satisfy accept(value)."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value
    return parse


_positive_int = _number(int, lambda v: v >= 1, ">= 1")
_threads = _number(int, lambda v: 1 <= v <= 4096, "in [1, 4096]")
_non_negative_int = _number(int, lambda v: v >= 0, ">= 0")
_positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
_fraction = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")


def _metric_names(text):
    """--metrics macro_f1,top_3_accuracy: names `nnscratch.metrics` knows."""
    from . import metrics

    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected metric names like macro_f1,top_3_accuracy")
    for name in names:
        try:
            metrics._parse_one(name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("metrics: ", "")) from None
    return names


def _hidden(text):
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes like 256,128, got {text!r}") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got {text!r}")
    if any(s > MAX_WIDTH for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be <= {MAX_WIDTH:,}, got {text!r}")
    return sizes


MAX_WIDTH = 1 << 20      # a hidden layer wider than this is a typing slip


def build_parser():
    parser = argparse.ArgumentParser(
        prog="nnscratch",
        description="Train and use neural networks whose every kernel is written from scratch.")
    parser.add_argument("--version", action="version", version=f"nnscratch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train an MLP or a CNN on MNIST-style data",
                       description="Train a model, print a line per epoch and the test accuracy.")
    t.add_argument("--data", default="auto", metavar="NAME|FOLDER", help=DATA_HELP)
    t.add_argument("--data-path", default=None, help="folder with the data set's files (the "
                   "four IDX files; EMNIST's gzip.zip; Kuzushiji-49's four .npz)")
    t.add_argument("--download", action="store_true",
                   help="download the data set if it is not found locally")
    t.add_argument("--model", choices=MODELS, default="mlp",
                   help="mlp (default), cnn, or a residual network: resnet20, resnet32, "
                        "resnet44, resnet56 (see nnscratch.models)")
    t.add_argument("--hidden", type=_hidden, default=[256, 128],
                   help="MLP hidden layer sizes (default 256,128)")
    t.add_argument("--dropout", type=_fraction, default=0.0, help="MLP dropout after each "
                   "hidden layer (default 0)")
    t.add_argument("--epochs", type=_non_negative_int, default=None,
                   help="epochs to train (default 10; with --resume, the checkpoint's, or more "
                   "to extend a finished run)")
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="adam")
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: adam 1e-3, sgd 0.05)")
    t.add_argument("--momentum", type=_fraction, default=0.9, help="SGD momentum (default 0.9)")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="L2 weight decay (decoupled for adamw; default: adamw 0.01, else 0)")
    t.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                   help="learning-rate schedule: cosine over the epochs (default), none, or "
                        "per batch: onecycle (up to --lr over the first 15%%, then down), "
                        "warmup-cosine (linear warm-up over the first 5%%, then cosine)")
    t.add_argument("--augment", action="store_true",
                   help="augment the training images: random crops of the image padded by 2 "
                        "pixels, and left-right flips for Fashion-MNIST (not for digits and "
                        "letters -- MNIST, KMNIST, EMNIST, Kuzushiji-49 -- nor for a folder "
                        "of your own)")
    t.add_argument("--label-smoothing", type=_fraction, default=0.0,
                   help="cross-entropy label smoothing (default 0)")
    t.add_argument("--validation-split", type=_fraction, default=0.0,
                   help="hold out this fraction of the training set for validation (of each "
                   "class: the rows fit(validation_split=) holds out)")
    t.add_argument("--limit", type=_positive_int, default=None,
                   help="use only the first N training images (quick runs)")
    t.add_argument("--seed", type=_non_negative_int, default=0)
    t.add_argument("--threads", type=_threads, default=None)
    t.add_argument("--backend", choices=["cython", "numpy"], default="cython")
    t.add_argument("--save", default=None,
                   help="write the trained model here (.npz; .safetensors by the suffix)")
    t.add_argument("--checkpoint", default=None,
                   help="checkpoint file, kept after the run (default: one in the user cache, "
                   "~/.cache/nnscratch/checkpoints, removed when the run finishes)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint after the last finished epoch (or from "
                   "the --save file of a finished run, to train more --epochs)")
    t.add_argument("--lr-find", action="store_true",
                   help="instead of training: one epoch per learning rate over a range, and "
                   "a table of the final losses (too low = slow, too high = unstable)")
    t.add_argument("--plot-weights", default=None, help="save the first layer's weights "
                   "as 28x28 images to this PNG (MLP; needs matplotlib)")
    t.add_argument("--plot", default=None, help="save learning curves to this PNG "
                   "(needs matplotlib)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--metrics", type=_metric_names, default=None,
                   help="more figures per epoch and for the test set, e.g. "
                        "macro_f1,top_3_accuracy (nnscratch.metrics)")
    t.add_argument("--logdir", default=None,
                   help="write TensorBoard event files here (per-epoch loss, accuracy and lr, "
                        "weight and gradient histograms, the first layer's filters); view with "
                        "`tensorboard --logdir` (needs \"nnscratch[tensorboard]\")")
    t.add_argument("--stats", action="store_true",
                   help="after each epoch, a table of per-layer statistics on the first "
                        f"{STATS_PROBE} training images: activations, dead ReLUs, weight and "
                        "gradient norms, update ratios (nnscratch.inspect)")

    e = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix")
    e.add_argument("model", help="a model saved by `nnscratch train --save` or model.save()")
    e.add_argument("--data", default="auto", metavar="NAME|FOLDER",
                   help=DATA_HELP.replace("held out for testing", "held out for testing, "
                                          "as train holds it out: those are evaluated"))
    e.add_argument("--data-path", default=None)
    e.add_argument("--plot", default=None, help="save the confusion matrix to this PNG")
    e.add_argument("--backend", choices=["cython", "numpy"], default="cython")

    p = sub.add_parser(
        "predict", help="classify images (PNG, JPEG, BMP, GIF, WebP) or an IDX images file",
        description="Print the class of each image, or write them all to a CSV file. Images "
        "are read with Pillow, turned grey, inverted when their border is light (the models "
        "know light objects on black) and, with --resize, fitted into the model's input "
        "size keeping their aspect ratio; see nnscratch.images for the rules.")
    p.add_argument("model")
    p.add_argument("images", nargs="+", help="image files, or IDX images files (taken as "
                   "they are: no inversion, no resizing)")
    p.add_argument("--resize", action="store_true",
                   help="resize images of another size to the model's input size (keeping "
                   "the aspect ratio, padded with the image's background); without it such "
                   "an image is an error")
    inversion = p.add_mutually_exclusive_group()
    inversion.add_argument("--invert", dest="invert", action="store_const", const=True,
                           default="auto", help="always invert image files (default: invert "
                           "those whose border is light, mean above half the range)")
    inversion.add_argument("--no-invert", dest="invert", action="store_const", const=False,
                           help="never invert image files")
    p.add_argument("--classes", choices=DATASET_NAMES, default=None, metavar="DATA",
                   help="print the class names of this data set (default: those `nnscratch "
                   "train --save` kept in the model file, else Fashion-MNIST's for a "
                   "10-class model, else numbers)")
    p.add_argument("--top", type=_positive_int, default=3, help="how many classes to show")
    p.add_argument("--out", default=None, help="write every result to this CSV file "
                   "(atomically) instead of printing them")

    sub.add_parser("info", help="version, backend, threads, CPU features, data found")

    x = sub.add_parser("explain", help="print every number of one training step of a tiny "
                       "2-2-2 network, layer by layer, to check a hand computation")
    x.add_argument("--activation", choices=["relu", "sigmoid", "tanh"], default="relu")
    x.add_argument("--lr", type=_positive_float, default=0.1)

    b = sub.add_parser("bench", help="speed against NumPy and PyTorch, in one table")
    b.add_argument("--quick", action="store_true", help="about a minute")
    b.add_argument("--threads", type=_threads, default=None)
    b.add_argument("--only", choices=["gemm", "mlp", "cnn", "resnet", "memory", "inference", "all"],
                   default="all")
    return parser


# --- data and models --------------------------------------------------------------------

def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _writable_file(path, option):
    """CLIError, before any work, when `path` cannot be written: a folder, a missing folder
    or one we may not write in, a file name too long."""
    if path is None:
        return
    if os.path.isdir(path):
        raise CLIError(f"{option} {path}: is a folder, not a file name")
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise CLIError(f"{option} {path}: no folder {folder}")
    if not os.access(folder, os.W_OK):
        raise CLIError(f"{option} {path}: cannot write in {folder}")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    if len(os.fsencode(os.path.basename(path))) > limit:
        raise CLIError(f"{option} {path}: the file name is longer than {limit} bytes")


@dataclasses.dataclass(frozen=True)
class _Folder:
    """--data FOLDER, described as a `datasets.DataSource` is (name, description)."""

    path: str
    split: bool          # True: train/ and test/ subfolders; False: a test part held out
    name: str = "folder"

    @property
    def description(self):
        how = "its train/ and test/ subfolders" if self.split else \
            f"{FOLDER_TEST_SPLIT:.0%} of each class held out for testing"
        return f"your images in {self.path} ({how})"


def _data_choice(value):
    """--data: a data set's name as `nnscratch.datasets` spells it ("auto" too), or a
    `_Folder`; CLIError when it is neither."""
    from . import datasets

    if value.strip().lower() == "auto":
        return "auto"
    try:
        return datasets._canonical_name(value)      # (the names' aliases too)
    except ValueError:
        pass
    if os.path.isdir(value):
        folders = {entry.name for entry in os.scandir(value)
                   if entry.is_dir() and not entry.name.startswith(".")}
        return _Folder(value, folders == {"train", "test"})
    if os.path.exists(value):
        raise CLIError(f"--data {value}: a file; give a data set's name or a folder of images "
                       f"(one subfolder per class)")
    raise CLIError(f"--data {value}: neither a data set ({', '.join(DATA_NAMES)}) nor a "
                   f"folder")


def _is_data(value):
    """True when --data `value` names a data set or a folder (`_data_choice` takes it)."""
    try:
        _data_choice(value)
        return True
    except CLIError:
        return False


def _load_folder(folder, flatten, for_training):
    """(class names, (X_train, y_train), (X_test, y_test)) of --data FOLDER: 28x28 grey
    images, floats in [0, 1] (`datasets.load_image_folder`), read by `nnscratch predict`'s
    rules -- inverted when their border is light -- so that a model trained on them sees
    predict's images alike. Without train/ and test/ subfolders the test part is
    FOLDER_TEST_SPLIT of each class, drawn with seed 0: train and evaluate hold out the
    same images."""
    from . import data, datasets

    def read(root):
        try:
            return datasets.load_image_folder(root, flatten=flatten, invert="auto")
        except ImportError as exc:
            raise CLIError(f"--data {folder.path}: {exc}") from None
        except (ValueError, OSError) as exc:
            raise CLIError(f"--data {folder.path}: {_first_line(exc)}") from None

    if folder.split:
        X, y, classes = read(os.path.join(folder.path, "train"))
        X_test, y_test, test_classes = read(os.path.join(folder.path, "test"))
        if test_classes != classes:
            raise CLIError(f"--data {folder.path}: train/ and test/ must hold the same class "
                           f"folders, got {classes} and {test_classes}")
        return classes, (X, y), (X_test, y_test)
    X, y, classes = read(folder.path)
    try:
        train, test = data.split_indices(y, FOLDER_TEST_SPLIT, seed=0)
    except ValueError:
        raise CLIError(f"--data {folder.path}: {len(y)} images are too few to hold out "
                       f"{FOLDER_TEST_SPLIT:.0%} for testing (give it train/ and test/ "
                       f"subfolders)") from None
    if for_training and len(np.unique(y[train])) < len(classes):
        raise CLIError(f"--data {folder.path}: a class has too few images to keep one for "
                       f"training after {FOLDER_TEST_SPLIT:.0%} of each is held out for "
                       f"testing")
    return classes, (X[train], y[train]), (X[test], y[test])


def _load_data(name, path, download, flatten, progress=True, for_training=True):
    """(source, class names, (X_train, y_train), (X_test, y_test)): the data sets' images
    as uint8 (fit, evaluate and predict take a pixel k as k / 255, a batch at a time: a
    quarter of the memory of floats), a folder's as floats in [0, 1]."""
    from . import datasets

    name = _data_choice(name)
    if isinstance(name, _Folder):
        if path is not None:
            raise CLIError("--data-path is for the named data sets; --data takes the folder "
                           "of your images itself")
        classes, train, test = _load_folder(name, flatten, for_training)
        return name, classes, train, test
    if name == "sample":
        source = datasets.find_dataset("sample")
    elif name == "auto" and path is None:
        try:
            source = datasets.find_dataset("fashion-mnist")
        except FileNotFoundError:
            source = datasets.find_dataset("sample")
    else:
        wanted = "fashion-mnist" if name == "auto" else name
        try:
            source = datasets.find_dataset(wanted, path, download=download, progress=progress)
        except FileNotFoundError as exc:
            hint = "" if download else " (add --download to fetch it, or use --data sample)"
            raise CLIError(f"{exc}{hint}") from None
        except OSError as exc:      # no network, a mirror down, a full disk
            raise CLIError(f"{_first_line(exc)} (no network? --data sample trains on the "
                           f"images shipped with nnscratch)") from None
    try:
        train, test = datasets.load_dataset(source, flatten=flatten, dtype=np.uint8)
    except ValueError as exc:   # a truncated or foreign IDX file
        raise CLIError(f"cannot read {source.description}: {exc}") from None
    return source, datasets.class_names(source), train, test


MODELS = ["mlp", "cnn", "resnet20", "resnet32", "resnet44", "resnet56"]


def build_model(kind, hidden=(256, 128), dropout=0.0, image_shape=(1, 28, 28),
                num_classes=10):
    """The model `nnscratch train --model kind` trains (see ``nnscratch.models``), for
    images of `image_shape` (C, H, W) and `num_classes` classes, both taken from the data:
    the MLP on flat (N, C*H*W) images, the CNN (dropout 0.25 unless given) or a residual
    network ``resnet<depth>`` on (N, C, H, W)."""
    from . import models

    channels, side = image_shape[0], image_shape[1]
    if kind == "mlp":
        return models.mlp(in_features=math.prod(image_shape), hidden=hidden,
                          num_classes=num_classes, dropout=dropout)
    if kind == "cnn":
        return models.cnn(in_channels=channels, num_classes=num_classes, image_size=side,
                          dropout=dropout or 0.25)
    if kind.startswith("resnet") and kind in MODELS:
        return models.resnet(depth=int(kind[len("resnet"):]), in_channels=channels,
                             num_classes=num_classes)
    raise CLIError(f"unknown model {kind!r}")


def _data_shape(X, y, y_test):
    """(image shape (C, H, W), class count) of the loaded data, flat or not."""
    shape = X.shape[1:]
    if len(shape) == 1:                         # flat square grey images
        side = math.isqrt(shape[0])
        shape = (1, side, side)
    return tuple(int(v) for v in shape), int(max(y.max(), y_test.max())) + 1


def _make_optimizer(args, params, **overrides):
    """The optimizer the arguments ask for; `overrides` replace some of them (e.g. lr=)."""
    import nnscratch as nn

    kind, lr, momentum, weight_decay = (
        overrides.get(key, getattr(args, key))
        for key in ("optimizer", "lr", "momentum", "weight_decay"))
    if kind == "sgd":
        return nn.SGD(params, lr=0.05 if lr is None else lr, momentum=momentum,
                      weight_decay=weight_decay or 0.0, nesterov=momentum > 0)
    lr = 1e-3 if lr is None else lr
    if kind == "adamw":
        return nn.AdamW(params, lr=lr,
                        weight_decay=1e-2 if weight_decay is None else weight_decay)
    return nn.Adam(params, lr=lr, weight_decay=weight_decay or 0.0)


SCHEDULES = ["cosine", "none", "onecycle", "warmup-cosine"]


def _schedule_lr(base_lr, epoch, epochs, schedule):
    """The learning rate of epoch `epoch` (0-based): constant, or cosine from base to 0
    (the per-batch schedules set it themselves: `_batch_schedule`)."""
    if schedule == "cosine" and epochs > 1:
        return 0.5 * base_lr * (1 + math.cos(math.pi * epoch / epochs))
    return base_lr


def _batch_schedule(kind, optimizer, base_lr, epochs, steps_per_epoch, done):
    """The per-batch schedule of `--schedule kind` (a fit callback), or None for the
    per-epoch ones; stepped past the `done` epochs of a resumed run."""
    import nnscratch as nn

    total = epochs * steps_per_epoch
    optimizer.lr = base_lr      # (a resumed optimizer holds the rate where the run stopped)
    schedule: nn.LRScheduler
    if kind == "onecycle":
        schedule = nn.OneCycleLR(optimizer, max_lr=base_lr, total_steps=total, pct_start=0.15)
    elif kind == "warmup-cosine":
        schedule = nn.WarmupCosineLR(optimizer, warmup_steps=max(1, total // 20),
                                     total_steps=max(2, total))
    else:
        return None
    for _ in range(done * steps_per_epoch):      # (closed forms: cheap)
        schedule.step()
    return schedule


def _augmentation(data, image_shape, flat):
    """`--augment`: random crops of the image zero-padded by 2 pixels; and left-right flips
    for Fashion-MNIST (and its sample) only: not for digits and letters (MNIST, KMNIST,
    EMNIST, Kuzushiji-49: a flipped 2 is no digit), nor for a folder of the user's own
    images, whose content nnscratch cannot know."""
    from . import transforms

    shape = image_shape if flat else None
    steps: list = [transforms.RandomCrop(image_shape[1:], padding=2, image_shape=shape)]
    if data in ("fashion-mnist", "sample"):
        steps.append(transforms.RandomHorizontalFlip(image_shape=shape))
    return transforms.Compose(steps)


# --- train --------------------------------------------------------------------------------

STATS_PROBE = 256      # train --stats: the table is computed on this many first training images


def cmd_train(args, out=None):
    out = sys.stdout if out is None else out   # at call time, so that redirects work
    import nnscratch as nn
    from . import checkpoint
    from .inspect import layer_stats

    nn.set_backend(args.backend)
    if args.threads is not None:
        nn.set_num_threads(args.threads)
    if args.weight_decay is not None and not (args.weight_decay >= 0
                                              and math.isfinite(args.weight_decay)):
        raise CLIError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    for option in ("save", "checkpoint", "plot", "plot_weights"):   # before any work
        _writable_file(getattr(args, option), "--" + option.replace("_", "-"))
    ckpt_path = args.checkpoint or _default_checkpoint(args.save)
    as_safetensors = bool(args.save) and args.save.lower().endswith(".safetensors")
    if as_safetensors:
        try:
            import safetensors  # noqa: F401   (checked before any work, not after it)
        except ImportError:
            raise CLIError('--save: writing .safetensors needs the safetensors package: '
                           'pip install "nnscratch[safetensors]"') from None
    if args.plot or args.plot_weights:
        from .plotting import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as exc:
            raise CLIError(str(exc)) from None
    if args.logdir:
        from .tensorboard import require_tensorboard

        try:
            require_tensorboard()            # (before any work, not after it)
        except ImportError as exc:
            raise CLIError(str(exc)) from None

    resumed = None
    if args.resume:
        # read before the data: the checkpoint's --model decides flat or image input,
        # its --data, --limit and --validation-split which images are trained on
        resumed = _read_checkpoint(args, ckpt_path, out)
    if args.epochs is None:
        args.epochs = 10
    if args.plot_weights and args.model != "mlp":
        raise CLIError("--plot-weights shows an MLP's first Linear layer; use --model mlp")
    _check_memory(args)

    progress = not args.no_progress
    source, classes, (X, y), (X_test, y_test) = _load_data(
        args.data, args.data_path, args.download, flatten=args.model == "mlp",
        progress=progress)
    if args.limit is not None:
        X, y = X[:args.limit], y[:args.limit]
    # --validation-split: fit(validation_split=) holds the rows out, the same ones at every
    # epoch's call (a function of the labels alone: stratified, every class its share)
    train_rows = np.arange(len(X))
    n_val = 0
    if args.validation_split > 0:
        try:
            train_rows, held_out = nn.training.validation_split_indices(
                y, args.validation_split)
        except ValueError:      # (a part of no rows)
            part = "validate" if len(X) * args.validation_split < 0.5 else "train"
            raise CLIError(f"--validation-split {args.validation_split} of {len(X)} training "
                           f"images leaves none to {part} on") from None
        n_val = len(held_out)
    print(f"data: {source.description}", file=out)
    print(f"      {len(train_rows)} training images, {len(X_test)} test images"
          + (f", {n_val} held out for validation" if n_val else ""), file=out)
    if args.lr_find:
        X_train, y_train = (X, y) if not n_val else (X[train_rows], y[train_rows])
        return _lr_find(args, X_train, y_train, out, _data_shape(X, y, y_test))

    if resumed is not None:
        model, optimizer, start, history, base_lr, where = resumed
        print(f"resumed from {where}: {start} of {args.epochs} epochs done", file=out)
    else:
        nn.seed(args.seed)
        try:
            model = build_model(args.model, args.hidden, args.dropout,
                                *_data_shape(X, y, y_test))
        except MemoryError:
            raise CLIError(f"not enough memory for --hidden {args.hidden}") from None
        optimizer = _make_optimizer(args, model.parameters())
        start, history, base_lr = 0, {}, optimizer.lr
    print(f"model: {args.model}, {sum(p.data.size for p in model.parameters()):,} parameters;"
          f" {optimizer!r}; batch {args.batch_size}; backend {nn.get_backend()}, "
          f"{_threads_said(args)}", file=out)

    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    epoch_times = list(history.get("seconds", []))
    steps_per_epoch = -(-len(train_rows) // args.batch_size)
    schedule = _batch_schedule(args.schedule, optimizer, base_lr, args.epochs,
                               steps_per_epoch, start)
    board = None
    if args.logdir:
        from .tensorboard import TensorBoard

        # (before the schedule among the callbacks: it reads the rate each step used)
        board = TensorBoard(args.logdir, optimizer=optimizer)
    callbacks = [cb for cb in (board, schedule) if cb is not None] or None
    transform = None
    if args.augment:
        transform = _augmentation(source.name, _data_shape(X, y, y_test)[0], X.ndim == 2)
        print("augment: " + ", ".join(map(repr, transform.transforms)), file=out)

    def state(epoch):
        return {"epoch": epoch, "history": history, "base_lr": base_lr,
                "args": _args_record(args), "data": source.description,
                "classes": list(classes), "rng": _random.get_state()}

    for epoch in range(start, args.epochs):
        if schedule is None:
            optimizer.lr = _schedule_lr(base_lr, epoch, args.epochs, args.schedule)
        tick = time.perf_counter()
        try:
            h = model.fit(X, y, loss=loss_fn, optimizer=optimizer, epochs=epoch + 1,
                          initial_epoch=epoch, batch_size=args.batch_size,
                          validation_split=args.validation_split,
                          shuffle=True, seed=args.seed * 1000 + epoch, transform=transform,
                          callbacks=callbacks, metrics=args.metrics,
                          progress=f"Epoch {{epoch}}/{args.epochs}" if progress else False)
        except FloatingPointError as exc:   # the loss became NaN: a learning rate too high
            raise CLIError(f"training diverged in epoch {epoch + 1}/{args.epochs} "
                           f"(--lr {optimizer.lr:g}): {exc}") from None
        seconds = time.perf_counter() - tick
        for key, values in h.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        epoch_times.append(seconds)
        history["seconds"] = epoch_times
        line = (f"epoch {epoch + 1:>3}/{args.epochs}  loss {history['loss'][-1]:.4f}  "
                f"accuracy {history['accuracy'][-1]:.4f}")
        if "val_accuracy" in history:
            line += (f"  val_loss {history['val_loss'][-1]:.4f}  "
                     f"val_accuracy {history['val_accuracy'][-1]:.4f}")
        line += f"  lr {optimizer.lr:.2e}  {seconds:.2f} s"
        for name in args.metrics or ():
            line += f"  {name} {history[name][-1]:.4f}"
            if "val_" + name in history:
                line += f"  val_{name} {history['val_' + name][-1]:.4f}"
        os.makedirs(os.path.dirname(os.path.abspath(ckpt_path)), exist_ok=True)
        checkpoint.save_checkpoint(ckpt_path, model, optimizer, meta=state(epoch + 1))
        print(line, file=out, flush=True)   # after the save: a printed epoch is a saved one
        if args.stats:      # (changes nothing: the same weights with and without it)
            probe = train_rows[:STATS_PROBE]
            print(layer_stats(model, X[probe], y[probe], loss_fn, lr=optimizer.lr), file=out,
                  flush=True)

    if board is not None:
        board.close()
        print(f"TensorBoard: {board.path} (view: tensorboard --logdir {args.logdir})", file=out)
    result = model.evaluate(X_test, y_test, loss=loss_fn, metrics=args.metrics)
    per_epoch = np.median(epoch_times) if epoch_times else float("nan")
    print(f"test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}  "
          f"({per_epoch:.2f} s per epoch, median of {len(epoch_times)})", file=out)
    if args.metrics:
        print("test " + "  ".join(f"{name} {result[name]:.4f}" for name in args.metrics),
              file=out)
    if as_safetensors:
        # the Hugging Face format: the weights and the architecture, no optimizer state
        model.save(args.save)
        print(f"saved the model to {args.save} (safetensors: weights and architecture; "
              f"--resume needs a .npz)", file=out)
    elif args.save:
        # the model, and what --resume needs to train it more epochs (nnscratch.load reads
        # it as a model)
        checkpoint.save_checkpoint(args.save, model, optimizer, meta=state(args.epochs))
        print(f"saved the model to {args.save}", file=out)
    if args.checkpoint is None and os.path.exists(ckpt_path):
        os.unlink(ckpt_path)        # the run is done: its checkpoint in the cache goes
    if args.plot:
        from .plotting import plot_history

        plot_history(history, args.plot)
        print(f"learning curves: {args.plot}", file=out)
    if args.plot_weights:
        from .plotting import plot_first_layer

        plot_first_layer(model[0].weight.data, args.plot_weights)
        print(f"first layer weights: {args.plot_weights}", file=out)
    return result


def _default_checkpoint(save):
    """Where a run keeps its checkpoint unless --checkpoint says: in the user cache, named
    after the --save file (or the current folder), so that the same command with --resume
    finds it."""
    import hashlib

    from .datasets import default_cache_dir

    anchor = os.path.abspath(save) if save else os.path.abspath(os.getcwd())
    key = hashlib.sha256(anchor.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    name = os.path.splitext(os.path.basename(save))[0][:40] if save else "run"
    return str(default_cache_dir() / "checkpoints" / f"{name}-{key}.ckpt.npz")


# what a resumed run takes from its checkpoint (a different value prints a note)
RESUME_KEYS = ("model", "hidden", "dropout", "optimizer", "lr", "momentum", "weight_decay",
               "batch_size", "seed", "schedule", "data", "data_path", "limit",
               "validation_split", "augment", "label_smoothing")
# settings added after checkpoints were first written: an older checkpoint ran without them
RESUME_DEFAULTS = {"augment": False, "label_smoothing": 0.0}


def _read_checkpoint(args, ckpt_path, out):
    """`--resume`: (model, optimizer, epochs done, history, base lr, where) from the
    checkpoint, or from the --save file of a finished run; the run's settings are taken
    from it (a note for each that differs), and --epochs may extend it."""
    from . import checkpoint

    where = ckpt_path
    if not os.path.exists(ckpt_path):
        if args.save and os.path.exists(args.save):
            where = args.save
        else:
            raise CLIError(f"--resume: no checkpoint at {ckpt_path}"
                           + (f" and no {args.save}" if args.save else ""))
    shown = where
    try:
        model, opt_state, meta = checkpoint.load_checkpoint(where)
        done, history, base_lr, saved = _check_meta(meta)
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"--resume: {shown} is not a usable nnscratch train checkpoint"
                       f" ({_first_line(exc)})") from None
    for key in RESUME_KEYS:
        if key in saved and args.__dict__.get(key) != saved[key]:
            if not (key == "lr" and args.lr is None):
                print(f"note: resuming with the checkpoint's --{key.replace('_', '-')} "
                      f"{saved[key]} (not {args.__dict__.get(key)})", file=out)
            setattr(args, key, saved[key])
    if args.epochs is None or args.epochs < done:
        if args.epochs is not None:
            print(f"note: resuming with the checkpoint's --epochs {saved['epochs']} (not "
                  f"{args.epochs}: {done} are done)", file=out)
        args.epochs = saved["epochs"]
    elif args.epochs != saved["epochs"]:
        print(f"note: training {args.epochs} epochs, not the checkpoint's {saved['epochs']}"
              + (" (the schedule is stretched over the new total)"
                 if args.schedule != "none" else ""), file=out)
    optimizer = _make_optimizer(args, model.parameters())
    try:
        checkpoint.set_optimizer_state(optimizer, opt_state)
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"--resume: {shown}: {_first_line(exc)}") from None
    if "rng" in meta:   # the library generator (dropout masks) where the run left it
        try:
            _random.set_state(meta["rng"])
        except Exception as exc:       # (a hand-edited state: any kind of error)
            raise CLIError(f"--resume: {shown}: bad generator state ({_first_line(exc)})"
                           ) from None
    return model, optimizer, done, history, base_lr, shown


def _check_meta(meta):
    """(epochs done, history, base lr, the run's settings) of a checkpoint's record, every
    value checked as a command-line value would be; ValueError naming the bad entry."""
    def fail(what, value):
        raise ValueError(f"its record has a bad {what}: {value!r}")

    saved = meta.get("args")
    if not isinstance(saved, dict):
        fail("'args'", saved)
    saved = {**RESUME_DEFAULTS, **saved}
    checks = {
        "model": lambda v: v in MODELS,
        "hidden": lambda v: isinstance(v, list) and v and all(
            type(s) is int and 1 <= s <= MAX_WIDTH for s in v),
        "dropout": lambda v: _real(v, 0.0, 1.0, high_open=True),
        "epochs": lambda v: type(v) is int and 0 <= v <= 10**6,
        "batch_size": lambda v: type(v) is int and v >= 1,
        "optimizer": lambda v: v in ("sgd", "adam", "adamw"),
        "lr": lambda v: v is None or _real(v, 0.0, low_open=True),
        "momentum": lambda v: _real(v, 0.0, 1.0, high_open=True),
        "weight_decay": lambda v: v is None or _real(v, 0.0),
        "schedule": lambda v: v in SCHEDULES,
        "seed": lambda v: type(v) is int and 0 <= v < 2 ** 63,
        "data": lambda v: isinstance(v, str) and _is_data(v),  # (a name or a folder)
        "data_path": lambda v: v is None or isinstance(v, str),
        "limit": lambda v: v is None or (type(v) is int and v >= 1),
        "validation_split": lambda v: _real(v, 0.0, 1.0, high_open=True),
        "augment": lambda v: type(v) is bool,
        "label_smoothing": lambda v: _real(v, 0.0, 1.0),
    }
    for key, ok in checks.items():
        if key not in saved or not ok(saved[key]):
            fail(f"--{key.replace('_', '-')}", saved.get(key))
    done = meta.get("epoch")
    if type(done) is not int or not 0 <= done <= saved["epochs"]:
        fail("epoch count", done)
    base_lr = meta.get("base_lr")
    if not _real(base_lr, 0.0, low_open=True):
        fail("base learning rate", base_lr)
    history = meta.get("history", {})
    if not isinstance(history, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and len(v) <= done + 10**6
            and all(_real(x) for x in v) for k, v in history.items()):
        fail("history", history)
    return done, {k: list(v) for k, v in history.items()}, float(base_lr), saved


def _real(value, low=-math.inf, high=math.inf, *, low_open=False, high_open=False):
    from . import _checks

    try:
        _checks.real("value", value, low, high, low_open=low_open, high_open=high_open)
        return True
    except ValueError:
        return False


def _check_memory(args):
    """CLIError when the model asked for cannot fit in memory (before anything is built)."""
    widths = [784] + list(args.hidden) + [10] if args.model == "mlp" else []
    params = sum(a * b + b for a, b in zip(widths, widths[1:])) if widths else 421_738
    largest = max((a * b for a, b in zip(widths, widths[1:])), default=0)
    # weights, gradients, two arrays of optimizer state (float32), and the float64 draw of
    # the largest layer's initial weights
    needed = 16 * params + 8 * largest
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if needed > available:
        raise CLIError(f"--hidden {','.join(map(str, args.hidden))}: the model needs about "
                       f"{needed / 2**30:.1f} GiB, this machine has {available / 2**30:.1f}")


def _lr_find(args, X, y, out, data_shape):
    """`train --lr-find`: one epoch per learning rate, a table of the final losses."""
    import nnscratch as nn
    from .explain import DEFAULT_LRS, lr_find

    def make_optimizer(params, lr):
        return _make_optimizer(args, params, lr=lr)
    make_optimizer.__name__ = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[args.optimizer]

    try:
        return lr_find(lambda: build_model(args.model, args.hidden, args.dropout, *data_shape),
                       X, y,
                       lrs=DEFAULT_LRS[args.optimizer], batch_size=args.batch_size,
                       seed=args.seed, optimizer=make_optimizer,
                       print_fn=lambda text: print(text, file=out), plot=args.plot)
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    finally:
        nn.seed(args.seed)


def cmd_explain(args, out=None):
    from .explain import explain_demo

    out = out if out is not None else sys.stdout
    return explain_demo(print_fn=lambda text: print(text, file=out),
                        activation=args.activation, lr=args.lr)


def _args_record(args):
    keys = ("model", "hidden", "dropout", "epochs", "batch_size", "optimizer", "lr", "momentum",
            "weight_decay", "schedule", "seed", "data", "data_path", "limit", "validation_split",
            "augment", "label_smoothing")
    return {k: getattr(args, k) for k in keys}


# --- evaluate, predict --------------------------------------------------------------------

def _head(path, size=12):
    """The first bytes of a file (enough to tell an image from a zip), or a CLIError."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None


def _load_model(path):
    import nnscratch as nn
    from .images import sniff_format

    if not os.path.exists(path):
        raise CLIError(f"no model file at {path}")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a folder, not an nnscratch model file")
    head = _head(path)
    image_format = sniff_format(head)
    if image_format is not None:
        raise CLIError(f"{path} is a {image_format} image, not an nnscratch model file (a "
                       f"model is written by nnscratch train --save or model.save)")
    if not head.startswith(b"PK") and head[8:9] != b"{":
        raise CLIError(f"{path} is not an nnscratch model file (neither an .npz zip archive "
                       f"nor safetensors: a model is written by nnscratch train --save or "
                       f"model.save)")
    try:
        model = nn.load(path)
    except (ValueError, OSError) as exc:
        raise CLIError(f"cannot load {path}: {exc}") from None
    if not model.layers:
        raise CLIError(f"{path}: the model has no layers")
    return model


def _outputs(model, X, path, proba=False):
    """The model's outputs (or probabilities) for the images, one row of 10 (or more) each."""
    side = int(math.isqrt(int(np.prod(X.shape[1:])))) if X.ndim > 1 else 0
    try:
        result = model.predict_proba(X) if proba else model.predict(X)
    except ValueError as exc:    # a model made for other inputs
        raise CLIError(f"{path} does not take {side}x{side} images: {exc}") from None
    if result.ndim != 2 or result.shape[1] < 2:
        raise CLIError(f"{path} is not a classifier: it gives outputs of shape "
                       f"{result.shape[1:]} per image")
    return result


def _model_wants_images(model):
    import nnscratch as nn

    return not isinstance(model[0], (nn.Linear,))


def cmd_evaluate(args, out=None):
    out = sys.stdout if out is None else out
    import nnscratch as nn
    from . import metrics

    nn.set_backend(args.backend)
    if args.plot:
        from .plotting import require_matplotlib

        try:
            require_matplotlib()     # before the work, not after it
        except ImportError as exc:
            raise CLIError(str(exc)) from None
    model = _load_model(args.model)
    source, classes, _, (X_test, y_test) = _load_data(
        args.data, args.data_path, False, flatten=not _model_wants_images(model),
        for_training=False)
    print(f"data: {source.description} ({len(X_test)} test images)", file=out)
    scores = _outputs(model, X_test, args.model)
    if scores.shape[1] != len(classes):
        raise CLIError(f"{args.model} gives {scores.shape[1]} class scores, {source.name} has "
                       f"{len(classes)} classes")
    pred = scores.argmax(axis=1)
    matrix = metrics.confusion_matrix(y_test, pred, len(classes))   # row: true, column: pred
    accuracy = float(np.trace(matrix) / max(1, matrix.sum()))
    print(f"test accuracy {accuracy:.4f}", file=out)
    print("per-class accuracy:", file=out)
    for k, name in enumerate(classes):
        total = matrix[k].sum()
        print(f"  {k} {name:<12} {matrix[k, k] / total if total else float('nan'):.4f}"
              f"  ({matrix[k, k]}/{total})", file=out)
    # (0.0 where a class is never predicted, or absent: scikit-learn's default)
    precision, recall, f1 = metrics.precision_recall_f1(y_test, pred, num_classes=len(classes))
    macro = metrics.precision_recall_f1(y_test, pred, "macro", num_classes=len(classes))
    print("per-class precision, recall, F1:", file=out)
    for k, name in enumerate(classes):
        print(f"  {k} {name:<12} {precision[k]:.4f}  {recall[k]:.4f}  {f1[k]:.4f}", file=out)
    print("macro precision {:.4f}  recall {:.4f}  F1 {:.4f}".format(*macro), file=out)
    print("confusion matrix (row: true class, column: predicted):", file=out)
    print("      " + " ".join(f"{j:>5}" for j in range(len(classes))), file=out)
    for k in range(len(classes)):
        print(f"  {k:>2}  " + " ".join(f"{v:>5}" for v in matrix[k]), file=out)
    if args.plot:
        from .plotting import plot_confusion_matrix

        plot_confusion_matrix(matrix, args.plot, classes)
        print(f"confusion matrix plot: {args.plot}", file=out)
    return {"accuracy": accuracy, "confusion_matrix": matrix, "precision": precision,
            "recall": recall, "f1": f1, "macro_precision": macro[0], "macro_recall": macro[1],
            "macro_f1": macro[2]}


def _input_side(model, path):
    """The side of the square grey images the model takes: sqrt(in_features) of a first
    Linear layer; else the first size from 28 on (then 1 up) that the layers accept."""
    import nnscratch as nn

    first = model[0]
    if isinstance(first, nn.Linear):
        side = math.isqrt(first.in_features)
        if side * side != first.in_features:
            raise CLIError(f"{path} takes {first.in_features} numbers per sample, not a "
                           f"square grey image")
        return side
    channels = getattr(first, "in_channels", 1)
    if channels != 1:
        raise CLIError(f"{path} takes images of {channels} channels; predict reads grey ones")
    for side in (28, *range(1, 1025)):
        try:
            model.output_shape((1, side, side))
            return side
        except Exception:      # (a layer that cannot take this size, or has no shapes)
            continue
    return 28


def _read_images(paths, side, args, notes):
    """(images float32 (N, side, side) in [0, 1], [(file, index in an IDX file or None)]).
    `notes` gets a line for each image resized or inverted."""
    from . import datasets, images as image_files

    arrays: list = []
    names: list = []          # (file, index in an IDX file or None) per image
    for path in paths:
        if not os.path.exists(path):
            raise CLIError(f"no such file: {path}")
        if not os.path.isfile(path):
            raise CLIError(f"{path}: not a file")
        head = _head(path)
        if head[:2] == b"\x1f\x8b" or head[:2] == b"\x00\x00":     # gzip, or IDX's magic
            arrays.append(_read_idx_images(datasets, path, side))
            names.extend((path, i) for i in range(len(arrays[-1])))
            continue
        try:
            image, info = image_files.read_image(path, (side, side), resize=args.resize,
                                                 invert=args.invert)
        except ImportError as exc:
            what = "" if image_files.sniff_format(head) else "not an IDX file, and "
            raise CLIError(f"{path}: {what}{exc}") from None
        except image_files.NotAnImageError:
            raise CLIError(f"{path}: neither an image ({image_files.FORMAT_NAMES}) nor an "
                           f"IDX file") from None
        except image_files.ImageSizeError as exc:
            w, h = exc.size
            raise CLIError(f"{path}: the model takes {side}x{side} images, this one is "
                           f"{w}x{h} (--resize fits it in, keeping its aspect ratio)") from None
        except ValueError as exc:
            raise CLIError(_first_line(exc)) from None
        notes.extend(_image_notes(info, args.invert))
        arrays.append(image[None])
        names.append((path, None))
    return np.concatenate(arrays), names


def _read_idx_images(datasets, path, side):
    try:
        arr = datasets.read_idx(path)
    except ValueError as exc:
        raise CLIError(f"{path}: neither an image nor an IDX file ({exc})") from None
    if arr.ndim != 3 or arr.shape[1:] != (side, side):
        raise CLIError(f"{path}: expected IDX images of shape (N, {side}, {side}), "
                       f"got {arr.shape}")
    if len(arr) == 0:
        raise CLIError(f"{path}: the IDX file holds no images")
    return arr.astype(np.float32) / np.float32(255)


def _image_notes(info, invert):
    notes: list = []
    if info.resized:
        (w, h), (fw, fh) = info.original_size, info.fitted_size
        how = (f" (aspect ratio kept: scaled to {fw}x{fh}, padded with the background)"
               if (fw, fh) != info.size else "")
        notes.append(f"{info.path}: resized {w}x{h} -> {info.size[0]}x{info.size[1]}{how}")
    if info.inverted and invert == "auto":
        notes.append(f"{info.path}: light background (border mean {info.border_mean:.2f} > "
                     f"0.5): inverted to a light object on black, as the model was trained "
                     f"on (--no-invert keeps it as it is)")
    elif info.inverted:
        notes.append(f"{info.path}: inverted (--invert)")
    elif invert is False and info.border_mean > 0.5:
        notes.append(f"{info.path}: light background (border mean {info.border_mean:.2f}), "
                     f"not inverted (--no-invert)")
    return notes


def _class_names(choice, count, saved=None):
    """The names of `count` classes: those of data set `choice` (--classes), else `saved`
    (kept in the model file by `nnscratch train --save`), else Fashion-MNIST's; numbers
    when the names found are not `count`."""
    from . import datasets

    if choice is not None:
        classes = datasets.class_names(choice)
    elif saved is not None:
        classes = saved
    else:
        classes = FASHION_CLASSES
    return classes if count == len(classes) else [str(i) for i in range(count)]


def _saved_classes(path):
    """The class names `nnscratch train --save` kept in a model file (its checkpoint
    record), or None (a model saved otherwise, a safetensors file, an older file)."""
    from .checkpoint import META_KEY
    from .serialization import Archive

    try:
        with Archive(path) as archive:
            if META_KEY not in archive.headers:
                return None
            classes = archive.json(META_KEY).get("meta", {}).get("classes")
    except (ValueError, OSError, AttributeError):
        return None
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        return classes
    return None


def cmd_predict(args, out=None, err=None):
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    _writable_file(args.out, "--out")       # before any work
    model = _load_model(args.model)
    side = _input_side(model, args.model)
    notes: list = []
    X, names = _read_images(args.images, side, args, notes)
    X = X.reshape(len(X), 1, side, side) if _model_wants_images(model) else \
        X.reshape(len(X), -1)
    proba = _outputs(model, X, args.model, proba=True)
    saved = None if args.classes is not None else _saved_classes(args.model)
    classes = _class_names(args.classes, proba.shape[1], saved)
    for note in notes:
        print(f"nnscratch: note: {note}", file=err)
    if args.out is not None:
        _write_results_csv(args.out, names, proba, classes)
        print(f"wrote {len(names)} result{'s' if len(names) != 1 else ''} to {args.out}",
              file=out)
        return proba
    for i, (path, index) in enumerate(names):
        order = np.argsort(-proba[i])[:args.top]
        ranked = ", ".join(f"{classes[k]} {proba[i, k]:.3f}" for k in order)
        shown = path if index is None else f"{path}[{index}]"
        print(f"{shown}: {classes[order[0]]}  ({ranked})", file=out)
    return proba


def _write_results_csv(path, names, proba, classes):
    """One row per image: file, index (in an IDX file; empty for an image file), the
    predicted class (number and name), its probability, then every class's probability."""
    import csv
    import io

    from .serialization import write_bytes_atomic

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", "index", "class", "class_name", "probability"]
                    + [f"p_{k}" for k in range(proba.shape[1])])
    for (file, index), row in zip(names, proba):
        k = int(row.argmax())
        writer.writerow([file, "" if index is None else index, k, classes[k],
                         f"{row[k]:.6f}"] + [f"{p:.6f}" for p in row])
    write_bytes_atomic(path, text.getvalue().encode("utf-8"))


def _threads_said(args):
    """'2 threads (why)' for the training header."""
    from .backend import get_num_threads, thread_count_reason

    n = get_num_threads()
    why = f"--threads {n}" if args.threads is not None else thread_count_reason()
    return f"{n} thread{'s' if n != 1 else ''} ({why})"


# --- info, bench ------------------------------------------------------------------------

def cmd_info(args, out=None):
    out = sys.stdout if out is None else out
    import nnscratch as nn
    from . import backend, datasets

    core = backend.cnn_core_module()
    print(f"nnscratch {__version__} (numpy {np.__version__}, Python {sys.version.split()[0]})",
          file=out)
    print(f"backend: {nn.get_backend()}; threads: {nn.get_num_threads()} "
          f"({backend.thread_count_reason()})", file=out)
    features = core.cpu_features()
    print("CPU features used: " + (", ".join(k for k, v in features.items() if v) or "none"),
          file=out)
    print(f"GEMM micro-kernels: float32 {core.gemm_kernel_name(np.float32)}, "
          f"float64 {core.gemm_kernel_name(np.float64)}", file=out)
    for name in ("fashion-mnist", "mnist"):
        try:
            print(f"data {name}: {datasets.find_dataset(name).description}", file=out)
        except FileNotFoundError:
            print(f"data {name}: not found locally (nnscratch train --data {name} --download)",
                  file=out)
    print(f"data sample: {datasets.find_dataset('sample').description}", file=out)


def cmd_bench(args, out=None):
    out = sys.stdout if out is None else out
    from . import bench

    return bench.run(quick=args.quick, threads=args.threads, only=args.only, out=out)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "info": cmd_info, "bench": cmd_bench, "explain": cmd_explain}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except CLIError as exc:
        parser.exit(2, f"nnscratch: error: {exc}\n")
    except BrokenPipeError:     # e.g. `nnscratch explain | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        parser.exit(130, "\nnnscratch: interrupted (train: --resume continues from the last "
                         "finished epoch)\n")
    except MemoryError:
        parser.exit(2, "nnscratch: error: not enough memory for this (a smaller model, "
                       "--batch-size or --limit?)\n")
    except OSError as exc:      # the file system or the network: the environment, not a bug
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        parser.exit(2, f"nnscratch: error: {where}{exc.strerror or _first_line(exc)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
