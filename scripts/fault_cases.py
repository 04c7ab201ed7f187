"""The cases of the fault table (scripts/fault_table.py): bad inputs and faults against ``lmdeq train``,
``lmdeq eval``, ``lmdeq bench`` and the library, and the small files they need.

A case runs a command line (``argv``, where ``{w}`` is the work directory) or a library call
(``call(w)``) and says what a demanding user should see: ``expect='error'`` (a non-zero exit and a one-line
error containing ``needle``), ``'warn'`` (exit 0 and a warning containing ``needle``) or ``'ok'``.
``fault`` kills the command at that named instant (LMDEQ_FAULT_AT) and then resumes the run, which must end
exactly like an uninterrupted one. ``check(w)`` looks for damage beyond the exit status: files written outside
the cache, a pickle payload that ran, leftovers, a rewound run (it returns (outcome, problem), or None).
``needs`` names the fixtures the case uses. The generated cases (scripts/fault_fuzz.py) judge their own outcome
(``judge(w, rc, stdout, stderr)``) and may run under a shorter ``timeout``.
"""
from __future__ import annotations

import io
import os
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES10 = tuple(f"k{i}" for i in range(10))
TINY = ["--set", "channels=[8,8]", "--set", "head_channels=[4,8]", "--set", "final_channels=32",
        "--set", "num_groups=4"]
QUICK_TRAIN = ["--epochs", "1", "--batch-size", "15", "--val-fraction", "0.25", "--device", "cpu", "--no-progress"]
PAYLOAD_MARK = "payload-ran"  # a file a pickle payload would create in the work directory


@dataclass
class Case:
    name: str
    category: str
    argv: list
    expect: str = "error"
    needle: str = ""
    needs: tuple = ()
    fault: str | None = None
    check: object = None  # callable(w: Path) -> str | None
    env: dict = field(default_factory=dict)
    call: object = None  # instead of argv: a library call, callable(w: Path) (returning None or an exit status)
    judge: object = None  # callable(w, rc, stdout, stderr) -> (outcome, detail), instead of expect / needle
    timeout: float = 600.0  # seconds before the case counts as a hang


def error_line(err: str) -> str:
    """The last non-empty line of a command's stderr (where its one-line error is)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def tiny_except(args) -> list:
    """The tiny-model ``--set`` flags, less those whose key ``args`` sets itself."""
    own = {a.partition("=")[0] for a in args}
    pairs = [TINY[i:i + 2] for i in range(0, len(TINY), 2)]
    return [x for pair in pairs if pair[1].partition("=")[0] not in own for x in pair]


# -- fixtures ------------------------------------------------------------------------------------------------
def _png(path: Path, seed: int, size=(32, 32)) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def image_folder(root: Path, classes=CLASSES10, per_class: int = 2) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _png(root / name / f"{i}.png", 100 * c + i)
    return root


def _tar(path: Path, members) -> Path:
    """members: (name, bytes | None, kind) with kind file / dir / symlink / hardlink / chr / fifo."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = data
            tar.addfile(info)
    return path


def _zeros_member_tar(path: Path, size: int) -> Path:
    """A .tar.gz with one member of ``size`` zero bytes (a compression bomb: tiny archive, big member)."""
    class Zeros(io.RawIOBase):
        def __init__(self, n):
            self.left = n

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), self.left)
            b[:n] = bytes(n)
            self.left -= n
            return n

    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("train/k0/bomb.png")
        info.size = size
        tar.addfile(info, io.BufferedReader(Zeros(size)))
    return path


