"""Bad configurations: one clear line each (``ConfigError``; exit code 2 from the CLI), naming the key and
what would be valid, raised before any data is loaded or any model is built."""

import pytest

from visionssl.cli import main
from visionssl.engine import ConfigError, Trainer, load_config
from visionssl.engine import trainer as trainer_module

BAD = [
    # unknown keys, with the closest valid one
    ("simclr", "trian.epochs=3", "unknown config key 'trian'; did you mean 'train'?"),
    ("simclr", "optim.batch_sise=64", "did you mean 'optim.batch_size'? valid keys of optim: name, lr"),
    ("simclr", "data.nmae=elpv", "did you mean 'data.name'?"),
    ("simclr", "method.temprature=0.1", "did you mean 'temperature'?"),
    ("moco", "method.queue_sise=4096", "did you mean 'queue_size'?"),
    # wrong types
    ("simclr", "optim.lr=fast", "config key 'optim.lr': Value 'fast'"),
    (
        "simclr",
        "train.epochs=2.5",
        "config key 'train.epochs': Value '2.5' of type 'float' could not be converted to Integer",
    ),
    ("simclr", "train.deterministic=maybe", "'maybe' is not a valid bool"),
    ("simclr", "augment.image_size=big", "config key 'augment.image_size'"),
    ("simclr", "method.temperature=warm", "method.temperature='warm' must be of type float (simclr's default: 0.5)"),
    ("moco", "method.queue_size=1.5", "method.queue_size=1.5 must be of type int"),
    ("moco", "method.symmetric=3", "method.symmetric=3 must be of type bool"),
    # out of range
    ("simclr", "optim.lr=-0.1", "optim.lr=-0.1 must be > 0"),
    ("simclr", "optim.lr=0", "optim.lr=0.0 must be > 0"),
    ("simclr", "optim.batch_size=1", "optim.batch_size=1 must be >= 2"),
    ("simclr", "optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001 must be >= 0"),
    ("simclr", "optim.momentum=1.5", "optim.momentum=1.5 must be in [0, 1)"),
    ("simclr", "optim.grad_clip=0", "optim.grad_clip=0.0 must be > 0 (or null: no clipping)"),
    ("simclr", "train.epochs=0", "train.epochs=0 must be >= 1"),
    ("simclr", "train.knn_temperature=0", "train.knn_temperature=0.0 must be > 0"),
    ("simclr", "train.num_threads=0", "train.num_threads=0 must be >= 1"),
    ("simclr", "train.max_skipped_steps=-1", "train.max_skipped_steps=-1 must be >= 0"),
    ("simclr", "data.image_size=0", "data.image_size=0 must be a positive number of pixels"),
    ("simclr", "augment.image_size=4", "augment.image_size=4 must be >= 8 pixels"),
    # invalid choices
    ("simclr", "train.on_nonfinite=ignore", "train.on_nonfinite='ignore' is not valid; choose one of stop, skip"),
    ("simclr", "train.precision=fp8", "choose one of auto, fp32, bf16, fp16"),
    ("simclr", "optim.name=adam", "choose one of sgd, lars, adamw"),
    ("simclr", "backbone.name=resnet18x", "unknown backbone 'resnet18x'"),
    # combinations that cannot work
    (
        "moco",
        "optim.batch_size=512",
        "method.queue_size=256 is smaller than optim.batch_size=512: MoCo's queue must hold",
    ),
    (
        "context",
        "augment.image_size=16",
        "a 3x3 grid of 8 px patches with a 3 px gap and 1 px jitter spans 32 px, more than the 16 px views",
    ),
    (
        "context",
        "method.patch_size=12",
        "spans 44 px, more than the 32 px views; lower patch_size/gap/jitter or raise augment.image_size to at least 44",
    ),
    ("jigsaw", "method.tile_size=12", "tile_size must be between 1 and the cell size 10 (32 px / grid 3), got 12"),
    ("jigsaw", "method.grid=1", "method.grid=1 must be >= 2"),
]


@pytest.mark.parametrize("method,override,message", BAD, ids=[o for _, o, _ in BAD])
def test_a_bad_value_is_one_clear_line(method, override, message):
    extra = ["method.queue_size=256"] if method == "moco" and "queue_size" not in override else []
    with pytest.raises(ConfigError) as err:
        load_config(method, overrides=extra + [override])
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_recipes_themselves_are_valid():
    from visionssl.engine.config import list_recipes

    for recipe in list_recipes():
        load_config(config=recipe)


def test_a_broken_yaml_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: [3\noptim: {lr: 0.1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid YAML \(.*line") as err:
        load_config(config=str(path))
    assert "\n" not in str(err.value)
    path.write_text("train:\n  epoks: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.epoks'; did you mean 'train.epochs'"):
        load_config(config=str(path))


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if data is loaded or a model is built."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the configuration was checked")

    monkeypatch.setattr(trainer_module, "load_dataset", refuse)
    monkeypatch.setattr(trainer_module, "create_method", refuse)


@pytest.mark.parametrize(
    "args,message",
    [
        (["optim.lr=-1"], "optim.lr=-1.0 must be > 0"),
        (
            ["--method", "moco", "--batch-size", "64", "method.queue_size=32"],
            "method.queue_size=32 is smaller than optim.batch_size=64",
        ),
        (
            ["--method", "jigsaw", "--image-size", "8", "method.tile_size=4"],
            "tile_size must be between 1 and the cell size 2",
        ),
        (["--method", "simclr", "train.on_nonfinite=sometimes"], "choose one of stop, skip"),
        (["optim.batchsize=3"], "did you mean 'optim.batch_size'"),
    ],
)
def test_the_cli_says_it_in_one_line_with_exit_2_before_any_work(tmp_path, capsys, no_work, args, message):
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--data", "synthetic:8", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionssl: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_a_batch_larger_than_the_dataset_stops_before_the_model_is_built(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(trainer_module, "create_method", refuse)
    cfg = load_config("simclr", overrides=["data.name=synthetic:20", "data.image_size=8", "optim.batch_size=32"])
    with pytest.raises(ConfigError, match=r"optim.batch_size=32 is larger than the dataset \(20 images\)"):
        Trainer(cfg)
