"""visionssl's linear probe against scikit-learn's LogisticRegressionCV and the anchors' 100-epoch SGD protocol.

Feature sets: elpv features (64 px, resnet18) of a random backbone and of a backbone pretrained by a short SimCLR
run in this script (``--simclr-steps``), with the ``defect`` and the ``type`` labels; Gaussian mixtures, well and
badly separated, at D = 64 and D = 2048; a set with N < D. On each: visionssl's default probe, scikit-learn's
``LogisticRegressionCV`` (the same Cs, the same stratified folds of the training split, standardised features,
accuracy scoring, refit on the whole training split), and the anchors' protocol as solo-learn / LightlySSL run it
on cached features (one linear layer, SGD momentum 0.9, lr 0.1, batch 256, cosine schedule, 100 epochs, no weight
decay, standardised features). Then the speed case: N = 50,000, D = 2,048, 100 classes, visionssl's probe against
one ``LogisticRegressionCV`` fit with the same number of Cs, both timed in this run (scikit-learn in a child
process, stopped after ``--sklearn-limit`` seconds: a stopped run is reported as "> limit").

Usage:
    python benchmarks/probe_vs_sklearn.py                 # everything -> benchmarks/results/probe_vs_sklearn.{json,md}
    python benchmarks/probe_vs_sklearn.py --no-speed      # the accuracy table only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
import warnings

import numpy as np
import torch
from _common import RESULTS, device_name, write_results

import visionssl as vs
from visionssl.eval.linear_probe import DEFAULT_CS
from visionssl.eval.probe_lbfgs import stratified_kfold


def sklearn_cv(xtr, ytr, xte, yte, folds, cs=DEFAULT_CS, max_iter=100):
    """LogisticRegressionCV on standardised features, the given folds; returns (top-1, chosen C)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xtr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = LogisticRegressionCV(Cs=list(cs), cv=PredefinedSplit(folds), max_iter=max_iter, scoring="accuracy")
        model.fit(scaler.transform(xtr), ytr)
    return 100 * model.score(scaler.transform(xte), yte), float(model.C_[0])


def anchors_sgd(xtr, ytr, xte, yte):
    return vs.eval.linear_probe(
        xtr,
        ytr,
        xte,
        yte,
        solver="sgd",
        lrs=(0.1,),
        weight_decays=(0.0,),
        epochs=100,
        batch_size=256,
        val_fraction=0.0,
        device="cpu",
    )["top1"]


