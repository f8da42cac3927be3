"""Evaluation speed, every peer measured in the same run on the same features.

1. kNN, 50,000 x 512 bank, 10,000 queries, k=20: ``vs.eval.knn`` (FAISS flat inner product) against
   scikit-learn's brute-force cosine ``KNeighborsClassifier`` (majority vote, same predictions) and against
   the chunked ``torch.mm`` + top-k of the anchor libraries (LightlySSL's ``knn_predict``, weighted vote).
2. A 1,000,000 x 512 bank on disk with the IVF index, in a child process whose peak RSS is reported; its
   accuracy is compared with exact (sharded) search on a sample of the queries.
3. The minibatch SGD probe sweep (``solver="sgd"``, for features that do not fit in memory: 30 learning-rate x
   weight-decay settings trained side by side, and an 8-setting one) against ONE scikit-learn
   ``LogisticRegression`` fit, same standardised features. The default L-BFGS probe is measured against
   ``LogisticRegressionCV`` by ``benchmarks/probe_vs_sklearn.py``.
4. Probe on cached features against the classic protocol (augmented images through the frozen backbone every
   epoch, SGD + cosine, BatchNorm head): wall time until the classic protocol reaches the cached probe's
   accuracy, with a tiny backbone on an elpv subset.

The features of 1-3 are synthetic: classes are clusters in a 64-dimensional latent space, projected to 512
dimensions with a little isotropic noise (like real embeddings: low intrinsic dimension), so accuracies are
neither 0 nor 100% and approximate search is tested on meaningful neighbourhoods.

    python benchmarks/eval_speed.py            # full sizes: several minutes on 2 CPU cores
    python benchmarks/eval_speed.py --quick    # small sizes, a smoke run (results not written unless --out)

Prints every timing and ratio; writes benchmarks/results/eval_speed_cpu.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_name, write_results  # noqa: E402

import visionssl as vs  # noqa: E402

LATENT = 64
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "eval_speed_cpu.json"
SECTIONS = ("knn", "ivf_1m", "probe_sweep", "cached_vs_classic")


def make_generator(classes: int, dim: int = 512, noise: float = 2.0, seed: int = 0):
    """A sampler of (features float32 (n, dim), labels (n,)) from ``classes`` latent clusters."""
    g = np.random.default_rng(seed)
    centers = g.standard_normal((classes, LATENT), dtype=np.float32)
    projection = g.standard_normal((LATENT, dim), dtype=np.float32) / np.sqrt(LATENT)

    def sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        y = r.integers(0, classes, n)
        z = centers[y] + noise * r.standard_normal((n, LATENT), dtype=np.float32)
        return z @ projection + 0.1 * r.standard_normal((n, dim), dtype=np.float32), y

    return sample


def best_time(fn, repeats: int):
    """(minimum wall-clock seconds over ``repeats`` calls, the last result)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM). Not ``ru_maxrss``: after fork + exec that also holds the
    parent's resident size at the fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return float("nan")


