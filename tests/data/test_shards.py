"""LitData shards: ``pack`` writes every sample exactly, ``StreamingShards`` streams it back.

Checked here: every key of every sample read back equal to the source (values and dtypes), for a
generated dataset holding every key of the sample contract and for a RasterSegmentation over
GeoTIFFs the test writes; compact storage (uint16 bands stay uint16 on disk); the epoch order
(a permutation, different every epoch, a function of the seed); refusal of per-epoch datasets; a
failed pack that continues from its completed shards and leaves no process behind; the CLI; the
DataModule's loaders; a Lightning fit resumed from a mid-epoch checkpoint; and two gloo processes
that share one epoch without overlap and with equal batch counts (slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from litdata import StreamingDataset
from torch.utils.data import Dataset

from noisyseg.cli import main as cli_main
from noisyseg.data import ConcatSources, DataModule, RasterSegmentation, StreamingShards, VTSPairs
from noisyseg.data.loading import IGNORE_INDEX, collate, make_sample
from noisyseg.data.shards import MANIFEST, PENDING, pack


class AllKeys(Dataset):
    """Seeded samples with every key of the sample contract; values chosen to test the compact storage."""

    def __init__(self, n: int = 24, size: int = 8) -> None:
        self.n, self.size = n, size
        self.normalization = {"mean": [1.0, 2.0], "std": [3.0, 4.0]}
        self.num_classes = 3

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = np.random.default_rng(int(i))
        s = self.size
        image = g.integers(0, 60000, (2, s, s)).astype(np.uint16)  # integer bands beyond uint8 and int16
        image2 = g.normal(size=(2, s, s)).astype(np.float32)  # fractional: must stay float32
        mask = g.integers(0, 3, (s, s))
        mask[0, 0] = IGNORE_INDEX
        mask2 = g.integers(-1, 70000, (s, s))  # needs int32
        return make_sample(image, mask, clean_mask=g.integers(0, 3, (s, s)), image2=image2, mask2=mask2,
                           noisy_pair=bool(i % 3 == 0), change_mask=g.integers(0, 2, (s, s)),
                           meta={"id": f"s{i}", "index": int(i), "window": (1, 2), "rate": np.float32(0.25),
                                 "nested": {"k": [1, 2]}})


def same_sample(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        if key == "meta":
            assert json.loads(json.dumps(a[key], default=lambda v: v.item())) == b[key]
        else:
            assert a[key].dtype == b[key].dtype, key
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_pack_reads_back_every_key_of_every_sample_in_source_order(tmp_path: Path, compression) -> None:
    src = AllKeys()
    m = pack(src, tmp_path / "p", chunk_bytes="4KB", compression=compression, num_workers=2, progress=False)
    shards = StreamingShards(str(tmp_path / "p"), shuffle=False)
    assert len(shards) == len(src) == m["samples"] == 24
    for i in range(len(src)):
        same_sample(src[i], shards[i])
    assert shards[5]["meta"]["window"] == [1, 2]  # JSON: a tuple comes back as a list
    # several shards, written by both workers, and the manifest says so
    files = sorted(p.name for p in (tmp_path / "p").glob("chunk-*.bin"))
    assert m["shards"] == len(files) > 2 and {f.split("-")[1] for f in files} == {"0", "1"}
    assert m["bytes"] == sum((tmp_path / "p" / f).stat().st_size for f in files) + \
        (tmp_path / "p" / "index.json").stat().st_size
    assert shards.normalization == src.normalization and shards.num_classes == 3
    assert not (tmp_path / "p" / PENDING).exists() and not (tmp_path / "p" / ".checkpoints").exists()
    assert m["compression"] == json.loads((tmp_path / "p" / "index.json").read_text())["config"]["compression"] \
        == compression
    # stored compactly: the narrowest exact dtype per key
    raw = StreamingDataset(str(tmp_path / "p"))[0]
    assert {k: raw[k].dtype for k in ("image", "image2", "mask", "mask2", "change_mask")} == {
        "image": torch.uint16, "image2": torch.float32, "mask": torch.uint8, "mask2": torch.int32,
        "change_mask": torch.uint8}


def write_tif(path: Path, array: np.ndarray) -> None:
    c, h, w = array.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype=array.dtype.name,
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4000000)) as dst:
        dst.write(array)


def test_raster_segmentation_packs_exactly(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    for k in range(3):
        write_tif(tmp_path / "img" / f"t{k}.tif", g.integers(0, 60000, (4, 16, 16)).astype(np.uint16))
        write_tif(tmp_path / "msk" / f"t{k}.tif", g.integers(0, 2, (1, 16, 16)).astype(np.uint8))
    src = RasterSegmentation("img/*.tif", "msk/*.tif", root=str(tmp_path), patch_size=8, normalize=False)
    pack(src, tmp_path / "p", chunk_bytes="2KB", num_workers=1, progress=False)
    shards = StreamingShards(str(tmp_path / "p"), shuffle=False)
    assert len(shards) == len(src) == 12
    for i in range(len(src)):
        same_sample(src[i], shards[i])
    assert StreamingDataset(str(tmp_path / "p"))[3]["image"].dtype == torch.uint16


PACK_AFTER_THREADED_TORCH = """
import sys, numpy as np, torch
from torch.utils.data import Dataset
from noisyseg.data.loading import make_sample
from noisyseg.data.shards import pack

