"""``visionssl embed`` / ``vs.eval.embed`` and ``visionssl neighbors`` / ``vs.eval.neighbors`` on a small folder of
generated PNGs: one vector per file, a copy is its own nearest neighbour, an interrupted run resumes to the same
bytes, another model or preprocessing is refused, broken images and bad queries fail in one line."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import visionssl as vs
from visionssl.cli import main
from visionssl.eval.embed import embed, neighbors
from visionssl.eval.embed_store import EmbeddingStore

CLASSES, PER_CLASS = ("cat", "dog", "owl"), 3


def save_export(path, seed):
    torch.manual_seed(seed)
    net = vs.create_backbone("resnet10t_cifar")
    safetensors.torch.save_file(net.state_dict(), str(path), metadata={"backbone": "resnet10t_cifar"})
    return path


@pytest.fixture
def folder(tmp_path):
    """cat/0..2.png, dog/..., owl/... (noise of three colours, 16-28 px) and a checkpoint exported as safetensors."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            size = 16 + 4 * i
            pixels = rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8) // 2 + np.uint8(40 * c)
            Image.fromarray(pixels).save(data / name / f"{i}.png")
    return data, save_export(tmp_path / "model.safetensors", seed=0)


def embed_cli(data, ckpt, out, *extra):
    return main(["embed", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--image-size", "16",
                 "--chunk-size", "4", "--device", "cpu", "--no-progress", *extra])  # fmt: skip


def one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("visionssl: error: "), err
    for word in words:
        assert word in err[0], err[0]
    return err[0]