def load() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------------ 1. kNN
def knn_section(n: int, q: int, k: int, repeats: int) -> dict:
    from lightly.utils.benchmarking import knn_predict
    from sklearn.neighbors import KNeighborsClassifier

    sample = make_generator(100)
    x, y = sample(n, 1)
    xq, yq = sample(q, 2)
    print(f"\n[1] kNN: bank {n} x {x.shape[1]}, {q} queries, k={k} (load {load()})")

    t_ours_majority, ours_majority = best_time(
        lambda: vs.eval.knn_predict(x, y, xq, k=k, vote="majority")[k].argmax(1).numpy(), repeats
    )
    t_ours, ours = best_time(lambda: vs.eval.knn(x, y, xq, yq, k=k, temperature=0.07), repeats)

    def sklearn_run():
        return KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(x, y).predict(xq)

    t_sklearn, sk_pred = best_time(sklearn_run, repeats)

    def anchors(chunk: int):
        def run():
            bank = torch.nn.functional.normalize(torch.from_numpy(x), dim=1).t().contiguous()  # (D, N) as LightlySSL
            labels = torch.from_numpy(y)
            queries = torch.nn.functional.normalize(torch.from_numpy(xq), dim=1)
            return torch.cat(
                [
                    knn_predict(queries[i : i + chunk], bank, labels, 100, knn_k=k, knn_t=0.07)[:, 0]
                    for i in range(0, q, chunk)
                ]
            )

        return run

    torch_times = {}
    for chunk in (256, 1024):
        torch_times[chunk], torch_pred = best_time(anchors(chunk), repeats)
    t_torch = min(torch_times.values())
    torch_top1 = 100 * float((torch_pred.numpy() == yq).mean())
    result = {
        "bank": n,
        "queries": q,
        "dim": int(x.shape[1]),
        "k": k,
        "classes": 100,
        "ours_weighted_s": round(t_ours, 3),
        "ours_majority_s": round(t_ours_majority, 3),
        "sklearn_brute_cosine_s": round(t_sklearn, 3),
        "torch_mm_topk_s": {str(c): round(t, 3) for c, t in torch_times.items()},
        "ratio_vs_sklearn": round(t_sklearn / t_ours_majority, 2),
        "ratio_vs_torch_mm_topk": round(t_torch / t_ours, 2),
        "predictions_equal_sklearn": float((ours_majority == sk_pred).mean()),
        "top1_ours_weighted": round(ours["top1"], 2),
        "top1_torch_weighted": round(torch_top1, 2),
        "top1_sklearn_majority": round(100 * float((sk_pred == yq).mean()), 2),
    }
    print(
        f"  ours (FAISS flat)        weighted {t_ours:6.2f}s  majority {t_ours_majority:6.2f}s   top-1 {ours['top1']:.2f}%"
    )
    print(
        f"  scikit-learn brute       majority {t_sklearn:6.2f}s   -> ours is {result['ratio_vs_sklearn']:.2f}x faster "
        f"(same predictions: {100 * result['predictions_equal_sklearn']:.2f}%)"
    )
    print(
        f"  torch.mm + top-k chunks  weighted {t_torch:6.2f}s  {torch_times}   -> ours is "
        f"{result['ratio_vs_torch_mm_topk']:.2f}x faster (top-1 {torch_top1:.2f}%)"
    )
    return result


# ---------------------------------------------------------------------------------- 2. 1M bank, IVF
def ivf_section(n: int, q: int, sample_q: int, k: int, shard: int, nprobe: int | None) -> dict:
    sample = make_generator(100)
    with tempfile.TemporaryDirectory(prefix="visionssl-ivf-") as tmp:
        bank_path = Path(tmp) / "bank.npy"
        print(
            f"\n[2] IVF: writing a {n} x 512 float32 bank ({n * 512 * 4 / 2**30:.2f} GiB) to {bank_path} (load {load()})"
        )
        bank = np.lib.format.open_memmap(bank_path, mode="w+", dtype=np.float32, shape=(n, 512))
        labels = np.empty(n, dtype=np.int64)
        for start in range(0, n, 100_000):
            stop = min(n, start + 100_000)
            bank[start:stop], labels[start:stop] = sample(stop - start, 10 + start)
        bank.flush()
        del bank
        xq, yq = sample(q, 3)
        np.save(Path(tmp) / "labels.npy", labels)
        np.save(Path(tmp) / "queries.npy", xq)
        np.save(Path(tmp) / "query_labels.npy", yq)
        cmd = [
            sys.executable,
            __file__,
            "--ivf-child",
            tmp,
            "--k",
            str(k),
            "--sample-queries",
            str(sample_q),
            "--shard",
            str(shard),
        ] + (["--nprobe", str(nprobe)] if nprobe else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  IVF (nlist {result['nlist']}, nprobe {result['nprobe']}): build {result['ivf_build_and_search_s']:.1f}s "
        f"for {q} queries, top-1 {result['ivf_top1_sample']:.2f}% vs exact {result['exact_top1_sample']:.2f}% on "
        f"{sample_q} queries (|diff| {result['accuracy_gap_points']:.2f} points)"
    )
    print(
        f"  exact sharded search of the sample: {result['exact_sample_s']:.1f}s; peak RSS of the child "
        f"{result['peak_rss_gib']:.2f} GiB, {result['rss_after_imports_gib']:.2f} GiB of it after the imports (bank on disk {result['bank_gib']:.2f} GiB; an in-memory exact search "
        f"holds the bank and its normalised copy: {2 * result['bank_gib']:.2f} GiB)"
    )
    return result