class Floats(Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, i):  # 2 x 160 x 160 floats: more than one thread's share of an elementwise op
        g = np.random.default_rng(i)
        return make_sample(g.normal(size=(2, 160, 160)).astype(np.float32), g.integers(0, 2, (160, 160)))

torch.set_num_threads(2)
torch.ones(10**6).abs().sum()  # the parent's OpenMP threads exist now, as in any training script
print(pack(Floats(), sys.argv[1], chunk_bytes="200KB", num_workers=2, progress=False)["samples"])
"""


def test_pack_after_threaded_torch_does_not_hang(tmp_path: Path) -> None:
    # GNU OpenMP's threads do not survive fork: a packing process forked from a parent that had run a
    # threaded torch op waited forever on the first threaded op of its own (the float check of encode_sample)
    proc = subprocess.Popen([sys.executable, "-c", PACK_AFTER_THREADED_TORCH, str(tmp_path / "p")], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    try:
        out, err = proc.communicate(timeout=90)  # ~10 s when it works
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        subprocess.run(["pkill", "-9", "-f", str(tmp_path / "p")], check=False)  # the packers' own group too
        proc.communicate()
        pytest.fail("packing hung after a threaded torch op in the parent")
    assert proc.returncode == 0, err[-2000:]
    assert out.split()[-1] == "4"


def test_normalisation_on_read(tmp_path: Path) -> None:
    src = AllKeys(n=3)
    pack(src, tmp_path / "p", chunk_bytes="4KB", num_workers=1, progress=False)
    shards = StreamingShards(str(tmp_path / "p"), shuffle=False, mean=[10.0, 20.0], std=[2.0, 5.0])
    want = (src[1]["image"] - torch.tensor([10.0, 20.0])[:, None, None]) / torch.tensor([2.0, 5.0])[:, None, None]
    assert torch.equal(shards[1]["image"], want)
    assert shards.normalization == {"mean": [10.0, 20.0], "std": [2.0, 5.0]}
    with pytest.raises(ValueError, match="both mean and std"):
        StreamingShards(str(tmp_path / "p"), mean=[1.0, 1.0])


def epoch_orders(input_dir: Path, seed: int, epochs: int) -> list[list[int]]:
    shards = StreamingShards(str(input_dir), seed=seed)
    loader = shards.dataloader(batch_size=5, collate_fn=collate)
    return [[m["index"] for b in loader for m in b["meta"]] for _ in range(epochs)]


def test_training_order_is_a_permutation_new_every_epoch_and_seeded(tmp_path: Path) -> None:
    pack(AllKeys(n=40, size=4), tmp_path / "p", chunk_bytes="1KB", num_workers=1, progress=False)
    a = epoch_orders(tmp_path / "p", seed=1, epochs=3)
    assert all(sorted(o) == list(range(40)) for o in a)
    assert a[0] != a[1] != a[2] != a[0]
    assert a[0] != list(range(40))
    assert epoch_orders(tmp_path / "p", seed=1, epochs=3) == a  # a function of (seed, epoch)
    assert epoch_orders(tmp_path / "p", seed=2, epochs=1)[0] != a[0]


def test_per_epoch_datasets_are_refused_by_name(tmp_path: Path) -> None:
    pairs = VTSPairs("train", length=4, size=16, r=0.5)
    with pytest.raises(ValueError, match="VTSPairs draws new samples every epoch"):
        pack(pairs, tmp_path / "p", progress=False)
    with pytest.raises(ValueError, match="VTSPairs draws new samples every epoch"):  # also inside a wrapper
        pack(ConcatSources([pairs]), tmp_path / "q", progress=False)
    assert not (tmp_path / "p").exists()


class Flaky(AllKeys):
    """Fails at ``fail_at`` while ``flag`` exists; logs every index it reads to ``log``."""

    def __init__(self, n: int, fail_at: int, flag: Path, log: Path) -> None:
        super().__init__(n=n, size=4)
        self.fail_at, self.flag, self.log = fail_at, flag, log

    def __getitem__(self, i: int):
        if i == self.fail_at and self.flag.exists():
            raise OSError(f"cannot read tile {i}")
        with open(self.log, "a") as f:
            f.write(f"{int(i)}\n")
        return super().__getitem__(i)


def orphans() -> set[int]:
    """Processes re-parented to init that run this interpreter's command line (leftover pack helpers)."""
    me = Path("/proc/self/cmdline").read_bytes()
    out = set()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "cmdline").read_bytes() == me and (d / "stat").read_text().split()[3] == "1":
                out.add(int(d.name))
        except OSError:
            pass
    return out


