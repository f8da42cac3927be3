"""One prepared GPU check: proves every GPU path and measures the GPU targets, bounded to 8 minutes.

    python benchmarks/gpu_check.py                    # on a GPU machine (writes benchmarks/results/gpu_<date>/)
    python benchmarks/gpu_check.py --dry-run          # on a CPU: every step it can, tiny sizes (tests the script)

Steps, each a subprocess under its own timeout (and all under ``--budget`` seconds):

  install        ``pip install -e ".[dev,bench]"`` then faiss-cpu swapped for faiss-gpu (README) when faiss-gpu can be
                 had; offline from ``--wheels`` (default ``.whl/``, packed by ``benchmarks/gpu_pack.sh``) when that
                 folder exists. Not run by ``--dry-run``.
  versions       torch, CUDA, cuDNN, faiss, kornia, timm versions, the GPU, ``faiss.get_num_gpus()``.
  cuda_tests     ``pytest -m cuda tests/test_cuda.py`` (all skipped without a GPU).
  throughput_*   ``throughput.py``: SimCLR, ResNet-18 at 32 px batch 512 and ResNet-50 at 224 px batch 256,
                 against LightlySSL (one DataLoader worker per core) and the bare forward + backward.
  augment        ``augment_throughput.py``: both backends (fused, kornia) against per-image torchvision.
  knn            a 1,000,000 x 512 bank, 10,000 queries, k=20: ``vs.eval.knn_search`` on the GPU vs CPU FAISS.
  quickstart     the quick start's main job (``visionssl pretrain --config simclr_elpv``), timed.

Then the targets: pipeline efficiency (visionssl / bare) >= 0.85 at both sizes, >= 2x LightlySSL at 224 px,
two-view augmentation >= 50x per-image torchvision at 224 px. Each is printed as pass or miss with its margin;
a miss gets a ``torch.profiler`` table of the top ops of its step (``profile_<r18_32|r50_224|augment>.txt``).
Everything lands in ``--out``: one log per step, the benchmarks' JSON files, ``summary.json`` and ``summary.md``;
``--archive`` packs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TARGETS = {"efficiency_r18_32": 0.85, "efficiency_r50_224": 0.85, "vs_lightly_224": 2.0, "augment_224": 50.0}


# ------------------------------------------------------------------------------------------ the steps
def steps(args: argparse.Namespace, out: Path) -> list[tuple[str, int, list[str] | str | None]]:
    """(name, timeout in seconds, command: argv, a shell line, or None for skipped)."""
    py, me, dry = sys.executable, str(Path(__file__).resolve()), args.dry_run
    cores = str(len(os.sched_getaffinity(0)))
    tp = [py, str(BENCH / "throughput.py"), "--methods", "simclr", "--data", "synthetic"]
    tp_size = (
        ["--steps", "1", "--rounds", "1", "--workers", "1", "--max-images", "16", "--peer-precision", "fp32"]
        if dry
        else ["--steps", "10", "--rounds", "2", "--workers", cores, "--max-images", "5120"]
    )
    aug = [py, str(BENCH / "augment_throughput.py"), "--backends", "fused", "kornia", "--out", str(out / "augment")]
    aug += (
        ["--sizes", "32", "--images", "64", "--batch-size", "32", "--workers", "0"]
        if dry
        else ["--sizes", "32", "224", "--images", "4096", "--batch-size", "256", "--workers", cores]
    )
    quick = [
        py,
        "-m",
        "visionssl",
        "pretrain",
        "--config",
        "simclr_elpv",
        "--out",
        str(out / "quickstart"),
        "--no-progress",
    ]
    if dry:
        quick += [
            "data.name=synthetic:32",
            "data.image_size=36",
            "augment.image_size=32",
            "optim.batch_size=16",
            "train.epochs=1",
            "train.knn_every=-1",
            "train.device=cpu",
        ]
    return [
        ("install", 240, None if dry else install_command(args.wheels)),
        ("versions", 60, [py, me, "--versions", str(out / "versions.json")]),
        (
            "cuda_tests",
            200,
            [
                py,
                "-m",
                "pytest",
                "-m",
                "cuda",
                "tests/test_cuda.py",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={out / 'cuda_tests.xml'}",
            ],
        ),
        (
            "throughput_r18_32",
            120,
            tp
            + ["--configs", "r18_32", "--batch-size", "8" if dry else "512", "--out", str(out / "throughput_r18_32")]
            + tp_size,
        ),
        (
            "throughput_r50_224",
            150,
            tp
            + [
                "--configs",
                "r50_224",
                "--batch-size",
                "2" if dry else "256",
                "--large",
                "--out",
                str(out / "throughput_r50_224"),
            ]
            + tp_size,
        ),
        ("augment", 120, aug),
        (
            "knn",
            150,
            [
                py,
                me,
                "--knn",
                str(out / "knn.json"),
                "--bank",
                "20000" if dry else "1000000",
                "--queries",
                "500" if dry else "10000",
            ],
        ),
        ("quickstart", 240, quick),
    ]


def install_command(wheels: str) -> str:
    """The install as one shell line. Offline when ``wheels`` exists (``benchmarks/gpu_pack.sh`` packs it: the device
    has no network): its wheels, then visionssl itself without dependencies (elpv comes as labels + caches)."""
    py = sys.executable
    if Path(wheels).is_dir():
        offline = f"{py} -m pip install -q --no-index --no-deps --no-build-isolation"
        install = f"{offline} {wheels}/*.whl {wheels}/*.tar.gz && {offline} -e ."
        gpu, cpu = f"{offline} --find-links {wheels} faiss-gpu", f"{offline} {wheels}/faiss_cpu-*.whl"
    else:
        install, gpu, cpu = (
            f'{py} -m pip install -q -e ".[dev,bench]"',
            f"{py} -m pip install -q faiss-gpu",
            f"{py} -m pip install -q faiss-cpu",
        )
    # both builds install the module faiss: one out before the other in; faiss-cpu back if faiss-gpu cannot be had
    # (then kNN on the GPU runs as visionssl's torch.mm + top-k)
    return (
        f"{install} && {py} -m pip uninstall -y -q faiss-cpu && "
        f"{{ {gpu} || {{ echo 'faiss-gpu could not be installed: faiss-cpu kept'; {cpu}; }}; }}"
    )


def run_step(name: str, timeout: int, command, out: Path, env: dict) -> dict:
    log = out / f"{name}.log"
    if command is None:
        return {"step": name, "status": "skipped", "seconds": 0.0, "note": "not run by --dry-run"}
    start = time.perf_counter()
    with log.open("w") as f:
        try:
            done = subprocess.run(
                command,
                check=False,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=ROOT,
                env=env,
                shell=isinstance(command, str),
                start_new_session=True,
            )
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out ({timeout} s)"
    return {"step": name, "status": status, "seconds": round(time.perf_counter() - start, 1)}


# ------------------------------------------------------------------------------------------ figures, targets
def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def figures(name: str, out: Path) -> dict:
    """The key figures of a step, read from what it wrote."""
    if name == "versions":
        return _json(out / "versions.json") or {}
    if name == "cuda_tests":
        import xml.etree.ElementTree as ET

        try:
            suite = ET.parse(out / "cuda_tests.xml").getroot()
        except (OSError, ET.ParseError):
            return {}
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        return {**n, "passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"]}
    if name.startswith("throughput_"):
        data = _json(out / f"{name}.json")
        if not data or not data.get("results"):
            return {}
        r = data["results"][0]
        return {
            "images_per_s": {k: round(v, 1) for k, v in r["images_per_s"].items()},
            "vs_lightly": {k: round(v, 2) for k, v in r["vs_lightly"].items()},
            "efficiency": round(r["efficiency"], 3),
            "precision": data["settings"]["precision"],
            "batch_size": r["batch_size"],
        }
    if name == "augment":
        data = _json(out / "augment.json")
        if not data:
            return {}
        return {
            f"{r['image_size']}px": {
                k.removeprefix("ratio_"): round(v, 1) for k, v in r.items() if k.startswith("ratio_")
            }
            for r in data["results"]
        }
    if name == "knn":
        return _json(out / "knn.json") or {}
    if name == "quickstart":
        metrics = out / "quickstart" / "metrics.jsonl"
        lines = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.is_file() else []
        last = {k: v for line in lines for k, v in line.items()}
        return {k: last[k] for k in ("step", "train/loss", "knn/top1") if k in last}
    return {}


def targets(out: Path) -> list[dict]:
    """Each target: measured value, goal, pass/miss and the margin (measured / goal)."""
    found: dict[str, tuple[float, str]] = {}
    for config in ("r18_32", "r50_224"):
        data = _json(out / f"throughput_{config}.json")
        if data and data.get("results"):
            r = data["results"][0]
            found[f"efficiency_{config}"] = (
                r["efficiency"],
                f"visionssl / bare fwd+bwd, {data['settings']['precision']}",
            )
            if config == "r50_224":
                same = data["settings"]["precision"]
                peer = same if same in r["vs_lightly"] else next(iter(r["vs_lightly"]))
                others = ", ".join(f"{k}: {v:.2f}x" for k, v in r["vs_lightly"].items() if k != peer)
                found["vs_lightly_224"] = (
                    r["vs_lightly"][peer],
                    f"LightlySSL {peer}" + (f" ({others})" if others else ""),
                )
    data = _json(out / "augment.json")
    if data and data.get("results"):
        r = max(data["results"], key=lambda row: row["image_size"])  # 224 px on the device
        best = max((k for k in r if k.startswith("ratio_")), key=lambda k: r[k])
        found["augment_224"] = (r[best], f"{r['image_size']} px, {best.removeprefix('ratio_')} (fused unless named)")
    rows = []
    for name, goal in TARGETS.items():
        if name not in found:
            rows.append({"target": name, "goal": goal, "status": "not measured"})
            continue
        value, what = found[name]
        rows.append(
            {
                "target": name,
                "goal": goal,
                "measured": round(value, 3),
                "what": what,
                "status": "pass" if value >= goal else "miss",
                "margin": round(value / goal, 3),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------ subcommands
def versions(path: str) -> None:
    import faiss
    import kornia
    import timm
    import torch

    info = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "faiss": faiss.__version__,
        "faiss_gpus": faiss.get_num_gpus(),
        "kornia": kornia.__version__,
        "timm": timm.__version__,
        "python": sys.version.split()[0],
    }
    print(json.dumps(info, indent=2))
    Path(path).write_text(json.dumps(info, indent=2) + "\n")


def knn_speed(path: str, bank_n: int, queries_n: int, k: int = 20) -> None:
    """CPU FAISS against the GPU (faiss-gpu, else visionssl's torch.mm + top-k) on one random bank."""
    import numpy as np
    import torch

    import visionssl as vs
    from visionssl.eval.knn_search import search_backend

    rng = np.random.default_rng(0)
    bank = rng.standard_normal((bank_n, 512), dtype=np.float32)
    queries = rng.standard_normal((queries_n, 512), dtype=np.float32)
    result = {
        "bank": bank_n,
        "queries": queries_n,
        "dim": 512,
        "k": k,
        "faiss_threads": __import__("faiss").omp_get_max_threads(),
    }
    runs = {"cpu": "cpu"} | ({"gpu": "cuda"} if torch.cuda.is_available() else {})
    found = {}
    for name, device in runs.items():
        result[f"{name}_backend"] = search_backend(device)
        if device == "cuda":
            vs.eval.knn_search(bank[:1000], queries[:10], k, device=device)  # warm-up: CUDA context, kernels
        start = time.perf_counter()
        found[name] = vs.eval.knn_search(bank, queries, k, device=device)
        result[f"{name}_s"] = round(time.perf_counter() - start, 3)
    if "gpu" in found:
        result["gpu_speedup"] = round(result["cpu_s"] / result["gpu_s"], 2)
        result["same_neighbours"] = round(float((found["gpu"][1] == found["cpu"][1]).mean()), 5)
    print(json.dumps(result, indent=2))
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def profile(target: str, path: str, dry: bool) -> None:
    """A torch.profiler table of the top ops of the step behind a missed target."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    import visionssl as vs

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if target == "augment_224":
        size = 32 if dry else 224
        aug = vs.augment.create("simclr", image_size=size).to(device)
        aug.dtype = torch.bfloat16 if cuda else torch.float32
        x = torch.randint(0, 256, (32 if dry else 256, 3, int(size * 1.125), int(size * 1.125)), dtype=torch.uint8)
        work = lambda: aug(x.to(device, non_blocking=True))  # noqa: E731
    else:
        spec = importlib.util.spec_from_file_location("throughput", BENCH / "throughput.py")
        tp = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tp)
        config = "r18_32" if target == "efficiency_r18_32" else "r50_224"
        cfg = tp.CONFIGS[config]
        batch = 2 if dry else cfg["batch"]["cuda"]
        images = vs.data.load_dataset(f"synthetic:{batch * 4}", image_size=cfg["source"])
        precision = tp.resolve_precision("auto", device)
        ours = tp.Ours("simclr", cfg, images, batch, device, precision, False)
        work = lambda: ours.run(1)  # noqa: E731
    work()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(1 if dry else 3):
            work()
        if cuda:
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25)
    Path(path).write_text(f"torch.profiler, {target}, sorted by {sort}\n\n{table}\n")
    print(table)


# ------------------------------------------------------------------------------------------ driver
def summary_markdown(rows: list[dict], goals: list[dict], header: str) -> str:
    def fig(r: dict) -> str:
        text = json.dumps(r.get("figures") or r.get("note") or "", separators=(", ", ": "))
        return text.replace("|", "/")

    lines = [header, "", "| step | status | seconds | key figures |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['status']} | {r['seconds']} | {fig(r)} |" for r in rows]
    lines += [
        "",
        "| target | goal | measured | status | margin (measured / goal) | what | profile |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {g['target']} | >= {g['goal']} | {g.get('measured', '')} | {g['status']} | {g.get('margin', '')} | "
        f"{g.get('what', '')} | {g.get('profile', '')} |"
        for g in goals
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="on a CPU: no install, tiny sizes, CUDA tests skipped")
    parser.add_argument("--out", default=None, help="results folder (default: benchmarks/results/gpu_<date>)")
    parser.add_argument("--budget", type=int, default=470, help="seconds for all steps together (default 470)")
    parser.add_argument("--wheels", default=str(ROOT / ".whl"), help="offline wheels for the install step, if present")
    parser.add_argument("--steps", nargs="+", default=None, help="run only these steps (names as in the summary)")
    parser.add_argument("--archive", default=None, help="also pack the results folder into this .tar.gz")
    parser.add_argument("--versions", help=argparse.SUPPRESS)
    parser.add_argument("--knn", help=argparse.SUPPRESS)
    parser.add_argument("--bank", type=int, default=1_000_000, help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument("--profile", nargs=2, metavar=("TARGET", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.versions:
        return versions(args.versions) or 0
    if args.knn:
        return knn_speed(args.knn, args.bank, args.queries) or 0
    if args.profile:
        return profile(*args.profile, dry=args.dry_run) or 0

    out = Path(args.out or BENCH / "results" / f"gpu_{time.strftime('%Y-%m-%d')}").resolve()
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} already holds files; name an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "PYTHONUNBUFFERED": "1",
    }
    packed = Path(args.wheels)
    if (packed / "home").is_dir():  # elpv as gpu_pack.sh packs it: its labels (a stub package) and decoded caches
        env["VISIONSSL_HOME"] = str(packed / "home")
        env["PYTHONPATH"] += os.pathsep + str(packed / "elpv_stub")
    plan = steps(args, out)
    unknown = set(args.steps or []) - {name for name, _, _ in plan}
    if unknown:
        parser.error(f"unknown step(s) {', '.join(sorted(unknown))}; valid: {', '.join(n for n, _, _ in plan)}")
    deadline = time.monotonic() + args.budget
    rows = []
    for name, timeout, command in plan:
        if args.steps and name not in args.steps:
            continue
        left = int(deadline - time.monotonic())
        if left < 10:
            rows.append({"step": name, "status": "not run (budget spent)", "seconds": 0.0})
        else:
            rows.append(run_step(name, min(timeout, left), command, out, env))
            rows[-1]["figures"] = figures(name, out)
        if name == "cuda_tests" and rows[-1]["status"] == "ok" and rows[-1]["figures"].get("passed", 1) == 0:
            rows[-1]["status"] = "skipped (no GPU)"
        print(
            f"{rows[-1]['step']:<20} {rows[-1]['status']:<24} {rows[-1]['seconds']:>7.1f} s  "
            f"{json.dumps(rows[-1].get('figures') or rows[-1].get('note') or '')}",
            flush=True,
        )
    goals, profiled = targets(out), {}
    for goal in goals:
        # both 224 px throughput targets come from one step: one profile serves them
        what = {"augment_224": "augment", "efficiency_r18_32": "r18_32"}.get(goal["target"], "r50_224")
        if goal["status"] == "miss" and what not in profiled and int(deadline - time.monotonic()) >= 30:
            file = out / f"profile_{what}.txt"
            command = [sys.executable, str(Path(__file__).resolve()), "--profile", goal["target"], str(file)]
            command += ["--dry-run"] if args.dry_run else []
            step = run_step(f"profile_{what}", min(120, int(deadline - time.monotonic())), command, out, env)
            profiled[what] = file.name if file.is_file() else step["status"]
        if goal["status"] == "miss":
            goal["profile"] = profiled.get(what, "not run (budget spent)")
    versions_info = _json(out / "versions.json") or {}
    header = (
        f"# GPU check{' (dry run on a CPU)' if args.dry_run else ''}: {versions_info.get('gpu') or 'no GPU'}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    payload = {
        "dry_run": args.dry_run,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": versions_info.get("gpu"),
        "versions": versions_info,
        "steps": rows,
        "targets": goals,
    }
    (out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
    markdown = summary_markdown(rows, goals, header)
    (out / "summary.md").write_text(markdown)
    print("\n" + markdown)
    if args.archive:
        with tarfile.open(args.archive, "w:gz") as tar:
            tar.add(out, arcname=out.name)
        print(f"packed {out} into {args.archive}")
    print(f"results in {out}")
    return 0 if all(r["status"].startswith(("ok", "skipped")) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
