"""Data-parallel training on CPU with gloo: 2 processes x batch B against 1 process x batch 2B.

Two sessions of 2 spawned processes (tests/dist_helpers/workers.py) save what they computed; the
single-process references are computed here from the same seeds. One more test starts
``torchrun -m visionssl pretrain`` itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_helpers import workers
from dist_helpers.workers import METHODS, WORLD, B

import visionssl as vs
from visionssl import distributed
from visionssl.data import BatchLoader, load_dataset
from visionssl.eval import extract_features, knn

ATOL = 1e-5  # the acceptance bound: same loss and gradients within 1e-5


def load_results(out: Path, session: str) -> list[dict]:
    return [torch.load(out / f"{session}_rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("equivalence")
    workers.run(workers.equivalence, out)
    return load_results(out, "equivalence")


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> tuple[list[dict], Path]:
    out = tmp_path_factory.mktemp("resume")
    workers.run(workers.resume, out)
    return load_results(out, "resume"), out


# ----------------------------------------------------------------------------- without processes
def test_loader_ranks_split_every_global_batch_in_rank_order():
    ds = load_dataset("synthetic:30", image_size=8)
    whole = BatchLoader(ds, batch_size=8, seed=3)
    ranks = [BatchLoader(ds, batch_size=8, seed=3, rank=r, world_size=WORLD) for r in range(WORLD)]
    assert len(ranks[0]) == len(whole) == 3  # steps per epoch do not depend on the number of processes
    for epoch in (0, 1):
        for start in (0, 2):  # a resumed epoch starts at batch_in_epoch
            expected = [i for i, _ in whole.epoch(epoch, start)]
            shards = [[i for i, _ in loader.epoch(epoch, start)] for loader in ranks]
            assert [torch.cat(parts).tolist() for parts in zip(*shards)] == [i.tolist() for i in expected]
            assert all(torch.equal(x, ds.images[i]) for i, x in ranks[1].epoch(epoch, start))


def test_loader_refuses_a_global_batch_the_ranks_cannot_share():
    ds = load_dataset("synthetic:30", image_size=8)
    with pytest.raises(ValueError, match="global batch and must be divisible by the number of processes"):
        BatchLoader(ds, batch_size=7, world_size=2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size=2\)"):
        BatchLoader(ds, batch_size=8, rank=2, world_size=2)


def test_shard_bounds_cover_the_items_once_in_order():
    for n, w in [(10, 3), (5, 2), (2, 2), (7, 4)]:
        bounds = [distributed.shard_bounds(n, r, w) for r in range(w)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1


def test_one_process_collectives_are_no_ops():
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    assert torch.equal(vs.losses.nt_xent(z1, z2, gather_distributed=True), vs.losses.nt_xent(z1, z2))
    x = torch.randn(3, 4)
    assert distributed.all_gather_no_grad(x).equal(x) and distributed.local_slice(x) is x
    assert distributed.gather_rows(x, 3) is x


# ----------------------------------------------------------------------------- 2 processes x B == 1 process x 2B
def test_all_gather_with_grad_sums_every_ranks_gradient_onto_the_owner(equivalence):
    weights = torch.arange(12.0).reshape(4, 3)  # rank r's loss: sum((r + 1) * weights * gathered)
    for rank, result in enumerate(equivalence):
        assert torch.equal(result["gather"]["value"], torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)]))
        expected = (1 + 2) * weights[2 * rank : 2 * rank + 2]  # both ranks' losses reach this rank's rows
        assert torch.equal(result["gather"]["grad"], expected)


def test_host_collectives_and_gathering_uneven_blocks(equivalence):
    rows = torch.arange(10.0).reshape(5, 2)  # blocks of 3 and 2 rows, sent 2 rows at a time
    for rank, result in enumerate(equivalence):
        assert torch.equal(result["rows_all"], rows)
        assert (result["rows_dst1"] is None) if rank == 0 else torch.equal(result["rows_dst1"], rows)
        assert result["any"] == (True, False)
        assert result["object"] == {"rank": 1} and result["buffer"].tolist() == [1]


@pytest.mark.parametrize("name", list(METHODS))
def test_two_processes_give_the_loss_and_gradients_of_one_process_on_the_global_batch(equivalence, name):
    method = workers.build(name, **METHODS[name])
    reference = workers.train_steps(method, method, workers.views_for(name))  # no process group: one process, 2B images
    ranks = [result[name] for result in equivalence]
    for step in range(2):
        mean_loss = sum(r["loss"][step] for r in ranks) / WORLD  # the trainer logs this mean
        assert abs(float(mean_loss) - float(reference["loss"][step])) < ATOL, (name, step)
        grads = reference["grads"][step]
        assert set(ranks[0]["grads"][step]) == set(grads)
        for pname, grad in grads.items():
            assert torch.equal(ranks[0]["grads"][step][pname], ranks[1]["grads"][step][pname])  # DDP averaged
            torch.testing.assert_close(ranks[0]["grads"][step][pname], grad, atol=ATOL, rtol=0, msg=f"{name} {pname}")
            assert grad.abs().max() > 0 or pname.endswith("bias")  # gradients that test something


def test_moco_queue_holds_the_keys_of_all_ranks_in_single_process_order(equivalence):
    method = workers.build("moco", **METHODS["moco"])
    initial = method.queue.clone()
    reference = workers.train_steps(method, method, workers.global_views)
    assert int(reference["queue_ptr"]) == 2 * WORLD * B  # two global batches enqueued
    assert not torch.allclose(reference["queue"][: 2 * WORLD * B], initial[: 2 * WORLD * B])
    for result in equivalence:
        assert int(result["moco"]["queue_ptr"]) == int(reference["queue_ptr"])
        torch.testing.assert_close(result["moco"]["queue"], reference["queue"], atol=ATOL, rtol=0)


def test_distributed_knn_gives_the_single_process_accuracy(equivalence):
    bank, queries = workers.knn_data()
    torch.manual_seed(0)
    backbone = workers.TinyBackbone()
    (bank_x, bank_y), (query_x, query_y) = (
        extract_features(backbone, ds, batch_size=4, progress=False) for ds in (bank, queries)
    )
    for rank, result in enumerate(equivalence):
        torch.testing.assert_close(result["knn_bank"], bank_x, atol=1e-6, rtol=1e-5)
        if rank == 0:
            torch.testing.assert_close(result["knn_queries"], query_x, atol=1e-6, rtol=1e-5)
        else:
            assert result["knn_queries"] is None  # dst=0: only rank 0 receives them
    assert equivalence[0]["knn"] == knn(bank_x, bank_y, query_x, query_y, k=5)


def test_deepcluster_pseudo_labels_are_identical_on_every_rank_and_match_one_process(equivalence):
    method = workers.build("deepcluster", num_clusters=3, pca_dim=4)
    method.on_epoch_start(workers.deepcluster_trainer())
    for result in equivalence:
        assert torch.equal(result["deepcluster"], method.pseudo_labels)
    assert len(method.pseudo_labels.unique()) == 3


# ----------------------------------------------------------------------------- the trainer: stop, resume, rank 0 writes
def test_a_two_process_run_stopped_on_one_rank_resumes_to_the_uninterrupted_weights(resumed):
    results, _ = resumed
    for result in results:  # rank 1 alone got SIGTERM; both ranks stopped after step 3 (mid-epoch 1)
        assert result["stopped"]["stopped_by"] == "SIGTERM" and result["stopped"]["step"] == 3
        assert result["resumed"]["step"] == result["whole"]["step"] == 8
        for key, value in result["whole_state"].items():  # gloo sums in a fixed order on CPU: bitwise equal
            assert torch.equal(result["resumed_state"][key], value), key
    for key, value in results[0]["whole_state"].items():
        assert torch.equal(results[1]["whole_state"][key], value), key
    assert results[0]["whole"]["train/loss"] == results[1]["whole"]["train/loss"]  # the all-reduced loss


def test_rank_zero_alone_writes_the_run_directory(resumed):
    _, out = resumed
    for run, steps in (("whole", range(1, 9)), ("stopped", range(1, 9))):
        lines = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
        assert [line["step"] for line in lines if "train/loss" in line] == list(steps)  # once per step, not per rank
        assert (out / run / "checkpoints" / "last.pt").is_file() and (out / run / "config.yaml").is_file()
    ckpt = torch.load(out / "whole" / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["rng_per_rank"]) == WORLD and ckpt["step"] == 8


def test_configuration_errors_name_the_world_size(resumed):
    for result in resumed[0]:
        assert (
            "optim.batch_size=7 is the global batch, split over 2 processes: it must be a multiple of 2"
            in result["indivisible"]
        )
        assert "train.sync_bn=true needs GPUs" in result["sync_bn_cpu"]


# ----------------------------------------------------------------------------- torchrun -m visionssl
def test_torchrun_pretrain_with_two_processes(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "visionssl",
        "pretrain",
        "--method",
        "simclr",
        "--data",
        "synthetic:32",
        "--backbone",
        "resnet10t_cifar",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--image-size",
        "8",
        "--threads",
        "1",
        "--no-progress",
        "--optimizer",
        "sgd",
        "--out",
        str(out),
        "method.proj_hidden_dim=16",
        "method.proj_dim=8",
        "train.log_every=1",
        "train.knn_k=5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("pretraining simclr") == 1 and "x 2 processes" in done.stdout  # rank 0 alone reports
    assert "kNN top-1" in done.stdout  # the online kNN ran on features extracted by both ranks
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "train/loss" in line] == [1, 2, 3, 4]  # 32 images / global batch 8
    assert (out / "checkpoints" / "last.pt").is_file()