def test_failed_pack_names_the_sample_and_continues_from_its_shards(tmp_path: Path) -> None:
    flag, log, out = tmp_path / "fail", tmp_path / "reads.log", tmp_path / "p"
    flag.touch()
    src = Flaky(30, fail_at=22, flag=flag, log=log)
    before = orphans()
    with pytest.raises(RuntimeError, match=r"Flaky\[22\]: OSError: cannot read tile 22.*rerun the same command"):
        pack(src, out, chunk_bytes="1KB", num_workers=1, progress=False)
    assert orphans() <= before  # the failed run's helper processes were killed
    assert (out / PENDING).exists() and not (out / MANIFEST).exists()
    with pytest.raises(ValueError, match="interrupted pack"):
        StreamingShards(str(out))
    with pytest.raises(ValueError, match=r"other settings \(chunk_bytes differ\)"):
        pack(src, out, chunk_bytes="2KB", num_workers=1, progress=False)
    flag.unlink()
    log.write_text("")
    m = pack(src, out, chunk_bytes="1KB", num_workers=1, progress=False)
    assert m["continued"]
    reread = sorted(int(x) for x in log.read_text().split())
    # sample 0 once (pack checks its keys), then only from the chunk in flight when it failed
    assert reread[0] == 0 and 15 <= reread[1] <= 22 and reread[1:] == list(range(reread[1], 30))
    shards = StreamingShards(str(out), shuffle=False)
    for i in range(30):
        same_sample(AllKeys.__getitem__(src, i), shards[i])
    with pytest.raises(ValueError, match="already holds a complete pack"):
        pack(src, out, chunk_bytes="1KB", num_workers=1, progress=False)
    m = pack(AllKeys(n=5), out, chunk_bytes="1KB", num_workers=1, overwrite=True, progress=False)
    assert not m["continued"] and len(StreamingShards(str(out))) == 5


