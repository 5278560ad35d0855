"""Tests for amc.data: IDX/CIFAR readers, downloads, safe extraction, data modules and the search split."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from amc.data import (
    CIFAR10,
    CIFAR100,
    MNIST,
    Augmentation,
    FashionMNIST,
    ImageNet,
    build_data,
    check_md5,
    download_file,
    load_cifar_pickle,
    md5_file,
    read_idx,
    safe_extract_tar,
    split_indices,
    verify_md5,
    write_cifar_batch,
    write_idx,
)
from amc.data import cifar as cifar_mod
from amc.data import mnist as mnist_mod
from amc.errors import AmcError

torch.set_num_threads(1)

FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_DOWNLOAD_DIR = Path(__file__).resolve().parents[1] / "data" / "fashion-mnist"  # data.download=true's default


def _has_fmnist(directory: Path) -> bool:
    return any(directory.glob("train-images-idx3-ubyte*")) and any(directory.glob("t10k-labels-idx1-ubyte*"))


CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "data"


# --- helpers ------------------------------------------------------------------------------------------


def _id_images(n: int, channels: int, size: int, start: int = 0) -> np.ndarray:
    """uint8 images whose first two pixels encode their index (so a batch can be traced back)."""
    rng = np.random.default_rng(start + n)
    images = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    ids = np.arange(start, start + n)
    images[:, 0, 0, 0] = ids % 256
    images[:, 0, 0, 1] = ids // 256
    return images


def _decode_ids(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> list[int]:
    """Invert the normalisation of channel 0 and read back the encoded indices."""
    pix = torch.round((x[:, 0, 0, :2] * std[0] + mean[0]) * 255).long()
    return (pix[:, 0] + 256 * pix[:, 1]).tolist()


def _write_fmnist(root: Path, n_train: int = 200, n_test: int = 50, gz: bool = True) -> Path:
    suffix = ".gz" if gz else ""
    train = _id_images(n_train, 1, 28)[:, 0]
    test = _id_images(n_test, 1, 28, start=10_000)[:, 0]
    write_idx(root / f"train-images-idx3-ubyte{suffix}", train)
    write_idx(root / f"train-labels-idx1-ubyte{suffix}", (np.arange(n_train) % 10).astype(np.uint8))
    write_idx(root / f"t10k-images-idx3-ubyte{suffix}", test)
    write_idx(root / f"t10k-labels-idx1-ubyte{suffix}", (np.arange(n_test) % 10).astype(np.uint8))
    return root


def _write_cifar10(root: Path, per_batch: int = 20, n_test: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    for i in range(5):
        images = _id_images(per_batch, 3, 32, start=i * per_batch).reshape(per_batch, -1)
        labels = [int(v) for v in (np.arange(per_batch) + i) % 10]
        write_cifar_batch(
            folder / f"data_batch_{i + 1}",
            {
                b"batch_label": b"training batch",
                b"labels": labels,
                b"data": images,
                b"filenames": [b"x.png"] * per_batch,
            },
        )
    test = _id_images(n_test, 3, 32, start=10_000).reshape(n_test, -1)
    write_cifar_batch(folder / "test_batch", {b"labels": [int(v) for v in np.arange(n_test) % 10], b"data": test})
    return folder


def _write_cifar100(root: Path, n_train: int = 60, n_test: int = 30) -> Path:
    folder = root / "cifar-100-python"
    for name, n, start in (("train", n_train, 0), ("test", n_test, 10_000)):
        images = _id_images(n, 3, 32, start=start).reshape(n, -1)
        write_cifar_batch(
            folder / name,
            {
                b"filenames": [b"a.png"] * n,
                b"fine_labels": [int(v) for v in (np.arange(n) * 7) % 100],
                b"coarse_labels": [int(v) for v in np.arange(n) % 20],
                b"data": images,
            },
        )
    return folder


def _rng_states() -> tuple[torch.Tensor, tuple]:
    return torch.random.get_rng_state().clone(), np.random.get_state()


def _assert_rng_unchanged(before: tuple[torch.Tensor, tuple]) -> None:
    torch_state, np_state = before
    assert torch.equal(torch_state, torch.random.get_rng_state())
    now = np.random.get_state()
    assert np_state[0] == now[0] and np.array_equal(np_state[1], now[1]) and np_state[2:] == now[2:]


@pytest.fixture
def fmnist_root(tmp_path: Path) -> Path:
    return _write_fmnist(tmp_path / "fmnist")


# --- IDX ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.arange(-5, 5, dtype=np.int8),
        np.arange(12, dtype=np.int16).reshape(3, 4) - 6,
        np.arange(6, dtype=np.int32) * 100_000,
        np.linspace(-1, 1, 10, dtype=np.float32).reshape(2, 5),
        np.linspace(-1, 1, 4, dtype=np.float64),
    ],
)
def test_idx_roundtrip(tmp_path: Path, array: np.ndarray, suffix: str) -> None:
    path = write_idx(tmp_path / f"a-idx{suffix}", array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    out = read_idx(path)
    assert out.dtype == array.dtype.newbyteorder("=") and out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def _idx_bytes(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "shorter than"),
        (b"\x01\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc", "magic number"),
        (b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc", "dtype code"),
        (b"\x00\x00\x08\x00", "dimensions"),
        (b"\x00\x00\x08\x03" + (3).to_bytes(4, "big"), "truncated header"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "truncated"),
        (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "trailing"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_idx_corrupt_raises(tmp_path: Path, content: bytes, problem: str, gz: bool) -> None:
    path = tmp_path / ("bad-idx.gz" if gz else "bad-idx")
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(AmcError, match=problem) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and "delete it" in message and "\n" not in message


def test_idx_truncated_and_garbage_gzip(tmp_path: Path) -> None:
    good = gzip.compress(_idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 100)))
    truncated = tmp_path / "t-idx.gz"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "g-idx.gz"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(200))
    for path in (truncated, garbage):
        with pytest.raises(AmcError, match="gzip") as info:
            read_idx(path)
        assert str(path) in str(info.value) and "download it again" in str(info.value)
    with pytest.raises(AmcError, match="does not exist"):
        read_idx(tmp_path / "missing-idx")


def test_write_idx_rejects_unsupported(tmp_path: Path) -> None:
    with pytest.raises(AmcError, match="dtype"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint16))


# --- checksums, downloads, extraction -----------------------------------------------------------------


def test_md5_and_verification(tmp_path: Path) -> None:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    assert md5_file(path) == "b1946ac92492d2347c6235b4d2611184"
    assert check_md5(path, "B1946AC92492D2347C6235B4D2611184")
    assert not check_md5(path, "0" * 32)
    assert not check_md5(tmp_path / "missing", "b1946ac92492d2347c6235b4d2611184")
    verify_md5(path, "b1946ac92492d2347c6235b4d2611184")
    with pytest.raises(AmcError, match="MD5") as info:
        verify_md5(path, "0" * 32)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_download_file_checks_md5_and_is_atomic(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    good = md5_file(src)
    dest_dir = tmp_path / "dl"
    with pytest.raises(AmcError, match="could not download") as info:
        download_file([src.as_uri()], dest_dir / "f.bin", "0" * 32)
    assert "\n" not in str(info.value)
    assert not any(dest_dir.iterdir()), "a failed download must leave nothing behind"
    # the first mirror fails, the second works
    out = download_file([(tmp_path / "nope").as_uri(), src.as_uri()], dest_dir / "f.bin", good)
    assert out.read_bytes() == src.read_bytes()
    assert [p.name for p in dest_dir.iterdir()] == ["f.bin"]
    # an existing file with the right checksum is kept without fetching
    assert download_file(["file:///does/not/exist"], dest_dir / "f.bin", good) == out


def test_download_unreachable_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(AmcError, match="check the network") as info:
        download_file(["http://127.0.0.1:9/x.gz"], tmp_path / "x.gz", "0" * 32, timeout=2)
    assert "\n" not in str(info.value)


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "cifar-10-batches-py/../../evil.txt", "/tmp/amc-evil.txt"])
def test_tar_rejects_path_traversal(tmp_path: Path, name: str) -> None:
    archive = _tar_with(
        tmp_path / "bad.tar.gz",
        [(tarfile.TarInfo("cifar-10-batches-py/ok.txt"), b"ok"), (tarfile.TarInfo(name), b"evil")],
    )
    dest = tmp_path / "out"
    with pytest.raises(AmcError, match="unsafe path") as info:
        safe_extract_tar(archive, dest)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/amc-evil.txt").exists()
    assert not (dest / "cifar-10-batches-py").exists(), "nothing is extracted when one member is unsafe"


def test_tar_rejects_links_and_extracts_good_archive(tmp_path: Path) -> None:
    link = tarfile.TarInfo("d/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(AmcError, match="link"):
        safe_extract_tar(_tar_with(tmp_path / "link.tar.gz", [(link, None)]), tmp_path / "o1")
    good = _tar_with(tmp_path / "good.tar.gz", [(tarfile.TarInfo("d/a.txt"), b"A"), (tarfile.TarInfo("d/b"), b"")])
    assert safe_extract_tar(good, tmp_path / "o2") == ["d"]
    assert (tmp_path / "o2" / "d" / "a.txt").read_bytes() == b"A"
    assert [p.name for p in (tmp_path / "o2").iterdir()] == ["d"], "no temporary folder is left"
    not_tar = tmp_path / "x.tar.gz"
    not_tar.write_bytes(b"not a tar")
    with pytest.raises(AmcError, match="not a readable tar"):
        safe_extract_tar(not_tar, tmp_path / "o3")


# --- MNIST / Fashion-MNIST ----------------------------------------------------------------------------


@pytest.mark.skipif(
    not (FMNIST_SYSTEM_DIR.is_dir() or _has_fmnist(FMNIST_DOWNLOAD_DIR)),
    reason="Fashion-MNIST is neither installed (apt-get install dataset-fashion-mnist) nor downloaded into data/",
)
def test_real_fashion_mnist(tmp_path: Path) -> None:
    before = _rng_states()
    # An empty root falls back to /usr/share/datasets/fashion-mnist; else read what data.download=true fetched.
    root = tmp_path / "empty" if FMNIST_SYSTEM_DIR.is_dir() else FMNIST_DOWNLOAD_DIR
    dm = FashionMNIST(root=str(root))
    dm.setup()
    assert len(dm.train_indices) + len(dm.search_indices) == 60000
    assert len(dm.search_dataset()) == 5000 and len(dm.train_dataset()) == 55000
    assert len(dm.test_dataset()) == 10000
    assert dm.name == "fashion_mnist" and dm.input_shape == (1, 28, 28) and dm.num_classes == 10
    x, y = dm.search_tensors()
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10))
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05, "mean/std constants are right"
    xb, yb = next(iter(dm.train_loader(seed=0)))
    assert xb.shape == (128, 1, 28, 28) and yb.shape == (128,)
    tx, ty = next(iter(dm.test_loader()))
    assert tx.shape == (1000, 1, 28, 28)
    assert len(dm.calibration_batches(2, 64, seed=0)) == 2
    _assert_rng_unchanged(before)


@pytest.mark.parametrize("gz", [True, False])
def test_generated_fashion_mnist_loads(tmp_path: Path, gz: bool) -> None:
    root = _write_fmnist(tmp_path / "fm", gz=gz)
    dm = FashionMNIST(root=str(root), search_size=40, batch_size=32, eval_batch_size=16, augment=False)
    assert len(dm.train_dataset()) == 160 and len(dm.search_dataset()) == 40 and len(dm.test_dataset()) == 50
    # every training image appears exactly once per epoch in the train part (augmentation off)
    seen = []
    for xb, yb in dm.train_loader(seed=3):
        ids = _decode_ids(xb, dm.mean, dm.std)
        assert yb.tolist() == [i % 10 for i in ids]
        seen += ids
    assert sorted(seen) == dm.train_indices.tolist()
    test_ids = [i for xb, _ in dm.test_loader() for i in _decode_ids(xb, dm.mean, dm.std)]
    assert test_ids == list(range(10_000, 10_050)), "the test loader goes through the test set in order"
    x, y = dm.test_dataset()[3]
    assert x.shape == (1, 28, 28) and y == 3


def test_missing_files_error(tmp_path: Path) -> None:
    dm = MNIST(root=str(tmp_path / "nothing"))
    with pytest.raises(AmcError, match="MNIST files not found") as info:
        dm.setup()
    assert "download=true" in str(info.value) and "\n" not in str(info.value)
    resource = dataclasses.replace(mnist_mod.FASHION_MNIST, system_dirs=())
    with pytest.raises(AmcError, match="apt-get install dataset-fashion-mnist"):
        mnist_mod.locate_idx_files(resource, tmp_path / "nothing")


def test_idx_download_from_mirror(tmp_path: Path) -> None:
    mirror = _write_fmnist(tmp_path / "mirror")
    md5 = {p.name[: -len(".gz")]: md5_file(p) for p in mirror.iterdir()}
    resource = dataclasses.replace(
        mnist_mod.FASHION_MNIST,
        mirrors=("file:///nonexistent/", mirror.as_uri() + "/"),
        md5=md5,
        system_dirs=(),
    )
    root = tmp_path / "root"
    paths = mnist_mod.locate_idx_files(resource, root, download=True)
    assert all(p.parent == root for p in paths.values()) and len(paths) == 4
    train_x, train_y, test_x, test_y = mnist_mod.load_idx_dataset(resource, root)
    assert train_x.shape == (200, 1, 28, 28) and test_y.shape == (50,)
    bad = dataclasses.replace(resource, md5={k: "0" * 32 for k in md5})
    with pytest.raises(AmcError, match="MD5"):
        mnist_mod.locate_idx_files(bad, tmp_path / "root2", download=True)


def test_inconsistent_idx_files(tmp_path: Path) -> None:
    root = _write_fmnist(tmp_path / "fm")
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(AmcError, match="7 labels"):
        FashionMNIST(root=str(root), search_size=10).setup()


# --- search split -------------------------------------------------------------------------------------


def test_search_split_properties(fmnist_root: Path) -> None:
    def make(seed: int) -> FashionMNIST:
        return FashionMNIST(root=str(fmnist_root), search_size=50, split_seed=seed)

    a, b, c = make(0), make(0), make(1)
    train, search = a.train_indices, a.search_indices
    assert len(search) == 50 and len(train) == 150
    assert not set(train.tolist()) & set(search.tolist())
    assert sorted(train.tolist() + search.tolist()) == list(range(200))
    assert torch.equal(search, b.search_indices) and torch.equal(train, b.train_indices)
    assert not torch.equal(search, c.search_indices)
    # the search data really are those training images, and never test images
    x, y = a.search_tensors()
    assert _decode_ids(x, a.mean, a.std) == search.tolist()
    assert y.tolist() == [i % 10 for i in search.tolist()]
    assert a.search_tensors() is a.search_tensors(), "cached"
    ids = [i for xb, _ in a.search_loader() for i in _decode_ids(xb, a.mean, a.std)]
    assert ids == search.tolist()


def test_split_indices_function() -> None:
    train, search = split_indices(1000, 100, seed=5)
    assert len(search) == 100 and len(train) == 900
    assert torch.equal(torch.sort(torch.cat([train, search])).values, torch.arange(1000))
    assert torch.equal(split_indices(1000, 100, seed=5)[1], search)
    for bad in (-1, 1000, 1001):
        with pytest.raises(AmcError, match="search_size"):
            split_indices(1000, bad, seed=0)


def test_data_code_leaves_global_rngs_alone(fmnist_root: Path) -> None:
    before = _rng_states()
    dm = FashionMNIST(root=str(fmnist_root), search_size=50, batch_size=16, eval_batch_size=32)
    dm.setup()
    dm.search_tensors()
    for loader in (dm.train_loader(seed=1), dm.test_loader(), dm.search_loader()):
        for _ in loader:
            pass
    dm.calibration_batches(3, 8, seed=2)
    _ = dm.train_dataset()[0]
    _assert_rng_unchanged(before)


def test_search_size_too_large(tmp_path: Path, fmnist_root: Path) -> None:
    with pytest.raises(AmcError, match="search_size=70000") as info:
        FashionMNIST(root=str(tmp_path), search_size=70000)
    assert "60000" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(AmcError, match="search_size"):
        FashionMNIST(root=str(tmp_path), search_size=-1)
    dm = FashionMNIST(root=str(fmnist_root), search_size=500)  # fits 60000, not the 200 generated images
    with pytest.raises(AmcError, match="200 training images"):
        dm.setup()


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (FashionMNIST, {"num_classes": 100}, "num_classes=100"),
        (CIFAR10, {"num_classes": 100}, "num_classes=10"),
        (CIFAR100, {"num_classes": 10}, "num_classes=100"),
        (FashionMNIST, {"in_channels": 3}, "in_channels"),
        (CIFAR10, {"image_size": 28}, "image_size"),
        (FashionMNIST, {"batch_size": 0}, "batch_size"),
    ],
)
def test_mismatched_arguments(tmp_path: Path, cls: type, kwargs: dict, match: str) -> None:
    with pytest.raises(AmcError, match=match) as info:
        cls(root=str(tmp_path), **kwargs)
    assert "\n" not in str(info.value)


# --- loaders, augmentation, calibration ---------------------------------------------------------------


def test_train_loader_is_seeded_and_epochs_differ(fmnist_root: Path) -> None:
    dm = FashionMNIST(root=str(fmnist_root), search_size=50, batch_size=32)
    first = [x for x, _ in dm.train_loader(seed=7)]
    again = [x for x, _ in dm.train_loader(seed=7)]
    other = [x for x, _ in dm.train_loader(seed=8)]
    assert len(first) == 150 // 32, "full batches only"
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    loader = dm.train_loader(seed=7)
    epoch1 = [y for _, y in loader]
    epoch2 = [y for _, y in loader]
    assert not all(torch.equal(a, b) for a, b in zip(epoch1, epoch2, strict=True)), "new permutation per epoch"


def test_loader_results_do_not_depend_on_workers(fmnist_root: Path) -> None:
    kwargs = {"root": str(fmnist_root), "search_size": 50, "batch_size": 50}
    serial = [b for b in FashionMNIST(**kwargs).train_loader(seed=4)]
    parallel = [b for b in FashionMNIST(**kwargs, num_workers=2).train_loader(seed=4)]
    for (x0, y0), (x1, y1) in zip(serial, parallel, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_augmentation_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g)
    for aug in (Augmentation(pad=2), Augmentation(pad=4, flip=True), Augmentation(flip=True)):
        out = aug(images, torch.Generator().manual_seed(1))
        r = torch.Generator().manual_seed(1)
        p = aug.pad
        oy = torch.randint(0, 2 * p + 1, (16, 1), generator=r)
        ox = torch.randint(0, 2 * p + 1, (16, 1), generator=r)
        flips = torch.rand(16, 1, generator=r) < 0.5 if aug.flip else torch.zeros(16, 1, dtype=torch.bool)
        padded = torch.nn.functional.pad(images, (p, p, p, p))
        for i in range(16):
            ref = padded[i, :, oy[i, 0] : oy[i, 0] + 8, ox[i, 0] : ox[i, 0] + 8]
            if flips[i, 0]:
                ref = ref.flip(-1)
            assert torch.equal(out[i], ref)
    assert Augmentation()(images, g) is images


def test_augmented_batches_keep_labels(fmnist_root: Path) -> None:
    dm = FashionMNIST(root=str(fmnist_root), search_size=50, batch_size=150)
    ((x_aug, y_aug),) = list(dm.train_loader(seed=0))
    plain = FashionMNIST(root=str(fmnist_root), search_size=50, batch_size=150, augment=False)
    ((x_plain, y_plain),) = list(plain.train_loader(seed=0))
    assert torch.equal(y_aug, y_plain), "same shuffle, only the pixels change"
    assert not torch.equal(x_aug, x_plain)
    assert x_aug.shape == x_plain.shape


def test_calibration_batches_come_from_train_part(fmnist_root: Path) -> None:
    dm = FashionMNIST(root=str(fmnist_root), search_size=50)
    batches = dm.calibration_batches(n=4, batch_size=60, seed=0)  # 240 > 150 train images: wraps around
    assert [len(x) for x, _ in batches] == [60] * 4
    ids = [i for x, _ in batches for i in _decode_ids(x, dm.mean, dm.std)]
    train = set(dm.train_indices.tolist())
    assert set(ids) <= train and set(ids[:150]) == train
    again = dm.calibration_batches(n=4, batch_size=60, seed=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert dm.calibration_batches(0, 8, seed=0) == []
    with pytest.raises(AmcError, match="calibration"):
        dm.calibration_batches(1, 0, seed=0)


# --- CIFAR --------------------------------------------------------------------------------------------


def test_cifar10_loads_generated_batches(tmp_path: Path) -> None:
    _write_cifar10(tmp_path / "c10")
    before = _rng_states()
    dm = CIFAR10(root=str(tmp_path / "c10"), search_size=30, batch_size=16, eval_batch_size=8)
    assert dm.input_shape == (3, 32, 32) and dm.num_classes == 10
    assert len(dm.train_dataset()) == 70 and len(dm.search_dataset()) == 30 and len(dm.test_dataset()) == 20
    x, y = dm.search_tensors()
    ids = _decode_ids(x, dm.mean, dm.std)
    assert ids == dm.search_indices.tolist()
    assert y.tolist() == [(i % 20 + i // 20) % 10 for i in ids]
    # pixels survive the channel-major reshape: compare whole test images with the source
    src = torch.from_numpy(_id_images(20, 3, 32, start=10_000)).float() / 255
    mean, std = torch.tensor(dm.mean).view(3, 1, 1), torch.tensor(dm.std).view(3, 1, 1)
    for i in (0, 5, 19):
        image, label = dm.test_dataset()[i]
        torch.testing.assert_close(image * std + mean, src[i], atol=1e-5, rtol=0)
        assert label == i % 10
    xb, yb = next(iter(dm.train_loader(seed=0)))
    assert xb.shape == (16, 3, 32, 32)
    _assert_rng_unchanged(before)


def test_cifar100_loads_generated_batches(tmp_path: Path) -> None:
    _write_cifar100(tmp_path / "c100")
    dm = CIFAR100(root=str(tmp_path / "c100"), search_size=10, eval_batch_size=7)
    assert dm.num_classes == 100
    x, y = dm.search_tensors()
    ids = _decode_ids(x, dm.mean, dm.std)
    assert y.tolist() == [(i * 7) % 100 for i in ids]
    test_ids = [i for xb, _ in dm.test_loader() for i in _decode_ids(xb, dm.mean, dm.std)]
    assert test_ids == list(range(10_000, 10_030))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


@pytest.mark.parametrize("payload", ["os.system", "eval"])
def test_malicious_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: str) -> None:
    monkeypatch.chdir(tmp_path)
    evil = _Evil() if payload == "os.system" else type("E", (), {"__reduce__": lambda s: (eval, ("1+1",))})()
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": evil, b"labels": []}, protocol=2))
    with pytest.raises(AmcError, match="not allowed") as info:
        load_cifar_pickle(folder / "data_batch_3")
    assert "data_batch_3" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(AmcError, match="not allowed"):
        CIFAR10(root=str(tmp_path), search_size=10).setup()
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_corrupt_cifar_files(tmp_path: Path) -> None:
    folder = _write_cifar10(tmp_path)
    batch = folder / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(AmcError, match="corrupt") as info:
        CIFAR10(root=str(tmp_path), search_size=10).setup()
    assert "data_batch_1" in str(info.value)
    write_cifar_batch(batch, {b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]})
    with pytest.raises(AmcError, match="3072"):
        CIFAR10(root=str(tmp_path), search_size=10).setup()
    write_cifar_batch(batch, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(AmcError, match="labels outside"):
        CIFAR10(root=str(tmp_path), search_size=10).setup()
    (folder / "test_batch").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(AmcError, match="not a CIFAR batch dict"):
        load_cifar_pickle(folder / "test_batch")


def test_cifar_archive_extract_and_download(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    _write_cifar10(staging)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    resource = dataclasses.replace(cifar_mod.CIFAR10, url=archive.as_uri(), md5=md5_file(archive))
    # download=True: fetched through the URL, checked, extracted
    root = tmp_path / "root"
    folder = cifar_mod.locate_cifar(resource, root, download=True)
    assert folder == root / "cifar-10-batches-py" and (folder / "test_batch").is_file()
    train_x, train_y, test_x, test_y = cifar_mod.load_cifar(resource, root)
    assert train_x.shape == (100, 3, 32, 32) and test_y.shape == (20,)
    # an archive placed by hand is checked against the official MD5 before extraction
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "cifar-10-python.tar.gz").write_bytes(archive.read_bytes())
    with pytest.raises(AmcError, match="MD5"):
        cifar_mod.locate_cifar(cifar_mod.CIFAR10, manual)
    with pytest.raises(AmcError, match="CIFAR-100 not found"):
        CIFAR100(root=str(tmp_path / "empty"), search_size=10).setup()


# --- ImageNet, registry, configs ----------------------------------------------------------------------


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.skipif(_torchvision_importable(), reason="torchvision is installed; the error path cannot run")
def test_imagenet_needs_torchvision(tmp_path: Path) -> None:
    with pytest.raises(AmcError, match="pip install torchvision matching your torch") as info:
        ImageNet(root=str(tmp_path))
    assert "\n" not in str(info.value)
    with pytest.raises(AmcError, match="torchvision"):
        build_data("imagenet", root=str(tmp_path))


def test_build_data_registry(tmp_path: Path) -> None:
    assert isinstance(build_data("fashion_mnist", root=str(tmp_path)), FashionMNIST)
    assert isinstance(build_data("Fashion-MNIST", root=str(tmp_path)), FashionMNIST)
    assert type(build_data("mnist", root=str(tmp_path))) is MNIST
    assert type(build_data("CIFAR100", root=str(tmp_path))) is CIFAR100
    with pytest.raises(AmcError, match="unknown dataset 'svhn'") as info:
        build_data("svhn", root=str(tmp_path))
    for name in ("cifar10", "cifar100", "fashion_mnist", "imagenet", "mnist"):
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("config", "cls"),
    [("fashion_mnist", FashionMNIST), ("mnist", MNIST), ("cifar10", CIFAR10), ("cifar100", CIFAR100)],
)
def test_hydra_configs_instantiate(tmp_path: Path, config: str, cls: type) -> None:
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "data": OmegaConf.load(CONF_DIR / f"{config}.yaml")})
    dm = instantiate(cfg.data)
    assert type(dm) is cls and dm.root.startswith(str(tmp_path))
    assert cfg.data.num_classes == dm.num_classes and cfg.data.in_channels == dm.in_channels
    assert dm.input_shape == (cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    assert dm.search_size == 5000 and not dm.download


def test_imagenet_config_values(tmp_path: Path) -> None:
    cfg = OmegaConf.load(CONF_DIR / "imagenet.yaml")
    assert cfg._target_ == "amc.data.ImageNet"
    assert (cfg.num_classes, cfg.in_channels, cfg.image_size, cfg.search_size) == (1000, 3, 224, 3000)
    if not _torchvision_importable():
        full = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "data": cfg})
        with pytest.raises(Exception, match=r"torchvision") as info:  # Hydra wraps the AmcError, message kept
            instantiate(full.data)
        cause = info.value if isinstance(info.value, AmcError) else info.value.__cause__
        assert isinstance(cause, AmcError) and "torchvision" in str(cause)


class _FakeImageFolder(torch.utils.data.Dataset):
    """Stands in for torchvision's ImageFolder: the image is filled with the number in its file name."""

    def __init__(self, root: str, transform: object = None) -> None:
        self.classes = sorted(d.name for d in Path(root).iterdir() if d.is_dir())
        self.samples = [(f, i) for i, c in enumerate(self.classes) for f in sorted((Path(root) / c).iterdir())]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return torch.full((3, 224, 224), float(path.stem)), label


