"""Issue 23: a run directory belongs to one run: never overwritten by accident, never shared by two live processes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from visionssl.cli import main
from visionssl.engine import Trainer, load_config
from visionssl.engine.rundir import RunDirError, run_lock
from visionssl.engine.smoke import smoke_overrides

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--epochs", "1", "--no-progress", *smoke_overrides("data.name=synthetic:32", "backbone.name=resnet10t_cifar")]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err):
    return err.count("\n") == 1 and err.startswith("visionssl: error: ") and "Traceback" not in err


def snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_a_second_run_into_a_finished_run_is_refused_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "r1"
    code, _, err = cli(capsys, "pretrain", "--out", run, *TINY)
    assert code == 0, err
    before = snapshot(run)
    code, _, err = cli(capsys, "pretrain", "--method", "byol", "--out", run, *TINY)
    assert code == 2 and one_line(err)
    assert f"run directory {run} is not empty" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(run) == before


def test_overwrite_replaces_the_old_run_cleanly(tmp_path, capsys):
    run = tmp_path / "r1"
    assert cli(capsys, "pretrain", "--out", run, *TINY)[0] == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"old_run": True}) + "\n")
    (run / "checkpoints" / "old.pt").write_bytes(b"old")
    code, _, err = cli(capsys, "pretrain", "--method", "byol", "--out", run, "--overwrite", *TINY)
    assert code == 0, err
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines and not any("old_run" in line for line in lines)
    assert not (run / "checkpoints" / "old.pt").exists()
    assert "name: byol" in (run / "config.yaml").read_text()


def test_overwrite_never_deletes_files_a_run_did_not_write(tmp_path, capsys):
    folder = tmp_path / "home_dir"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    code, _, err = cli(capsys, "pretrain", "--out", folder, "--overwrite", *TINY)
    assert code == 2 and one_line(err) and "thesis.tex" in err
    assert (folder / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("out", ["", " "])
def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "pretrain", "--out", out, *TINY)
    assert code == 2 and one_line(err) and "--out is empty" in err
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_resume_with_nothing_to_resume_says_so_before_loading_data(tmp_path, capsys, monkeypatch, state):
    from visionssl.engine import build, online_knn

    def no_data(*args, **kwargs):
        raise AssertionError("the dataset was loaded")

    for module in (build, online_knn):  # the training data, and the kNN data
        monkeypatch.setattr(module, "load_dataset", no_data)
    run = tmp_path / "run"
    if state == "empty":
        run.mkdir()
    code, _, err = cli(capsys, "pretrain", "--out", run, "--resume", *TINY)
    assert code == 2 and one_line(err) and f"nothing to resume in {run}" in err
    assert run.exists() == (state == "empty")


HOLDER = textwrap.dedent("""
    import fcntl, os, sys  # the documented protocol of run_lock, without paying for importing visionssl twice
    os.makedirs(sys.argv[1], exist_ok=True)
    fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\\n".encode())
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
""")


def test_a_second_live_process_fails_at_once_naming_the_holder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run(
            [sys.executable, "-m", "visionssl", "pretrain", "--out", str(run), *TINY],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            check=False,
        )
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
        assert f"run directory {run} is in use by another run (process {holder.pid})" in second.stderr

        # the lock binds API users of the Trainer too, in this very process
        cfg = load_config(
            "simclr",
            overrides=[a for a in TINY if "=" in a] + ["train.epochs=1", f"out={run}"],
        )
        with pytest.raises(RunDirError, match=rf"in use by another run \(process {holder.pid}\)"):
            Trainer(cfg).fit()
        assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    with run_lock(run):  # released with its holder
        pass


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    with run_lock(tmp_path / "r") as folder:
        with run_lock(folder):
            pass
        assert (folder / ".lock").read_text().strip() == str(os.getpid())
    with run_lock(tmp_path / "r"):
        pass


# ------------------------------------------------------------------ a run never writes through a link
TINY_NET = """
from torch import nn
def build(width=4, **kw):
    net = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.num_features = width
    return net
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished tiny run with a code backbone (so it has a trusted_code.json); tests work on copies."""
    base = tmp_path_factory.mktemp("finished")
    (base / "tiny_net.py").write_text(TINY_NET)
    run = base / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONSSL_HOME", str(base / "home"))
        tiny = [a for a in TINY if not a.startswith("backbone.name=")]
        code = main(["pretrain", "--out", str(run), *tiny, "--backbone", f"{base / 'tiny_net.py'}:build"])
    assert code == 0
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoints", "trusted_code.json"}
    return base


def copy_run(finished_run, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    shutil.copytree(finished_run / "home", tmp_path / "home")  # the trust key that signed the record
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))
    return run


def victim_file(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours to write\n")
    os.chmod(victim, 0o644)
    return victim


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, capsys):
    victim = victim_file(tmp_path)
    run = tmp_path / "r"
    run.mkdir()
    (run / ".lock").symlink_to(victim)
    code, _, err = cli(capsys, "pretrain", "--out", run, *TINY)
    assert code == 2 and one_line(err), err
    assert f"{run / '.lock'} is a symbolic link" in err and "remove the link" in err
    assert victim.read_text() == "not yours to write\n"
    assert (run / ".lock").is_symlink() and sorted(p.name for p in run.iterdir()) == [".lock"]


@pytest.mark.parametrize("name", ["metrics.jsonl", "trusted_code.json", "config.yaml", ".lock"])
def test_resuming_a_run_whose_file_is_a_link_is_refused_and_the_target_untouched(
    finished_run, tmp_path, capsys, monkeypatch, name
):
    run = copy_run(finished_run, tmp_path, monkeypatch)
    victim = victim_file(tmp_path)
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    before = snapshot(run)
    # --trust-code: a record that no longer verifies must not be what stops the run here
    code, _, err = cli(capsys, "pretrain", "--out", run, "--resume", "--trust-code", "train.epochs=2")
    assert code == 2 and one_line(err), err
    assert f"{run / name} is a symbolic link" in err
    assert victim.read_text() == "not yours to write\n"
    assert snapshot(run) == before


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_a_run_folder_that_is_a_link_is_refused_and_the_folder_it_points_to_untouched(
    finished_run, tmp_path, capsys, monkeypatch, flag
):
    run = copy_run(finished_run, tmp_path, monkeypatch)
    elsewhere = tmp_path / "elsewhere"
    (run / "checkpoints").rename(elsewhere)
    (run / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    code, _, err = cli(capsys, "pretrain", "--out", run, flag, *([] if flag == "--resume" else TINY), "train.epochs=2")
    assert code == 2 and one_line(err), err
    assert f"{run / 'checkpoints'} is a symbolic link" in err
    assert snapshot(elsewhere) == before and (run / "checkpoints").is_symlink()


def test_the_trainer_api_refuses_a_linked_run_file_too(tmp_path):
    victim = victim_file(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to(victim)
    cfg = load_config(
        "simclr",
        overrides=[a for a in TINY if "=" in a] + ["train.epochs=1", f"out={run}"],
    )
    with pytest.raises(RunDirError, match="metrics.jsonl is a symbolic link"):
        Trainer(cfg).fit()
    assert victim.read_text() == "not yours to write\n"


def test_open_no_follow_refuses_a_link_even_when_it_appears_after_the_checks(tmp_path):
    from visionssl.errors import StorageError
    from visionssl.files import open_no_follow

    victim = victim_file(tmp_path)
    (tmp_path / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(StorageError, match="is a symbolic link"):
        open_no_follow(tmp_path / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    assert victim.read_text() == "not yours to write\n"


# ------------------------------------------------------------- --overwrite checks everything before deleting
@pytest.mark.parametrize(
    "bad",
    [
        ["optim.lr=-1"],
        ["backbone.name=no_such_backbone_xyz"],
        ["data.name={tmp}/no_such_folder"],
        ["train.knn_every=1", "data.eval={tmp}/no_such_folder"],
    ],
    ids=["lr", "backbone", "data", "eval_data"],
)
def test_overwrite_with_a_bad_config_keeps_every_old_file(finished_run, tmp_path, capsys, monkeypatch, bad):
    run = copy_run(finished_run, tmp_path, monkeypatch)
    before = snapshot(run)
    assert (run / "checkpoints" / "last.pt").is_file()
    bad = [b.format(tmp=tmp_path) for b in bad]
    code, _, err = cli(capsys, "pretrain", "--out", run, "--overwrite", *TINY, *bad)
    assert code == 2 and one_line(err), err
    assert snapshot(run) == before