def test_foreign_files_are_never_deleted(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a pack's"):
        pack(AllKeys(n=2), tmp_path / "p", overwrite=True, progress=False)
    assert (tmp_path / "p" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="pack writes a local folder"):
        pack(AllKeys(n=2), "s3://bucket/p", progress=False)


def test_cli_packs_a_data_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    vts = {"class_path": "noisyseg.data.VTSSegmentation", "init_args": {"split": "val", "length": 6, "size": 16}}
    cfg = tmp_path / "data.yaml"
    cfg.write_text(json.dumps({"data": {"class_path": "noisyseg.data.DataModule", "init_args": {"train": vts}}}))
    assert cli_main(["data", "pack", str(cfg), "--out", str(tmp_path / "p"), "--workers", "1", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("packed 6 samples into 1 shards,") and line.endswith(f"-> {tmp_path / 'p'}")
    from noisyseg.data import VTSSegmentation

    src, shards = VTSSegmentation(split="val", length=6, size=16), StreamingShards(str(tmp_path / "p"), shuffle=False)
    for i in range(6):
        same_sample(src[i], shards[i])
    assert json.loads((tmp_path / "p" / MANIFEST).read_text())["source"] == vts
    pairs = tmp_path / "pairs.yaml"
    pairs.write_text(json.dumps({"class_path": "noisyseg.data.VTSPairs", "init_args": {"length": 4, "size": 16}}))
    assert cli_main(["data", "pack", str(pairs), "--out", str(tmp_path / "q")]) == 2
    assert "VTSPairs draws new samples every epoch" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"class_path": "os.system", "init_args": {"command": "true"}}))
    assert cli_main(["data", "pack", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "'os.system' is refused" in capsys.readouterr().err


def test_datamodule_streams_training_and_reads_evaluation_in_order(tmp_path: Path) -> None:
    pack(AllKeys(n=10, size=4), tmp_path / "p", chunk_bytes="1KB", num_workers=1, progress=False)
    dm = DataModule(train=StreamingShards(str(tmp_path / "p"), seed=0),
                    val=StreamingShards(str(tmp_path / "p"), shuffle=False), batch_size=4, eval_batch_size=3)
    train = [b for b in dm.train_dataloader()]
    assert [len(b["meta"]) for b in train] == [4, 4, 2]
    assert sorted(m["index"] for b in train for m in b["meta"]) == list(range(10))
    assert train[0]["image"].shape == (4, 2, 4, 4) and train[0]["image"].dtype == torch.float32
    assert [m["index"] for b in dm.val_dataloader() for m in b["meta"]] == list(range(10))
    dm.drop_last = True
    assert [len(b["meta"]) for b in dm.train_dataloader()] == [4, 4]
    with pytest.raises(ValueError, match="replacement and samples_per_epoch are not supported"):
        DataModule(train=StreamingShards(str(tmp_path / "p")), samples_per_epoch=20).train_dataloader()


class Recorder:
    """A one-parameter Lightning module that records the sample indices of every training batch."""

    @staticmethod
    def make():
        import lightning as L

        class Module(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(1))
                self.seen: list[int] = []

            def training_step(self, batch, _):
                self.seen += [m["index"] for m in batch["meta"]]
                return (self.w * batch["image"].mean()).sum()

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.0)

        return Module()


def fit(shards_dir: Path, ckpt_dir: Path, max_steps: int, ckpt_path: str | None = None) -> list[int]:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    module = Recorder.make()
    dm = DataModule(train=StreamingShards(str(shards_dir), seed=3), batch_size=4, noise_report=0)
    trainer = L.Trainer(max_steps=max_steps, max_epochs=-1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=str(ckpt_dir),
                        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=1, save_top_k=-1)])
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module.seen


def test_lightning_fit_resumes_mid_epoch_where_it_stopped(tmp_path: Path, one_thread) -> None:
    pack(AllKeys(n=24, size=4), tmp_path / "p", chunk_bytes="1KB", num_workers=1, progress=False)
    whole = fit(tmp_path / "p", tmp_path / "a", max_steps=9)  # 6 steps an epoch: epoch 1 and half of epoch 2
    assert sorted(whole[:24]) == list(range(24)) and sorted(whole[24:]) != whole[24:]
    first = fit(tmp_path / "p", tmp_path / "b", max_steps=3)
    ckpt = tmp_path / "b" / "epoch=0-step=3.ckpt"
    torch.load(ckpt, weights_only=True)  # the loader state is plain data: noisyseg's weights-only reads accept it
    rest = fit(tmp_path / "p", tmp_path / "c", max_steps=9, ckpt_path=str(ckpt))
    assert first == whole[:12]
    assert first + rest == whole


# ---------------------------------------------------------------------------------- two processes
def _rank_epoch(rank: int, world: int, init_file: str, input_dir: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    shards = StreamingShards(input_dir, seed=0)  # built before the process group exists, as LightningCLI does
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    dm = DataModule(train=shards, batch_size=3, num_workers=1)
    loader = dm.train_dataloader()
    res = {epoch: [[m["index"] for m in b["meta"]] for b in loader] for epoch in (1, 2)}
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_ranks_share_each_epoch_without_overlap_and_with_equal_batches(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    n, world = 29, 2
    pack(AllKeys(n=n, size=4), tmp_path / "p", chunk_bytes="1KB", num_workers=2, progress=False)
    mp.spawn(_rank_epoch, args=(world, str(tmp_path / "init"), str(tmp_path / "p"), str(tmp_path)), nprocs=world,
             join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for epoch in (1, 2):
        batches = [res[r][epoch] for r in range(world)]
        assert len(batches[0]) == len(batches[1]) > 0  # the same number of steps on every rank
        seen = [[i for b in bs for i in b] for bs in batches]
        assert len(seen[0]) == len(seen[1])
        assert not set(seen[0]) & set(seen[1])  # no sample twice in an epoch across ranks
        assert len(set(seen[0]) | set(seen[1])) == len(seen[0]) * world >= n - world * 3  # drop_last trims little
    assert res[0][1] != res[0][2]  # a new order in epoch 2