class _Payload:
    """Unpickling this runs code: it creates ``target`` (a safe loader never runs it)."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _pickle_checkpoint(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"format": "lmdeq-train-checkpoint", "version": 2, "kind": "run", "evil": _Payload(str(marker))}, path)
    return path


def build(w: Path, need: str, run) -> None:
    """Create fixture ``need`` under the work directory ``w``; ``run(argv)`` runs an lmdeq command line
    (returns its exit status and stderr)."""
    import torch

    if need == "data":
        image_folder(w / "data" / "train")
    elif need == "archives":
        good = image_folder(w / "tmp-arch" / "train")
        with tarfile.open(w / "good.tar.gz", "w:gz") as tar:
            tar.add(good, arcname="train")
        raw = (w / "good.tar.gz").read_bytes()
        (w / "truncated.tar.gz").write_bytes(raw[: len(raw) // 2])
        (w / "junk.tar.gz").write_bytes(os.urandom(2048))
        (w / "empty.tar.gz").write_bytes(b"")
        shutil.make_archive(str(w / "zipped"), "zip", w / "tmp-arch")
        os.replace(w / "zipped.zip", w / "zipped.tar.gz")
        img = _jpeg_bytes(0)
        _tar(w / "traversal.tar.gz", [("train/k0/0.jpg", img, "file"), ("../escaped-traversal", b"x", "file")])
        _tar(w / "nested-traversal.tar.gz", [("train/k0/../../../escaped-nested", b"x", "file")])
        _tar(w / "absolute.tar.gz", [(str(w / "escaped-absolute"), b"x", "file")])
        _tar(w / "symlink.tar.gz", [("train/k0/link.jpg", "/etc/passwd", "symlink")])
        _tar(w / "symlink-dir.tar.gz", [("train", str(w), "symlink"), ("train/escaped-via-link", b"x", "file")])
        _tar(w / "hardlink.tar.gz", [("train/k0/hard.jpg", "/etc/passwd", "hardlink")])
        _tar(w / "device.tar.gz", [("train/k0/dev", None, "chr")])
        _tar(w / "fifo.tar.gz", [("train/k0/fifo", None, "fifo")])
        _zeros_member_tar(w / "bomb.tar.gz", 4 << 20)  # refused under LMDEQ_MAX_ARCHIVE_MEMBER=1M
        _tar(w / "total.tar.gz", [(f"train/k{i % 2}/{i}.png", bytes(600 << 10), "file") for i in range(4)])
        shutil.rmtree(w / "tmp-arch")
    elif need == "bad-images":
        root = image_folder(w / "bad-images" / "train")
        (root / "k0" / "zero.jpg").write_bytes(b"")
        (root / "k1" / "random.jpg").write_bytes(os.urandom(700))
        (root / "k2" / "text.png").write_text("not an image")
        (root / "k3" / "truncated.jpg").write_bytes(_jpeg_bytes(3)[:300])
        image_folder(w / "unreadable" / "train", per_class=0)
        for c in CLASSES10[:2]:
            (w / "unreadable" / "train" / c).mkdir(parents=True, exist_ok=True)
            (w / "unreadable" / "train" / c / "0.jpg").write_bytes(b"junk")
        root = image_folder(w / "mixed-size" / "train")
        _png(root / "k4" / "odd.png", 7, size=(30, 32))
    elif need == "odd-files":
        # links that loop or leave the root, a FIFO named like an image, a second link to an image
        root = image_folder(w / "loop-data" / "train")
        os.symlink("..", root / "k0" / "loop")
        root = image_folder(w / "outside-data" / "train")
        _png(w / "outside.png", 99)
        os.symlink(w / "outside.png", root / "k0" / "outside.png")
        root = image_folder(w / "fifo-data" / "train")
        os.mkfifo(root / "k0" / "fifo.jpg")
        root = image_folder(w / "twice-data" / "train")
        os.symlink(root / "k1" / "0.png", root / "k0" / "also-k1.png")
        root = image_folder(w / "sixteen-bit" / "train", classes=("a", "b"))
        for c in ("a", "b"):
            ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
            Image.fromarray(ramp).save(root / c / "g16.png")
    elif need == "layouts":
        image_folder(w / "one-class", classes=("airplane",), per_class=3)
        image_folder(w / "one-class-train" / "train", classes=("airplane",), per_class=3)
        image_folder(w / "four-class" / "train", classes=("a", "b", "c", "d"), per_class=3)
        (w / "empty-dir").mkdir()
        (w / "files-only").mkdir()
        _png(w / "files-only" / "0.png", 0)
        (w / "notes.txt").write_text("not data")
        (w / "a-file").write_text("a file where a directory should be")
        image_folder(w / "other-classes" / "train", classes=tuple(f"o{i}" for i in range(10)))
        for c in ("a", "b"):
            _png(w / "small-images" / "train" / c / "0.png", 0, size=(16, 16))
    elif need == "payloads":
        (w / "zero.pt").write_bytes(b"")
        (w / "random.pt").write_bytes(os.urandom(4096))
        _pickle_checkpoint(w / "payload.pt", w / PAYLOAD_MARK)
    elif need == "run":
        if not (w / "data").exists():
            build(w, "data", run)
        rc, err = run(["train", "--data", str(w / "data"), "--out", str(w / "run"), "--cache-dir", str(w / "cache"),
                       *QUICK_TRAIN, *TINY])
        assert rc == 0, f"the fixture run failed: {err[-2000:]}"
        last = w / "run" / "last.pt"
        raw = last.read_bytes()
        (w / "truncated.pt").write_bytes(raw[: len(raw) // 2])
        ckpt = torch.load(last, weights_only=True)
        torch.save({k: v for k, v in ckpt.items() if k != "train_config"}, w / "no-train-config.pt")
        torch.save(ckpt["model_state"], w / "plain-state-dict.pt")
        shaped = dict(ckpt, model_state={k: (v[..., :1].clone() if v.dim() == 4 else v)
                                         for k, v in ckpt["model_state"].items()})
        torch.save(shaped, w / "mis-shaped.pt")
        nan = dict(ckpt, model_state={k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
                                      for k, v in ckpt["model_state"].items()})
        torch.save(nan, w / "nan-weights.pt")
        shutil.copy(last, w / "run" / "older-copy.pt")
        (w / "older-copy-dir").mkdir()
    elif need == "caches":
        for name in ("corrupt-cache", "payload-cache"):
            image_folder(w / name / "train")
            rc, err = run(["train", "--data", str(w / name), "--out", str(w / f"{name}-run"), "--cache-dir",
                           str(w / f"{name}-dir"), *QUICK_TRAIN, *TINY])
            assert rc == 0, f"the fixture run failed: {err[-2000:]}"
            shutil.rmtree(w / f"{name}-run")
        (cached,) = (w / "corrupt-cache-dir" / "decoded").glob("*.pt")
        cached.write_bytes(cached.read_bytes()[:100])
        (cached,) = (w / "payload-cache-dir" / "decoded").glob("*.pt")
        _pickle_checkpoint(cached, w / PAYLOAD_MARK)
    else:
        raise ValueError(f"unknown fixture {need!r}")


# -- checks beyond the exit status: each returns (outcome, what is wrong) or None ------------------------------
def nothing_escaped(w: Path):
    escaped = [p.name for p in (*w.parent.iterdir(), *w.iterdir()) if p.name.startswith("escaped")]
    if escaped:
        return "security", f"archive members written outside the cache: {escaped}"
    if (w / PAYLOAD_MARK).exists():
        return "security", "a pickle payload ran"
    return None


def cache_clean(w: Path):
    found = nothing_escaped(w)
    if found:
        return found
    cache = w / "cache"
    files = [p for p in cache.rglob("*") if p.is_file()] if cache.is_dir() else []
    left = [p.name for p in cache.iterdir() if "-partial-" in p.name] if cache.is_dir() else []
    big = [p.name for p in files if p.stat().st_size > (1 << 20)]
    if left or big:
        return "other", f"the cache keeps leftovers of a refused archive: {left + big}"
    return None


def run_untouched(w: Path):
    import torch

    from lmdeq.app.train.metrics import read_jsonl

    epochs = [r["epoch"] for r in read_jsonl(w / "run" / "metrics.jsonl")]
    if epochs != [1]:
        return "data lost", f"the run's metrics.jsonl changed: epochs {epochs}"
    if torch.load(w / "run" / "last.pt", weights_only=True)["epoch"] != 1:
        return "data lost", "the run's last.pt was rewound or overwritten"
    return None


def no_run_dir(path: str):
    def check(w: Path):
        return ("other", f"a failed run left the directory {path}") if (w / path).exists() else None
    return check


KILL_TRAIN = ["train", "--data", "{w}/data", "--cache-dir", "{w}/cache", "--epochs", "3", "--batch-size", "15",
              "--val-fraction", "0.25", "--device", "cpu", "--no-progress", *TINY]


# -- library calls ------------------------------------------------------------------------------------------
def model_on_nan_images(w: Path) -> None:
    import torch

    from lmdeq.models import mdeq

    model = mdeq("cifar10-small", channels=[8, 8], head_channels=[4, 8], final_channels=32, num_groups=4)
    x = torch.randn(2, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    model(x)


def source_of_a_missing_path(w: Path) -> None:
    from lmdeq.app.data import load_source

    load_source(str(w / "missing"), w / "cache")


def extract_a_traversal_archive(w: Path) -> None:
    from lmdeq.app.data.archive import extract_archive

    extract_archive(w / "traversal.tar.gz", w / "cache")


def extract_a_bomb(w: Path) -> None:
    from lmdeq.app.data.archive import extract_archive

    extract_archive(w / "bomb.tar.gz", w / "cache", max_member_bytes=1 << 20)


def load_a_pickle_payload(w: Path) -> None:
    from lmdeq.app.train.checkpoint import load_checkpoint

    load_checkpoint(w / "payload.pt")


def config_with_zero_epochs(w: Path) -> None:
    from lmdeq.app.train import TrainConfig

    TrainConfig(epochs=0)


def evaluate_nan_weights(w: Path) -> None:
    from lmdeq.app.train import run_evaluation

    run_evaluation(w / "nan-weights.pt", device="cpu", cache_dir=w / "cache", progress=False)


def train_a_diverging_model(w: Path) -> None:
    import torch

    from lmdeq.app.train import TrainConfig, run_training

    class Diverging(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 32 * 32, 10)
            torch.nn.init.constant_(self.lin.weight, float("inf"))

        def forward(self, x):
            return self.lin(x.flatten(1))

    cfg = TrainConfig(data=str(w / "data"), epochs=1, batch_size=15, val_fraction=0.25)
    run_training(cfg, device="cpu", out_dir=w / "diverging", cache_dir=w / "cache", progress=False,
                 model_factory=lambda _c: Diverging(), print_fn=lambda s: None)


def _tiny_deq(backward=None):
    import torch

    from lmdeq import JFB, FixedPoint, Implicit, deq_solve

    backward = JFB() if backward == "jfb" else Implicit()
    W = (0.1 * torch.randn(6, 6, generator=torch.Generator().manual_seed(0))).requires_grad_()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    return lambda xx=x, b=backward: deq_solve(lambda z: torch.tanh(z @ W.T + xx), torch.zeros_like(xx),
                                              solver=FixedPoint(max_iter=100, tol=1e-10), backward=b)[0], W, x


def gradient_penalty_through_implicit(w: Path) -> None:
    import torch

    solve, W, _ = _tiny_deq()
    (g,) = torch.autograd.grad((solve() ** 2).sum(), W, create_graph=True)
    g.norm().backward()


def double_backward_through_jfb(w: Path) -> None:
    import torch

    solve, W, _ = _tiny_deq("jfb")
    (g,) = torch.autograd.grad((solve() ** 2).sum(), W, create_graph=True)
    (gg,) = torch.autograd.grad(g.norm(), W)
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0


def func_transform(kind: str):
    def call(w: Path) -> None:
        import torch

        solve, _, x = _tiny_deq()
        fn = lambda xx: solve(xx).sum()   # noqa: E731
        {"grad": lambda: torch.func.grad(fn)(x), "vmap": lambda: torch.func.vmap(fn)(x),
         "jvp": lambda: torch.func.jvp(fn, (x,), (x,))}[kind]()
    return call


def sixteen_bit_images_decode(w: Path) -> None:
    from lmdeq.app.data.folder import load_image_folder

    data = load_image_folder(w / "sixteen-bit" / "train", w / "cache")
    top = int(data.images.float().mean())
    assert 100 < top < 160, f"16-bit ramp decoded to mean {top} (clipped?)"   # the ramp's top bits: mean ~127


def huge_max_iter(w: Path) -> None:
    import torch

    from lmdeq.solvers import Broyden

    info = Broyden(max_iter=10 ** 12, tol=1e-8).solve(lambda z: 0.5 * z + 1, torch.zeros(2, 1000)).stats
    assert info.result == "converged" and info["abs_trace"].shape[1] < 100


def last_pt_untouched_by_divergence(w: Path):
    return ("other", "a diverged run left files") if (w / "diverging").exists() else None


# -- the cases ----------------------------------------------------------------------------------------------
def cases() -> list[Case]:
    table: list[Case] = []

    def train(name, cat, *args, expect="error", needle="", data="{w}/data", out_dir=None, needs=("data",), **kw):
        out_dir = out_dir or f"{{w}}/out/{len(table)}"
        argv = ["train", "--data", data, "--cache-dir", "{w}/cache", "--out", out_dir, *QUICK_TRAIN,
                *tiny_except(args), *args]
        table.append(Case(name, cat, argv, expect, needle, needs, **kw))

    def case(name, cat, argv, **kw):
        table.append(Case(name, cat, argv, **kw))

    # arguments and settings
    for flag, value, needle in [("--epochs", "0", "positive integer"), ("--epochs", "-3", "positive integer"),
                                ("--batch-size", "0", "positive integer"), ("--workers", "-1", "non-negative"),
                                ("--lr", "fast", "argument --lr: expected a positive number"),
                                ("--lr", "nan", "argument --lr: expected a positive number"),
                                ("--lr", "-1", "argument --lr: expected a positive number"),
                                ("--min-lr", "1", "exceeds lr"),
                                ("--val-fraction", "1.5", "argument --val-fraction"),
                                ("--val-fraction", "-0.1", "argument --val-fraction"),
                                ("--val-fraction", "0.001", "leaves an empty validation split"),
                                ("--limit-train", "0", "positive integer"), ("--seed", "-1", "non-negative"),
                                ("--bound-every", "0", "positive integer"), ("--grad-clip", "-1", "argument --grad-clip"),
                                ("--weight-decay", "-1", "argument --weight-decay"), ("--device", "tpu", "device: 'tpu'"),
                                ("--device", "cuda:7", "device: 'cuda:7'")]:
        train(f"train {flag} {value}", "arguments", flag, value, needle=needle)
    for sets, needle in [(["s=5"], "certified bound L"), (["dropuot=0.1"], "unknown mdeq override"),
                         (["channels=[8]"], "channels"), (["f_max_iter=0"], "f_max_iter"),
                         (["f_solver=nope"], "f_solver must be one of"), (["num_groups=3"], "divisible by num_groups"),
                         (["dropout=1.5"], "dropout"), (["channels=[8,"], "not valid JSON"),
                         (["dropout"], "key=value"), (["f_stop_mode=abs"], "stop_mode='rel'"),
                         (["dropout=0.1", "dropout=0.2"], "--set given more than once")]:
        train(f"train --set {' '.join(sets)}", "model config", *[a for s in sets for a in ("--set", s)], needle=needle)
    train("train --preset nope", "model config", "--preset", "nope", needle="unknown preset")
    train("train --original --set s=0.5", "model config", "--original", "--set", "s=0.5",
          needle="only apply to the Lipschitz variant")
    train("train --set s=5 fails before any data is read", "model config", "--set", "s=5",
          data="{w}/never-decoded", needle="certified bound L", needs=())
    train("train on unconverged solves", "model config", "--set", "s=5", "--set", "f_max_iter=2", "--set",
          "b_max_iter=2", expect="warn", needle="did not reach their tolerance")
    # data
    for name, data, needle in [("missing path", "{w}/missing", "does not exist"),
                               ("a text file", "{w}/notes.txt", "not a .tar.gz"),
                               ("an empty directory", "{w}/empty-dir", "not an ImageFolder"),
                               ("images without class folders", "{w}/files-only", "not an ImageFolder"),
                               ("a one-class ImageFolder", "{w}/one-class", "has 1 class"),
                               ("a one-class train/", "{w}/one-class-train", "has 1 class"),
                               ("an image of another size", "{w}/mixed-size", "odd.png is 30x32"),
                               ("only unreadable images", "{w}/unreadable", "none of the")]:
        train(f"train --data {name}", "data", data=data, needle=needle, needs=("layouts", "bad-images"))
    # the classes come from the data unless num_classes is set: a set one that does not fit is an error
    train("train --data 4 classes for a 10-way head set explicitly", "data", "--set", "num_classes=10",
          data="{w}/four-class", needle="--set num_classes=4", needs=("layouts", "bad-images"))
    train("train --data with unreadable images", "data", data="{w}/bad-images", expect="warn",
          needle="skipped 4 of 24 image files", needs=("bad-images",))
    train("train --data with unreadable images --strict", "data", "--strict", data="{w}/bad-images",
          needle="cannot decode", needs=("bad-images",))
    train("train --cache-dir a file", "data", "--cache-dir", "{w}/a-file", needle="is a file, not a directory",
          needs=("data", "layouts"))
    train("train on a torn decoded cache", "data", "--cache-dir", "{w}/corrupt-cache-dir", data="{w}/corrupt-cache",
          expect="warn", needle="rebuilding it", needs=("caches",))
    # archives: resource limits and hostile members
    for name, needle in [("truncated", "truncated or corrupt"), ("junk", "not a readable tar archive"),
                         ("empty", "not a readable tar archive"), ("zipped", "not a readable tar archive")]:
        train(f"train --data {name}.tar.gz", "archives", data=f"{{w}}/{name}.tar.gz", needle=needle,
              needs=("archives",), check=cache_clean)
    train("train --data bomb.tar.gz (member over the cap)", "archives", data="{w}/bomb.tar.gz",
          needle="over the per-file limit", needs=("archives",), check=cache_clean,
          env={"LMDEQ_MAX_ARCHIVE_MEMBER": "1M"})
    train("train --data total.tar.gz (total over the cap)", "archives", data="{w}/total.tar.gz",
          needle="extracts to more than", needs=("archives",), check=cache_clean,
          env={"LMDEQ_MAX_ARCHIVE_TOTAL": "2M"})
    train("train LMDEQ_MAX_ARCHIVE_MEMBER=lots", "archives", data="{w}/good.tar.gz", needle="is not a size",
          needs=("archives",), env={"LMDEQ_MAX_ARCHIVE_MEMBER": "lots"})
    for name in ("traversal", "nested-traversal", "absolute", "symlink", "symlink-dir", "hardlink", "device", "fifo"):
        train(f"train --data {name}.tar.gz", "hostile archives", data=f"{{w}}/{name}.tar.gz",
              needle="refusing it", needs=("archives",), check=cache_clean)
    case("train on a decoded cache holding a pickle payload", "hostile archives",
         ["train", "--data", "{w}/payload-cache", "--cache-dir", "{w}/payload-cache-dir", "--out",
          "{w}/payload-cache-run", *QUICK_TRAIN, *TINY], expect="warn", needle="rebuilding it", needs=("caches",),
         check=nothing_escaped)
    # checkpoints and run directories
    for name, path, needle in [("missing", "{w}/missing.pt", "does not exist"),
                               ("truncated", "{w}/truncated.pt", "not a readable"),
                               ("zero bytes", "{w}/zero.pt", "not a readable"),
                               ("random bytes", "{w}/random.pt", "not a readable"),
                               ("a plain state dict", "{w}/plain-state-dict.pt", "not an lmdeq training checkpoint"),
                               ("missing train_config", "{w}/no-train-config.pt", "lacks ['train_config']"),
                               ("best.pt", "{w}/run/best.pt", "best epoch only")]:
        case(f"train --resume {name}", "checkpoints", ["train", "--resume", path, "--no-progress"], needle=needle,
             needs=("run", "payloads"), check=run_untouched)
    case("train --resume a pickle payload", "checkpoints", ["train", "--resume", "{w}/payload.pt", "--out",
         "{w}/payload-run", "--no-progress"], needle="not a readable", needs=("payloads",), check=nothing_escaped)
    case("train --resume an older copy into its run", "run directory",
         ["train", "--resume", "{w}/run/older-copy.pt", "--no-progress"], needle="would rewind", needs=("run",),
         check=run_untouched)
    case("train --resume with another --lr", "run directory",
         ["train", "--resume", "{w}/run/last.pt", "--lr", "0.01", "--no-progress"],
         needle="lr=0.01 (checkpoint: 0.001)", needs=("run",), check=run_untouched)
    case("train --resume a finished run (its directory)", "run directory",
         ["train", "--resume", "{w}/run", "--no-progress", "--cache-dir", "{w}/cache", "--device", "cpu"],
         expect="ok", needs=("run",), check=run_untouched)
    case("train --resume without a path or --out", "run directory", ["train", "--resume"], needle="needs --out")
    train("train --out a run directory", "run directory", out_dir="{w}/run", needle="already holds a run",
          needs=("run",), check=run_untouched)
    train("train --out a file", "run directory", out_dir="{w}/a-file", needle="is not a directory",
          needs=("data", "layouts"))
    train("train --out under a file", "run directory", out_dir="{w}/a-file/run", needle="is not a directory",
          needs=("data", "layouts"))
    train("train that fails before epoch 1", "run directory", data="{w}/missing", out_dir="{w}/fresh/run",
          needle="does not exist", check=no_run_dir("fresh"))
    # eval
    for name, path, needle in [("missing", "{w}/missing.pt", "does not exist"),
                               ("truncated", "{w}/truncated.pt", "not a readable"),
                               ("random bytes", "{w}/random.pt", "not a readable"),
                               ("a directory", "{w}/older-copy-dir", "not a file"),
                               ("missing train_config", "{w}/no-train-config.pt", "lacks ['train_config']"),
                               ("mis-shaped weights", "{w}/mis-shaped.pt", "do not fit the model"),
                               ("NaN weights", "{w}/nan-weights.pt", "non-finite weights")]:
        case(f"eval --checkpoint {name}", "eval", ["eval", "--checkpoint", path, "--device", "cpu", "--no-progress"],
             needle=needle, needs=("run", "payloads"))
    case("eval --checkpoint a pickle payload", "eval", ["eval", "--checkpoint", "{w}/payload.pt", "--no-progress"],
         needle="not a readable", needs=("payloads",), check=nothing_escaped)
    case("eval --data with other classes", "eval", ["eval", "--checkpoint", "{w}/run/best.pt", "--data",
         "{w}/other-classes", "--split", "all", "--cache-dir", "{w}/cache", "--no-progress"],
         needle="was trained on", needs=("run", "layouts"))
    case("eval --limit 0", "eval", ["eval", "--checkpoint", "{w}/run/best.pt", "--limit", "0"],
         needle="positive integer", needs=("run",))
    case("eval of best.pt", "eval", ["eval", "--checkpoint", "{w}/run/best.pt", "--cache-dir", "{w}/cache",
         "--device", "cpu", "--no-progress"], expect="ok", needs=("run",))
    # bench: every case is refused before a benchmark starts
    for args, needle in [(["--batch", "0"], "positive integer"), (["--batch", "-4"], "positive integer"),
                         (["--steps", "0"], "positive integer"), (["--steps", "-1"], "positive integer"),
                         (["--warmup", "-1"], "non-negative"), (["--check-every", "0"], "positive integer"),
                         (["--device", "tpu"], "device: 'tpu'"), (["--preset", "nope"], "is not a preset"),
                         (["--methods", "foo"], "--methods must be"), (["--methods", ","], "--methods must be"),
                         (["--weights", "{w}/random.pt"], "not a readable"),
                         (["--weights", "{w}/missing.pt"], "does not exist"),
                         (["--weights", "{w}/nan-weights.pt"], "non-finite weights"),
                         (["--weights", "{w}/mis-shaped.pt"], "do not fit the model"),
                         (["--weights", "{w}/no-train-config.pt"], "lacks ['train_config']"),
                         (["--weights", "{w}/payload.pt"], "not a readable"),
                         (["--out", "{w}/a-file"], "is not a directory"),
                         (["--data", "{w}/small-images"], "its images are"),
                         (["--data", "{w}/missing"], "does not exist"),
                         (["solvers", "--repeats", "0"], "positive integer"),
                         (["solvers", "--max-iter", "0"], "positive integer")]:
        payload = "payload" in " ".join(args)
        needs = ("payloads",) if payload else ("run", "layouts", "payloads") if any("{w}" in a for a in args) else ()
        case(f"bench {' '.join(args)}", "bench", ["bench", "--quick", *args], needle=needle, needs=needs,
             check=nothing_escaped if payload else None)
    # the library
    for name, call, needle, needs, check in [
            ("model(x) on NaN images", model_on_nan_images, "NaN/Inf", (), None),
            ("load_source of a missing path", source_of_a_missing_path, "does not exist", (), None),
            ("extract_archive of a traversal archive", extract_a_traversal_archive, "escapes", ("archives",),
             cache_clean),
            ("extract_archive of a bomb", extract_a_bomb, "over the per-file limit", ("archives",), cache_clean),
            ("load_checkpoint of a pickle payload", load_a_pickle_payload, "never loads", ("payloads",),
             nothing_escaped),
            ("TrainConfig(epochs=0)", config_with_zero_epochs, "epochs must be an int >= 1", (), None),
            ("run_evaluation of NaN weights", evaluate_nan_weights, "non-finite weights", ("run",), None),
            ("run_training of a diverging model", train_a_diverging_model, "training diverged", ("data",),
             last_pt_untouched_by_divergence)]:
        case(name, "library", [], needle=needle, needs=needs, check=check, call=call)
    # autograd transforms through a DEQ: refused by name, or correct
    for name, call, expect, needle in [
            ("gradient penalty through the implicit backward", gradient_penalty_through_implicit, "error",
             "create_graph=True through the DEQ's backward"),
            ("double backward through JFB", double_backward_through_jfb, "ok", ""),
            ("torch.func.grad through deq_solve", func_transform("grad"), "error", "torch.func transforms"),
            ("torch.func.vmap over deq_solve", func_transform("vmap"), "error", "torch.func transforms"),
            ("torch.func.jvp through deq_solve", func_transform("jvp"), "error", "torch.func transforms"),
            ("broyden with max_iter=10**12", huge_max_iter, "ok", "")]:
        case(name, "autograd and solvers", [], expect=expect, needle=needle, call=call)
    # environment variables
    for env, needle in [({"LMDEQ_TUNE_ALLOCATOR": "maybe"}, "LMDEQ_TUNE_ALLOCATOR must be 0 or 1"),
                        ({"LMDEQ_TUNE_ALLOCATOR": ""}, "LMDEQ_TUNE_ALLOCATOR must be 0 or 1"),
                        ({"LMDEQ_CUDA_GRAPHS": "perhaps"}, "LMDEQ_CUDA_GRAPHS must be 0 or 1"),
                        ({"LMDEQ_BACKEND": "bogus"}, "is not one of"),
                        ({"LMDEQ_BACKEND": "cuda"}, "cannot run on cpu tensors")]:
        spelled = " ".join(f"{k}={v!r}" for k, v in env.items())
        train(f"train with {spelled}", "environment", needle=needle, env=env)
    # data files: links, loops, special files, modes
    for folder, expect, needle in [("loop-data", "warn", "already visited"),
                                   ("outside-data", "warn", "leading out of the data root"),
                                   ("fifo-data", "warn", "special file"), ("twice-data", "warn", "reached twice")]:
        train(f"train on a folder with {folder.replace('-data', '')} links/files", "data files", expect=expect,
              needle=needle, data=f"{{w}}/{folder}", needs=("odd-files",))
    case("16-bit grayscale images", "data files", [], expect="ok", call=sixteen_bit_images_decode,
         needs=("odd-files",))
    # kill -9 at exact instants, then resume
    for fault in ("step@1", "epoch-end@1", "last.pt:partial@1", "last.pt:renamed@1", "best.pt:partial@1",
                  "metrics.jsonl:partial@2", "last.pt:written@3", "metrics.jsonl:renamed@3"):
        case(f"kill -9 at {fault}, then resume", "kill -9", KILL_TRAIN, expect="ok", fault=fault, needs=("data",))
    return table

