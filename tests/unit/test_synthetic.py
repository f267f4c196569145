"""--dummy data made on the training device (data/synthetic.py) and what the trainer sees."""

import gc
import multiprocessing
from dataclasses import replace

import torch

from shufflenet_trainer.data.build import LoaderSettings, build_loaders
from shufflenet_trainer.data.synthetic import DeviceSyntheticBatches, batch_seed
from shufflenet_trainer.train.config import parse_config
from shufflenet_trainer.train.loop import Hooks
from shufflenet_trainer.train.run import run

DUMMY = LoaderSettings(
    None,
    batch_size=4,
    workers=3,  # asked for, and not needed: nothing is made on the host
    dummy=True,
    dummy_size=24,
    dummy_classes=5,
    image_size=8,
)


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def same(these, those) -> bool:
    return len(these) == len(those) and all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
        for p, q in zip(these, those, strict=True)
    )


def test_dummy_batches_are_made_without_worker_processes() -> None:
    loaders = build_loaders(DUMMY)
    assert isinstance(loaders.train, DeviceSyntheticBatches)
    assert loaders.train.workers == 0 and loaders.val.workers == 0
    before = set(multiprocessing.active_children())
    got = batches(loaders.train)
    assert set(multiprocessing.active_children()) == before
    assert len(got) == len(loaders.train) == 6
    x, y = got[0]
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.uint8
    assert x.is_contiguous(memory_format=torch.channels_last)  # as host batches are
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 5
    assert x.device == torch.device("cpu")
    assert len(batches(loaders.val)) == 1  # 24 // 10 = 2 val samples, one partial batch


def test_dummy_batches_depend_on_seed_rank_epoch_and_position_only() -> None:
    a, b = build_loaders(DUMMY), build_loaders(DUMMY)
    first, again = batches(a.train), batches(b.train)
    assert same(first, again)
    assert not torch.equal(first[0][0], first[1][0])  # batches differ within an epoch
    a.set_epoch(1)
    assert not torch.equal(batches(a.train)[0][0], first[0][0])  # and between epochs
    other_rank = build_loaders(replace(DUMMY, rank=1, world_size=2, batch_size=2))
    same_rank0 = build_loaders(replace(DUMMY, rank=0, world_size=2, batch_size=2))
    assert not torch.equal(batches(other_rank.train)[0][0], batches(same_rank0.train)[0][0])
    other_seed = build_loaders(replace(DUMMY, seed=1))
    assert not torch.equal(batches(other_seed.train)[0][0], first[0][0])
    # Validation batches are not training batches.
    assert not torch.equal(batches(a.val)[0][0], first[0][0][:2])


def test_a_resumed_epoch_draws_the_batches_it_skipped_to() -> None:
    loaders = build_loaders(DUMMY)
    loaders.set_epoch(2)
    whole = batches(loaders.train)
    loaders.set_epoch(2, start_batch=4)
    tail = batches(loaders.train)
    assert len(tail) == 2
    assert same(tail, whole[4:])


def test_batch_seeds_are_distinct_per_field() -> None:
    fields = [(0, 0, 0, 0, 0), (1, 0, 0, 0, 0), (0, 1, 0, 0, 0), (0, 0, 1, 0, 0)]
    fields += [(0, 0, 0, 1, 0), (0, 0, 0, 0, 1)]
    seeds = {batch_seed(*f) for f in fields}
    assert len(seeds) == len(fields)
    assert all(0 <= s < 2**63 for s in seeds)


def test_a_dummy_training_run_uses_device_batches_and_no_workers(tmp_path) -> None:
    # The run the CLI makes for `shufflenet-train --dummy -j 2 ...`, in this process.
    cfg = parse_config(
        [
            "--dummy",
            "-a",
            "shufflenet_v2_x0_5",
            "-b",
            "4",
            "-j",
            "2",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--val-resize",
            "32",
            "--max-steps-per-epoch",
            "2",
            "--num-classes",
            "3",
            "--shuffle-kernel",  # the measured choice, whatever the session's default
            "auto",
            "--output-dir",
            str(tmp_path),
        ],
        world_size=1,
        rank=0,
        default_device="cpu",
    )
    # Earlier tests' loaders stop their worker processes when they are collected: collect
    # them now, not during the run's steps, where their workers would be seen ending.
    gc.collect()
    multiprocessing.active_children()  # reaps the ended workers
    children_per_step = []
    hooks = Hooks()
    hooks.on_step.append(lambda event: children_per_step.append(multiprocessing.active_children()))
    assert run(cfg, hooks=hooks) == 0
    assert children_per_step == [[], []]
    log = next(tmp_path.rglob("train.log")).read_text()
    assert "decode synthetic" in log
    # The kernel choices, made during the first steps, are logged after the first epoch.
    assert "=> shuffle kernels auto: " in log