def test_imagenet_plumbing_with_fake_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("torchvision")
    op = lambda *args, **kwargs: (args, kwargs)  # noqa: E731
    fake.transforms = types.SimpleNamespace(  # type: ignore[attr-defined]
        RandomResizedCrop=op,
        RandomHorizontalFlip=op,
        Resize=op,
        CenterCrop=op,
        ToTensor=op,
        Normalize=op,
        Compose=op,
    )
    fake.datasets = types.SimpleNamespace(ImageFolder=_FakeImageFolder)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    for split, start, n in (("train", 0, 10), ("val", 100, 4)):
        for i in range(start, start + n):
            folder = tmp_path / split / f"n0{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.JPEG").write_bytes(b"")
    before = _rng_states()
    dm = ImageNet(root=str(tmp_path), search_size=4, batch_size=3, eval_batch_size=5, num_workers=0)
    assert dm.input_shape == (3, 224, 224)
    folder = _FakeImageFolder(str(tmp_path / "train"))
    ids_of = [int(p.stem) for p, _ in folder.samples]
    x, y = dm.search_tensors()
    assert x.shape == (4, 3, 224, 224)
    assert x[:, 0, 0, 0].long().tolist() == [ids_of[i] for i in dm.search_indices.tolist()]
    assert len(dm.train_dataset()) == 6 and len(dm.test_dataset()) == 4
    assert sum(len(xb) for xb, _ in dm.train_loader(seed=0)) == 6
    assert sorted(int(v) for xb, _ in dm.test_loader() for v in xb[:, 0, 0, 0]) == [100, 101, 102, 103]
    calib = dm.calibration_batches(2, 3, seed=0)
    train_ids = {ids_of[i] for i in dm.train_indices.tolist()}
    assert [len(b[0]) for b in calib] == [3, 3]
    assert {int(v) for xb, _ in calib for v in xb[:, 0, 0, 0]} <= train_ids
    _assert_rng_unchanged(before)
    with pytest.raises(AmcError, match="cannot be downloaded"):
        ImageNet(root=str(tmp_path), download=True)
    flat = tmp_path / "flat"
    (flat / "train" / "n00").mkdir(parents=True)
    (flat / "val").mkdir()
    (flat / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"")
    with pytest.raises(AmcError, match="no class sub-folders"):
        ImageNet(root=str(flat), search_size=0).setup()


def test_fetch_command_says_where_the_files_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_pretrain import make_fmnist

    from amc.data.__main__ import main

    make_fmnist(tmp_path / "fm", n_train=60, n_test=20)
    assert main(["fashion_mnist", str(tmp_path / "fm")]) == 0
    assert capsys.readouterr().out.strip() == f"fashion_mnist: ready ({tmp_path / 'fm'})"
    # Files in a system folder searched after root (Debian's package): said so, and root stays untouched.
    system = dataclasses.replace(FashionMNIST.RESOURCE, system_dirs=(str(tmp_path / "fm"),))
    monkeypatch.setattr(FashionMNIST, "RESOURCE", system)
    assert main(["fashion_mnist", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out.strip()
    assert (
        out
        == f"fashion_mnist: ready ({tmp_path / 'fm'}, found there: nothing was downloaded into {tmp_path / 'empty'})"
    )
    assert not (tmp_path / "empty").exists()


def test_missing_cifar_names_every_layout_it_reads(tmp_path: Path) -> None:
    with pytest.raises(AmcError, match=r"expected cifar-10-batches-py/, cifar-10-python.tar.gz, or its batch files"):
        CIFAR10(root=str(tmp_path)).setup()