def test_every_file_has_exactly_one_vector_and_the_list_matches_the_folder(folder, tmp_path):
    data, ckpt = folder
    out = tmp_path / "emb" / "e.npy"
    assert embed_cli(data, ckpt, out) == 0
    store = EmbeddingStore(out)
    features = np.load(out)
    files = store.files.read_text().splitlines()
    on_disk = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    assert files == on_disk and len(set(files)) == len(files) == len(CLASSES) * PER_CLASS
    assert features.shape == (len(files), 512) and features.dtype == np.float32 and np.isfinite(features).all()
    meta = json.loads(store.sidecar.read_text())
    assert meta["complete"] and meta["counts"] == {"listed": 9, "embedded": 9, "skipped": 0}
    assert meta["model"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["model"]["kind"] == "export" and meta["visionssl"]
    prep = meta["preprocessing"]
    assert (prep["image_size"], prep["decode_size"], prep["layer"], prep["mean"]) == (
        16,
        18,
        "final",
        [0.485, 0.456, 0.406],
    )
    assert not store.chunks.exists()  # joined into e.npy and removed
    # each row is that file's vector: embedding the files one by one gives the same rows
    backbone = vs.zoo.resolve_checkpoint(str(ckpt)).build()
    alone, _ = embed(backbone, [data / f for f in files[:2]], image_size=16, device="cpu", progress=False)
    np.testing.assert_allclose(alone, features[:2], rtol=1e-5, atol=1e-6)


def test_embed_runs_the_same_extraction_as_evaluation():
    ds = vs.data.load_dataset("synthetic:12", image_size=16)
    backbone = vs.create_backbone("resnet10t_cifar")
    features, files = embed(backbone, ds, chunk_size=5, batch_size=4, device="cpu", progress=False)
    expected, _ = vs.eval.extract_features(backbone, ds, batch_size=4, device="cpu", progress=False)
    assert files == [str(i) for i in range(12)]
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_a_copy_of_an_image_is_its_own_nearest_neighbour(folder, tmp_path, capsys):
    data, ckpt = folder
    shutil.copy(data / "dog" / "1.png", data / "owl" / "z_copy.png")
    out = tmp_path / "e.npy"
    assert embed_cli(data, ckpt, out) == 0
    files = EmbeddingStore(out).files.read_text().splitlines()
    row = files.index("dog/1.png")
    hits = neighbors(out, row, k=3)
    assert [h.rank for h in hits] == [1, 2, 3] and row not in [h.row for h in hits]
    assert hits[0].file == "owl/z_copy.png" and hits[0].similarity > 0.99999 > hits[1].similarity
    capsys.readouterr()
    # an image query is embedded by the recorded checkpoint with the recorded preprocessing
    assert (
        main(
            [
                "neighbors",
                "--embeddings",
                str(out),
                "--query",
                str(data / "dog" / "1.png"),
                "-k",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    top = [line.split() for line in lines[2:]]
    assert {t[2] for t in top} == {"dog/1.png", "owl/z_copy.png"} and all(float(t[1]) > 0.9999 for t in top)


def test_an_interrupted_run_resumes_to_identical_output(folder, tmp_path, monkeypatch, capsys):
    data, ckpt = folder
    whole = tmp_path / "whole.npy"
    assert embed_cli(data, ckpt, whole) == 0
    out = tmp_path / "resumed.npy"
    written = []
    write_chunk = EmbeddingStore.write_chunk

    def stop_after_one(self, index, *args):
        if written:
            raise KeyboardInterrupt
        written.append(index)
        write_chunk(self, index, *args)

    monkeypatch.setattr(EmbeddingStore, "write_chunk", stop_after_one)
    assert embed_cli(data, ckpt, out) == 130
    store = EmbeddingStore(out)
    assert not out.exists() and [p.name for p in store.chunks.iterdir()] == ["000000.npz"]
    assert json.loads(store.sidecar.read_text())["complete"] is False
    capsys.readouterr()
    assert main(["neighbors", "--embeddings", str(out), "--query", "0"]) == 2
    one_line_error(capsys, "not finished")

    rerun = []
    monkeypatch.setattr(
        EmbeddingStore, "write_chunk", lambda self, index, *a: (rerun.append(index), write_chunk(self, index, *a))
    )
    assert embed_cli(data, ckpt, out) == 0
    assert rerun == [1, 2]  # chunk 0 was reused
    assert np.load(out).tobytes() == np.load(whole).tobytes()
    assert store.files.read_text() == EmbeddingStore(whole).files.read_text()
    assert not store.chunks.exists()
    # a finished output is not recomputed; a changed file is
    rerun.clear()
    assert embed_cli(data, ckpt, out) == 0 and rerun == []
    Image.new("RGB", (20, 20), "white").save(data / "owl" / "2.png")
    assert embed_cli(data, ckpt, out) == 0 and rerun == [0, 1, 2]
    assert not np.array_equal(np.load(out), np.load(whole))


def test_a_damaged_chunk_is_recomputed(folder, tmp_path, monkeypatch):
    data, ckpt = folder
    whole, out = tmp_path / "whole.npy", tmp_path / "part.npy"
    assert embed_cli(data, ckpt, whole) == 0
    monkeypatch.setattr(EmbeddingStore, "remove_chunks", lambda self: None)
    assert embed_cli(data, ckpt, out) == 0
    store = EmbeddingStore(out)
    meta = json.loads(store.sidecar.read_text())
    store.write_sidecar({k: v for k, v in meta.items() if k not in ("format", "format_version")} | {"complete": False})
    out.unlink()
    store.chunk_path(2).unlink()  # the last chunk, lost
    store.chunk_path(1).write_bytes(store.chunk_path(1).read_bytes()[:50])  # and one cut short
    with pytest.warns(UserWarning, match="recomputing unreadable chunk"):
        assert embed_cli(data, ckpt, out) == 0
    assert np.load(out).tobytes() == np.load(whole).tobytes()


def test_another_model_or_preprocessing_on_resume_is_refused(folder, tmp_path, capsys):
    data, ckpt = folder
    out = tmp_path / "e.npy"
    assert embed_cli(data, ckpt, out) == 0
    before = out.read_bytes()
    other = save_export(tmp_path / "other.safetensors", seed=1)
    capsys.readouterr()
    assert embed_cli(data, other, out) == 2
    one_line_error(capsys, "another model", str(out))
    assert main(["embed", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--image-size", "32"]) == 2
    one_line_error(capsys, "other preprocessing", "image_size 16 -> 32")
    assert out.read_bytes() == before
    # the query image of `neighbors` is embedded only by the model that made the file
    assert (
        main(
            ["neighbors", "--embeddings", str(out), "--query", str(data / "cat" / "0.png"), "--checkpoint", str(other)]
        )
        == 2
    )
    one_line_error(capsys, "is not the model that made")


def test_a_broken_image_stops_the_run_or_is_skipped_and_named(folder, tmp_path, capsys):
    data, ckpt = folder
    (data / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    out = tmp_path / "e.npy"
    assert embed_cli(data, ckpt, out) == 2
    one_line_error(capsys, "dog/broken.png", "--skip-bad-images")
    assert not out.exists()
    assert embed_cli(data, ckpt, out, "--skip-bad-images") == 0
    assert "skipped" in capsys.readouterr().out
    store = EmbeddingStore(out)
    files = store.files.read_text().splitlines()
    meta = json.loads(store.sidecar.read_text())
    assert "dog/broken.png" not in files and len(files) == len(np.load(out)) == 9
    assert [s["file"] for s in meta["skipped"]] == ["dog/broken.png"] and meta["counts"]["skipped"] == 1
    # without --skip-bad-images, a finished output that skipped a file is not taken as done
    assert embed_cli(data, ckpt, out) == 2
    one_line_error(capsys, "dog/broken.png")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--query", "0", "-k", "0"], ["k must be between 1 and 8"]),
        (["--query", "0", "-k", "9"], ["k must be between 1 and 8"]),
        (["--query", "9"], ["query row 9 is not a row", "0 to 8"]),
        (["--query", "-1"], ["query row -1 is not a row"]),
        (["--query", "no/such.png"], ["neither a row number", "no/such.png"]),
        (["--query", "0", "--index", "hnsw"], ["unknown index 'hnsw'"]),
    ],
)
def test_bad_neighbor_queries_fail_in_one_line(folder, tmp_path, capsys, args, words):
    data, ckpt = folder
    out = tmp_path / "e.npy"
    assert embed_cli(data, ckpt, out) == 0
    capsys.readouterr()
    assert main(["neighbors", "--embeddings", str(out), *args]) == 2
    one_line_error(capsys, *words)


def test_bad_outputs_fail_in_one_line(folder, tmp_path, capsys):
    data, ckpt = folder
    assert main(["neighbors", "--embeddings", str(tmp_path / "none.npy"), "--query", "0"]) == 2
    one_line_error(capsys, "no embeddings sidecar")
    np.save(tmp_path / "mine.npy", np.ones((2, 2), np.float32))
    assert embed_cli(data, ckpt, tmp_path / "mine.npy") == 2  # someone else's .npy is never overwritten
    one_line_error(capsys, "mine.npy exists but")
    assert np.load(tmp_path / "mine.npy").tolist() == [[1, 1], [1, 1]]
    assert embed_cli(data, ckpt, tmp_path / "e.parquet") == 2
    one_line_error(capsys, "must end in .npy", "pyarrow")
    assert embed_cli(tmp_path / "missing", ckpt, tmp_path / "e.npy") == 2
    one_line_error(capsys, "does not exist")
    (tmp_path / "empty").mkdir()
    assert embed_cli(tmp_path / "empty", ckpt, tmp_path / "e.npy") == 2
    one_line_error(capsys, "holds no images")


def test_the_python_example_of_the_docs_runs_as_printed(tmp_path, monkeypatch):
    import contextlib
    import io
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "embeddings.md"
    section = doc.read_text(encoding="utf-8").split("## From Python\n", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        exec(compile(code, str(doc), "exec"), {"__name__": "docs_example"})
    assert stdout.getvalue() == "[(1, 'img2.png'), (2, 'img1.png')]\nimg1.png\n"  # what its comments say


def test_a_run_directory_records_its_checkpoint_file_and_a_changed_checkpoint_is_refused(folder, tmp_path, capsys):
    from visionssl.engine.checkpoint import atomic_save

    data, _ = folder
    run = tmp_path / "run"

    def save_run(seed):
        torch.manual_seed(seed)
        state = {f"backbone.{k}": v for k, v in vs.create_backbone("resnet10t_cifar").state_dict().items()}
        config = {"method": {"name": "simclr"}, "backbone": {"name": "resnet10t_cifar", "kwargs": {}},
                  "data": {"name": "synthetic", "image_size": 18}, "augment": {"image_size": 16}}  # fmt: skip
        atomic_save(
            {"format": "visionssl", "version": 1, "config": config, "method": state}, run / "checkpoints" / "last.pt"
        )

    save_run(0)
    out = tmp_path / "e.npy"
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(run),
                "--data",
                str(data),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    model = json.loads(EmbeddingStore(out).sidecar.read_text())["model"]
    last = run / "checkpoints" / "last.pt"
    assert (model["kind"], model["checkpoint"], model["file"]) == ("run", str(run.resolve()), str(last.resolve()))
    assert model["sha256"] == hashlib.sha256(last.read_bytes()).hexdigest()
    assert json.loads(EmbeddingStore(out).sidecar.read_text())["preprocessing"]["image_size"] == 16  # the run's
    query = [
        "neighbors",
        "--embeddings",
        str(out),
        "--query",
        str(data / "cat" / "0.png"),
        "-k",
        "1",
        "--device",
        "cpu",
    ]
    capsys.readouterr()
    assert main(query) == 0 and capsys.readouterr().out.splitlines()[-1].split()[2] == "cat/0.png"
    save_run(1)  # the run went on: its checkpoint is another model now
    assert main(query) == 2
    one_line_error(capsys, "is not the model that made", str(run))