def compare(name, xtr, ytr, xte, yte):
    xtr, xte = np.asarray(xtr, dtype=np.float32), np.asarray(xte, dtype=np.float32)
    ytr, yte = np.asarray(ytr), np.asarray(yte)
    row = {"set": name, "train": len(xtr), "test": len(xte), "dim": xtr.shape[1], "classes": int(ytr.max()) + 1}
    tic = time.perf_counter()
    ours = vs.eval.linear_probe(xtr, ytr, xte, yte, device="cpu")
    row.update(
        visionssl=ours["top1"],
        visionssl_s=time.perf_counter() - tic,
        visionssl_C=ours["C"],
        solver=ours["solver"],
        selection=ours["selection"],
    )
    folds = stratified_kfold(torch.from_numpy(ytr), 5, seed=0).numpy()  # the folds visionssl used
    tic = time.perf_counter()
    row["sklearn"], row["sklearn_C"] = sklearn_cv(xtr, ytr, xte, yte, folds)
    row["sklearn_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    row["sgd100"] = anchors_sgd(xtr, ytr, xte, yte)
    row["sgd100_s"] = time.perf_counter() - tic
    row["ok"] = row["visionssl"] >= row["sklearn"] - 0.3 and row["visionssl"] >= row["sgd100"]
    print(
        f"{name:32s} visionssl {row['visionssl']:6.2f} ({row['visionssl_s']:5.1f}s, C={row['visionssl_C']:g})  "
        f"sklearn {row['sklearn']:6.2f} ({row['sklearn_s']:5.1f}s, C={row['sklearn_C']:g})  "
        f"sgd100 {row['sgd100']:6.2f} ({row['sgd100_s']:5.1f}s)  {'ok' if row['ok'] else 'FAIL'}",
        flush=True,
    )
    return row


def mixture(n, dim, classes, scale, seed, test=1000):
    g = np.random.default_rng(seed)
    centers = g.standard_normal((classes, dim)) * scale
    y = g.integers(0, classes, n + test)
    x = centers[y] + g.standard_normal((n + test, dim))
    return x[:n], y[:n], x[n:], y[n:]


def elpv_sets(simclr_steps: int, batch: int = 32, seed: int = 0):
    """(name, features) for a random and a briefly SimCLR-pretrained resnet18 at 64 px, both elpv labels."""
    train = vs.data.load_dataset("elpv", "train", 72)
    test = vs.data.load_dataset("elpv", "test", 72)
    torch.manual_seed(seed)
    backbones = {"random": vs.create_backbone("resnet18")}
    torch.manual_seed(seed)
    method = vs.create_method("simclr", backbone="resnet18", temperature=0.1)
    views = vs.augment.create("simclr", image_size=64, scale=(0.6, 1.0), jitter_strength=0.5, blur_p=0.0)
    opt = torch.optim.AdamW(method.parameters(), lr=1e-3, weight_decay=1e-5)
    g = torch.Generator().manual_seed(seed)
    tic = time.perf_counter()
    method.train()
    for _ in range(simclr_steps):
        idx = torch.randint(0, len(train), (batch,), generator=g)
        loss = method(views(train.images[idx]))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    print(
        f"SimCLR: {simclr_steps} steps of {batch} images in {time.perf_counter() - tic:.0f}s, last loss {float(loss.detach()):.3f}",
        flush=True,
    )
    backbones[f"SimCLR {simclr_steps} steps"] = method.backbone
    for name, backbone in backbones.items():
        (xtr, _), (xte, _) = (
            vs.eval.extract_features(backbone, ds, 128, 64, "cpu", progress=False) for ds in (train, test)
        )
        for label in ("defect", "type"):
            ytr, yte = (torch.as_tensor(ds.labels[label]) if label in ds.labels else ds.targets for ds in (train, test))
            yield f"elpv {label}, {name}", xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy()


def _sklearn_child(queue, xtr, ytr, folds, cs):
    """One LogisticRegressionCV fit: on the given split (``folds``), or its default 5-fold CV (``folds=None``)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit

    cv = 5 if folds is None else PredefinedSplit(folds)
    tic = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LogisticRegressionCV(Cs=list(cs), cv=cv, max_iter=100, scoring="accuracy").fit(xtr, ytr)
    queue.put(time.perf_counter() - tic)


def _timed_sklearn(xtr, ytr, folds, limit: float) -> tuple[float, bool]:
    """Seconds of one LogisticRegressionCV fit in a child process, stopped after ``limit``: (seconds, finished)."""
    queue = mp.get_context("fork").Queue()
    child = mp.get_context("fork").Process(target=_sklearn_child, args=(queue, xtr, ytr, folds, DEFAULT_CS))
    tic = time.perf_counter()
    child.start()
    child.join(limit)
    if child.is_alive():
        child.terminate()
        child.join()
        return time.perf_counter() - tic, False
    return queue.get(), True


def speed_case(limit: float, n=50_000, dim=2048, classes=100):
    xtr, ytr, xte, yte = mixture(n, dim, classes, 0.05, seed=1, test=5000)
    xtr, xte = xtr.astype(np.float32), xte.astype(np.float32)
    mean, std = xtr.mean(0), xtr.std(0)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std  # standardised for both (visionssl's own step is a no-op)
    tic = time.perf_counter()
    ours = vs.eval.linear_probe(xtr, ytr, xte, yte, device="cpu")
    ours_s = time.perf_counter() - tic
    print(
        f"speed case visionssl: {ours_s:.1f}s, top-1 {ours['top1']:.2f}, {ours['selection']}, C={ours['C']:g}",
        flush=True,
    )
    # the selection visionssl made (a stratified validation split), so the same number of fits per C; then
    # LogisticRegressionCV as users call it (its default 5-fold CV). Each stops at twice visionssl's time (or
    # --sklearn-limit), which settles "faster" without waiting longer.
    _, held = vs.eval.holdout_split(torch.from_numpy(ytr), 0.1, seed=0)
    folds = np.full(n, -1)
    folds[held.numpy()] = 0
    out = {
        "train": n,
        "dim": dim,
        "classes": classes,
        "Cs": len(DEFAULT_CS),
        "visionssl_s": ours_s,
        "visionssl_top1": ours["top1"],
        "visionssl_C": ours["C"],
        "selection": ours["selection"],
    }
    for key, split, label in (("sklearn", folds, "same split"), ("sklearn_5fold", None, "default 5-fold CV")):
        sk_s, finished = _timed_sklearn(xtr, ytr, split, min(limit, 2 * ours_s))
        print(
            f"speed case sklearn LogisticRegressionCV ({len(DEFAULT_CS)} Cs, {label}): "
            f"{'' if finished else '> '}{sk_s:.1f}s",
            flush=True,
        )
        out.update({f"{key}_s": sk_s, f"{key}_finished": finished, f"{key}_speedup": sk_s / ours_s})
    out["speedup"] = out["sklearn_speedup"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simclr-steps", type=int, default=40, help="SimCLR steps of 32 images (default 40)")
    parser.add_argument("--speed-size", type=int, nargs=3, default=[50_000, 2048, 100], metavar=("N", "D", "CLASSES"))
    parser.add_argument("--no-accuracy", action="store_true", help="the speed case only")
    parser.add_argument("--no-elpv", action="store_true", help="the synthetic feature sets only")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--sklearn-limit", type=float, default=1200.0)
    parser.add_argument("--results", default="probe_vs_sklearn")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="NAME",
        help="no runs: gather the rows and speed case of results/NAME.json files into --results",
    )
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads((RESULTS / f"{name}.json").read_text()) for name in args.merge]
        payload = {
            **{k: v for k, v in parts[0].items() if k not in ("date", "versions")},
            "rows": [r for p in parts for r in p["rows"]],
            "speed": next((p["speed"] for p in parts if p.get("speed")), None),
            "merged_from": args.merge,
        }
        write_results(args.results, payload)
        (RESULTS / f"{args.results}.md").write_text(markdown(payload) + "\n")
        print(markdown(payload))
        return
    load_before = os.getloadavg()[0]
    rows = []
    for name, *data in [] if args.no_accuracy or args.no_elpv else elpv_sets(args.simclr_steps):
        rows.append(compare(name, *data))
    for dim in () if args.no_accuracy else (64, 2048):
        for label, separation in (("well", 5.0), ("badly", 2.0)):  # distance between two class means
            data = mixture(2000, dim, 10, separation / (2 * dim) ** 0.5, seed=dim)
            rows.append(compare(f"mixture D={dim}, {label} separated", *data))
    if not args.no_accuracy:
        rows.append(compare("mixture N=300 < D=1024", *mixture(300, 1024, 5, 0.1, seed=7)))
    speed = None if args.no_speed else speed_case(args.sklearn_limit, *args.speed_size)
    payload = {
        "machine": device_name("cpu"),
        "cpu_threads": torch.get_num_threads(),
        "Cs": list(DEFAULT_CS),
        "note": f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        "rows": rows,
        "speed": speed,
    }
    path = write_results(args.results, payload)
    (RESULTS / f"{args.results}.md").write_text(markdown(payload) + "\n")
    print(markdown(payload))
    print("wrote", path)


def markdown(p: dict) -> str:
    lines = [
        f"Linear probe top-1 (%) and seconds on {p['machine']}; {p['note']}.",
        "",
        "| feature set | N / D / classes | visionssl (C) | s | LogisticRegressionCV (C) | s | 100-epoch SGD | s | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in p["rows"]:
        lines.append(
            f"| {r['set']} | {r['train']} / {r['dim']} / {r['classes']} | {r['visionssl']:.2f} ({r['visionssl_C']:g}) "
            f"| {r['visionssl_s']:.1f} | {r['sklearn']:.2f} ({r['sklearn_C']:g}) | {r['sklearn_s']:.1f} "
            f"| {r['sgd100']:.2f} | {r['sgd100_s']:.1f} | {'yes' if r['ok'] else 'NO'} |"
        )
    s = p["speed"]
    if s:
        sk = f"{'' if s['sklearn_finished'] else '> '}{s['sklearn_s']:.1f}"
        lines += [
            "",
            f"Speed case, N = {s['train']:,}, D = {s['dim']:,}, {s['classes']} classes, {s['Cs']} Cs, "
            f"C picked on a {s['selection']} split by both: visionssl {s['visionssl_s']:.1f} s "
            f"(top-1 {s['visionssl_top1']:.2f}, C = {s['visionssl_C']:g}), LogisticRegressionCV {sk} s: "
            f"{'at least ' if not s['sklearn_finished'] else ''}{s['speedup']:.1f}x.",
        ]
        if "sklearn_5fold_s" in s:
            sk5 = f"{'' if s['sklearn_5fold_finished'] else '> '}{s['sklearn_5fold_s']:.1f}"
            lines.append(
                f"LogisticRegressionCV with its default 5-fold CV (as users call it): {sk5} s, "
                f"{'at least ' if not s['sklearn_5fold_finished'] else ''}{s['sklearn_5fold_speedup']:.1f}x."
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