def ivf_child(folder: str, k: int, sample_q: int, shard: int, nprobe: int | None) -> None:
    """Runs in its own process so that its peak RSS is the IVF search's alone."""
    baseline = peak_rss_gib()  # after importing torch, faiss and visionssl
    folder = Path(folder)
    bank = folder / "bank.npy"
    labels = np.load(folder / "labels.npy")
    xq, yq = np.load(folder / "queries.npy"), np.load(folder / "query_labels.npy")
    n = len(labels)
    nlist = round(n**0.5)
    nprobe = nprobe or max(1, nlist // 8)  # the default of vs.eval.knn
    start = time.perf_counter()
    ivf_votes = vs.eval.knn_predict(bank, labels, xq, k=k, index="ivf", nprobe=nprobe, shard_size=shard)[k]
    t_ivf = time.perf_counter() - start
    start = time.perf_counter()
    exact_votes = vs.eval.knn_predict(bank, labels, xq[:sample_q], k=k, index="sharded", shard_size=shard)[k]
    t_exact = time.perf_counter() - start
    ivf_top1 = vs.eval.rank_accuracy(ivf_votes[:sample_q], torch.from_numpy(yq[:sample_q]))["top1"]
    exact_top1 = vs.eval.rank_accuracy(exact_votes, torch.from_numpy(yq[:sample_q]))["top1"]
    peak = peak_rss_gib()
    print(
        json.dumps(
            {
                "bank": n,
                "queries": len(xq),
                "sample_queries": sample_q,
                "k": k,
                "nlist": nlist,
                "nprobe": nprobe,
                "shard_rows": shard,
                "ivf_build_and_search_s": round(t_ivf, 2),
                "exact_sample_s": round(t_exact, 2),
                "exact_all_queries_estimate_s": round(t_exact * len(xq) / sample_q, 1),
                "ivf_top1_sample": round(ivf_top1, 2),
                "ivf_top1_all": round(vs.eval.rank_accuracy(ivf_votes, torch.from_numpy(yq))["top1"], 2),
                "exact_top1_sample": round(exact_top1, 2),
                "accuracy_gap_points": round(abs(ivf_top1 - exact_top1), 2),
                "peak_rss_gib": round(peak, 3),
                "rss_after_imports_gib": round(baseline, 3),
                "bank_gib": round(n * 512 * 4 / 2**30, 3),
            }
        )
    )


# ----------------------------------------------------------------------------- 3. probe sweep vs sklearn
def probe_section(n: int, q: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sample = make_generator(10, noise=3.0, seed=5)
    x, y = sample(n, 4)
    xq, yq = sample(q, 6)
    print(f"\n[3] linear probe: {n} x {x.shape[1]} train, {q} test, 10 classes (load {load()})")
    start = time.perf_counter()
    ours = vs.eval.linear_probe(x, y, xq, yq, solver="sgd")
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    small = vs.eval.linear_probe(x, y, xq, yq, solver="sgd", lrs=(0.03, 0.1, 0.3, 1.0), weight_decays=(0.0, 1e-3))
    t_small = time.perf_counter() - start

    def sklearn_fit():
        scaler = StandardScaler().fit(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegression(max_iter=1000).fit(scaler.transform(x), y)
        return 100 * model.score(scaler.transform(xq), yq), model.n_iter_[0]

    start = time.perf_counter()
    sk_top1, sk_iters = sklearn_fit()
    t_sklearn = time.perf_counter() - start
    result = {
        "train": n,
        "test": q,
        "dim": int(x.shape[1]),
        "classes": 10,
        "settings": len(ours["sweep"]),
        "ours_sweep_s": round(t_ours, 2),
        "ours_top1": round(ours["top1"], 2),
        "ours_lr": ours["lr"],
        "ours_weight_decay": ours["weight_decay"],
        "ours_epochs_run": ours["epochs_run"],
        "sklearn_one_fit_s": round(t_sklearn, 2),
        "sklearn_top1": round(sk_top1, 2),
        "sklearn_iterations": int(sk_iters),
        "ratio_sklearn_one_fit_over_sweep": round(t_sklearn / t_ours, 2),
        "ours_8_settings_s": round(t_small, 2),
        "ours_8_settings_top1": round(small["top1"], 2),
        "ratio_sklearn_one_fit_over_8_settings": round(t_sklearn / t_small, 2),
    }
    print(
        f"  ours: {result['settings']} settings side by side + refit {t_ours:6.2f}s  top-1 {ours['top1']:.2f}% "
        f"(lr {ours['lr']}, wd {ours['weight_decay']}, {ours['epochs_run']} epochs)"
    )
    print(
        f"  scikit-learn LogisticRegression, one fit (C=1, lbfgs, {sk_iters} iterations) {t_sklearn:6.2f}s  top-1 "
        f"{sk_top1:.2f}%"
    )
    print(
        f"  -> one scikit-learn fit takes {result['ratio_sklearn_one_fit_over_sweep']:.2f}x the time of our {result['settings']}-setting SGD sweep; "
        f"an 8-setting sweep ({t_small:.2f}s, top-1 {small['top1']:.2f}%): "
        f"{result['ratio_sklearn_one_fit_over_8_settings']:.2f}x"
    )
    return result


# ------------------------------------------------------------------------ 4. cached vs classic protocol
def classic_section(train_n: int, test_n: int, epochs: int, image_size: int = 32) -> dict:
    from visionssl.data import load_dataset

    train = load_dataset("elpv:type", "train", int(image_size * 1.125))
    test = load_dataset("elpv:type", "test", int(image_size * 1.125))
    g = torch.Generator().manual_seed(0)
    train = train.subset(torch.randperm(len(train), generator=g)[:train_n])
    test = test.subset(torch.randperm(len(test), generator=g)[:test_n])
    torch.manual_seed(0)
    backbone = vs.create_backbone("resnet10t_cifar")
    print(
        f"\n[4] cached-feature probe vs classic protocol: resnet10t_cifar (random init), elpv:type, "
        f"{len(train)} train / {len(test)} test at {image_size} px (load {load()})"
    )
    start = time.perf_counter()
    (x, y), (xq, yq) = (
        vs.eval.extract_features(backbone, ds, image_size=image_size, progress=False) for ds in (train, test)
    )
    t_extract = time.perf_counter() - start
    cached = vs.eval.linear_probe(x, y, xq, yq)
    t_cached = time.perf_counter() - start
    print(
        f"  cached: extract {t_extract:.1f}s + sweep {t_cached - t_extract:.1f}s = {t_cached:.1f}s, top-1 {cached['top1']:.2f}%"
    )
    start = time.perf_counter()
    classic = vs.eval.linear_probe_classic(
        backbone,
        train,
        test,
        epochs=epochs,
        batch_size=64,
        lr=0.1,
        batchnorm=True,
        image_size=image_size,
        progress=False,
    )
    t_classic = time.perf_counter() - start
    target = cached["top1"] - 1.0
    reached = next((h for h in classic["history"] if h["top1"] >= target), None)
    best = max(classic["history"], key=lambda h: h["top1"])
    setup = t_classic - classic["history"][-1]["seconds"]  # test-feature extraction before training
    time_to_target = setup + reached["seconds"] if reached else None
    result = {
        "backbone": "resnet10t_cifar (random init)",
        "data": "elpv:type",
        "train": len(train),
        "test": len(test),
        "image_size": image_size,
        "cached_extract_s": round(t_extract, 2),
        "cached_total_s": round(t_cached, 2),
        "cached_top1": round(cached["top1"], 2),
        "classic_epochs": epochs,
        "classic_total_s": round(t_classic, 2),
        "classic_final_top1": round(classic["top1"], 2),
        "classic_best_top1": round(best["top1"], 2),
        "classic_best_epoch": best["epoch"],
        "classic_recipe": "random resized crop + flip, BatchNorm head, SGD lr 0.1 momentum 0.9, cosine, batch 64",
        "classic_history": classic["history"],
        "classic_epoch_reaching_cached_minus_1pt": reached["epoch"] if reached else None,
        "classic_time_to_cached_minus_1pt_s": round(time_to_target, 2) if reached else None,
        "ratio_classic_over_cached": round((time_to_target if reached else t_classic) / t_cached, 2),
        "ratio_is_lower_bound": reached is None,
    }
    if reached:
        print(
            f"  classic: reached {reached['top1']:.2f}% (cached - 1 point) at epoch {reached['epoch']} after "
            f"{time_to_target:.1f}s  -> cached is {result['ratio_classic_over_cached']:.1f}x faster"
        )
    else:
        print(
            f"  classic: {epochs} epochs in {t_classic:.1f}s, best {best['top1']:.2f}% (epoch {best['epoch']}), never "
            f"within 1 point of the cached probe  -> cached is more than {result['ratio_classic_over_cached']:.1f}x faster"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument(
        "--out",
        default=None,
        help="results file (default: benchmarks/results/eval_speed_cpu.json; --quick writes nothing unless given)",
    )
    parser.add_argument(
        "--sections",
        default="1234",
        help="which sections to run (default 1234); the others are kept from an existing results file",
    )
    parser.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query (default: nlist / 8)")
    parser.add_argument("--ivf-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--sample-queries", type=int, default=4000, help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=int, default=65536, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ivf_child:
        return ivf_child(args.ivf_child, args.k, args.sample_queries, args.shard, args.nprobe)

    quick = args.quick
    payload = {
        "device": device_name("cpu"),
        "cpu": device_name("cpu").rsplit(" (", 1)[0],
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss_gpus": faiss.get_num_gpus(),
        "quick": quick,
        "load_average_start": load(),
        "command": "python benchmarks/eval_speed.py" + (" --quick" if quick else ""),
    }
    import lightly
    import sklearn

    payload["peer_versions"] = {
        "faiss": faiss.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "lightly": lightly.__version__,
    }

    def run(section, *section_args):
        before = load()
        result = section(*section_args)
        return {
            **result,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average_before": before,
            "load_average_after": load(),
        }

    if "1" in args.sections:
        payload["knn"] = run(knn_section, 5_000 if quick else 50_000, 1_000 if quick else 10_000, 20, 1 if quick else 2)
    if "2" in args.sections:
        payload["ivf_1m"] = run(
            ivf_section,
            50_000 if quick else 1_000_000,
            2_000 if quick else 10_000,
            500 if quick else 4_000,
            20,
            65_536,
            args.nprobe,
        )
    if "3" in args.sections:
        payload["probe_sweep"] = run(probe_section, 5_000 if quick else 50_000, 1_000 if quick else 10_000)
    if "4" in args.sections:
        payload["cached_vs_classic"] = run(
            classic_section, 200 if quick else 600, 100 if quick else 300, 3 if quick else 30
        )
    payload["load_average_end"] = load()
    if args.out or not quick:
        path = Path(args.out) if args.out else RESULTS_FILE
        if set(args.sections) != set("1234") and path.is_file():  # a partial rerun keeps the other sections
            previous = json.loads(path.read_text())
            payload = {**{key: previous[key] for key in SECTIONS if key in previous}, **payload}
            payload["command"] += f" --sections {args.sections}" + (f" --nprobe {args.nprobe}" if args.nprobe else "")
        if args.out:
            path.write_text(json.dumps(payload, indent=2) + "\n")
        else:
            path = write_results("eval_speed_cpu", payload)
        print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
