"""Bad configurations: one clear line each (``ConfigError``; exit code 2 from the CLI), naming the key and
what would be valid, raised before any data is loaded or any model is built."""

import importlib
import importlib.util
import json

import pytest
from omegaconf import OmegaConf

from visionssl.cli import main
from visionssl.engine import ConfigError, Trainer, load_config

ENGINE_MODULES = ("visionssl.engine.trainer", "visionssl.engine.build")


def refuse_in_engine(monkeypatch, name, refuse):
    """Replaces ``name`` (create_method, load_dataset) wherever the engine's modules look it up."""
    modules = [importlib.import_module(m) for m in ENGINE_MODULES if importlib.util.find_spec(m)]
    hits = [m for m in modules if hasattr(m, name)]
    assert hits, f"no engine module calls {name}"
    for module in hits:
        monkeypatch.setattr(module, name, refuse)


BAD = [
    # unknown keys, with the closest valid one
    ("simclr", "trian.epochs=3", "unknown config key 'trian'; did you mean 'train'?"),
    ("simclr", "optim.batch_sise=64", "did you mean 'optim.batch_size'? valid keys of optim: name, lr"),
    ("simclr", "data.nmae=elpv", "did you mean 'data.name'?"),
    ("simclr", "method.temprature=0.1", "did you mean 'temperature'?"),
    ("moco", "method.queue_sise=4096", "did you mean 'queue_size'?"),
    # augmentation arguments: the preset's own, of its defaults' types (a preset ignores what it does not declare)
    (
        "simclr",
        "augment.kwargs.sacle=[0.2,1.0]",
        "augment.kwargs.sacle: the 'simclr' preset has no such argument; did you mean 'scale'?",
    ),
    (
        "simclr",
        "augment.kwargs.scale=abc",
        "augment.kwargs.scale='abc' must be 2 numbers (the 'simclr' preset's default: [0.08, 1.0])",
    ),
    ("byol", "augment.kwargs.vflip_p=0.5", "the 'byol' preset has no such argument"),  # was silently ignored
    ("byol", "augment.kwargs.solarize_p=often", "augment.kwargs.solarize_p='often' must be 2 numbers"),
    ("simclr", "augment.name=simclrr", "augment.name: unknown augmentation 'simclrr'"),
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
    ("simclr", "optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001 must be in [0, 1]"),
    ("simclr", "optim.weight_decay=1e300", "optim.weight_decay=1e+300 must be in [0, 1]"),  # was an overflow, exit 1
    ("simclr", "train.seed=-1", "train.seed=-1 must be between 0 and 2**32 - 1"),  # was numpy's ValueError, exit 1
    ("simclr", "train.knn_every=-5", "train.knn_every=-5 must be >= 1, or 0 (only at the end) or -1 (never)"),
    ("simclr", "data.workers=-1", "data.workers=-1 must be >= 0"),
    ("simclr", "optim.momentum=1.5", "optim.momentum=1.5 must be in [0, 1)"),
    ("simclr", "optim.grad_clip=0", "optim.grad_clip=0.0 must be > 0 (or null: no clipping)"),
    ("simclr", "train.epochs=0", "train.epochs=0 must be >= 1"),
    ("simclr", "train.knn_temperature=0", "train.knn_temperature=0.0 must be > 0"),
    ("simclr", "train.num_threads=0", "train.num_threads=0 must be >= 1"),
    ("simclr", "train.max_skipped_steps=-1", "train.max_skipped_steps=-1 must be >= 0"),
    ("simclr", "data.image_size=0", "data.image_size=0 must be a positive number of pixels"),
    ("simclr", "augment.image_size=4", "augment.image_size=4 must be >= 8 pixels"),
    # bounds: each of these was accepted and ended in a traceback once the run started
    ("simclr", "augment.image_size=100000", "augment.image_size=100000 must be between 8 and 4096 pixels"),
    ("simclr", "data.image_size=100000", "data.image_size=100000 must be a positive number of pixels, at most 4608"),
    ("simclr", "optim.lr=1e300", "optim.lr=1e+300 must be > 0 and <= 100"),  # overflowed the float32 schedule
    ("simclr", "train.device=meta", "train.device='meta' is not a device; valid: auto, cpu, cuda, cuda:N, mps"),
    ("simclr", "train.device=cuda:x", "train.device='cuda:x' is not a device"),
    ("simclr", "optim.betas=[0.9,2]", "optim.betas=[0.9, 2.0] must be two numbers in [0, 1)"),
    # text a config cannot hold, nesting OmegaConf cannot parse
    ("simclr", "data.name=\udcff", "data.name='\\udcff': not valid UTF-8 text"),  # a non-UTF-8 folder name
    ("simclr", "data.name=\x00", "data.name='\\x00': not valid YAML (unacceptable character"),
    ("simclr", "backbone.kwargs.x=" + "[" * 200 + "]" * 200, "lists or mappings nested more than 32 levels deep"),
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
        "method.gap=4",
        "a 3x3 grid of 10 px patches with a 4 px gap and 0 px jitter spans 38 px, more than the 32 px views",
    ),
    (
        "context",
        "method.patch_size=12",
        "spans 38 px, more than the 32 px views; lower patch_size/gap/jitter or raise augment.image_size to at least 38",
    ),
    ("context", "method.patch_size=0.4", "a 3x3 grid of 13 px patches with a 1 px gap and 0 px jitter spans 41 px"),
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


def test_an_override_may_use_a_resolver_and_the_config_keeps_values_not_references(monkeypatch):
    monkeypatch.setenv("VISIONSSL_TEST_DATA", "synthetic:64")
    cfg = load_config(
        "simclr", overrides=["data.name=${oc.env:VISIONSSL_TEST_DATA}", "train.knn_every=${train.epochs}"]
    )
    assert (cfg.data.name, cfg.train.knn_every) == ("synthetic:64", cfg.train.epochs)
    assert "${" not in OmegaConf.to_yaml(cfg)  # config.yaml and checkpoints hold what the run used


@pytest.mark.parametrize(
    "value, resolver",
    [
        ("${oc.env:VISIONSSL_TEST_SECRET}", "${oc.env:VISIONSSL_TEST_SECRET}"),  # was read: data.name=the secret
        ("${oc.decode:'[1, 2]'}", "${oc.decode:'[1, 2]'}"),
        ("pre-${data.${oc.env:X}}", "${oc.env:X}"),  # inside a key reference
        ("${visionssl_test_resolver:}", "${visionssl_test_resolver:}"),  # anyone's registered resolver
    ],
)
def test_a_config_file_may_refer_to_keys_but_never_call_a_resolver(tmp_path, monkeypatch, value, resolver):
    monkeypatch.setenv("VISIONSSL_TEST_SECRET", "synthetic:8")
    called = []
    if not OmegaConf.has_resolver("visionssl_test_resolver"):
        OmegaConf.register_resolver("visionssl_test_resolver", lambda: called.append(1) or "synthetic:8")
    shared = tmp_path / "shared.yaml"
    shared.write_text(f"method: {{name: simclr}}\ndata:\n  name: {json.dumps(value)}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config=str(shared))
    message = str(err.value)
    assert message.startswith(f"{shared}: data.name=") and f"calls the resolver {resolver!r}" in message
    assert "\n" not in message and not called
    shared.write_text("method: {name: simclr}\ntrain:\n  epochs: 7\n  knn_every: ${train.epochs}\n")
    assert load_config(config=str(shared)).train.knn_every == 7  # the project's own interpolation: a key


@pytest.mark.parametrize(
    "content, message",
    [
        ("data:\n  name: " + "[" * 200 + "]" * 200 + "\n", "nested more than 32 levels deep"),  # was RecursionError
        ("backbone:\n  kwargs:\n    x: " + "[" * 90 + "]" * 90 + "\n", "nested more than 32 levels deep"),
        ("5\n", "a config file must be a mapping of keys"),  # was OSError: Invalid loaded object type: int
        ("[1, 2]\n", "a config file must be a mapping of keys"),
        (b"\xff\xfetrain: 1\n", "not a YAML config file (not UTF-8 text"),  # was UnicodeDecodeError
    ],
)
def test_a_config_file_that_cannot_be_a_config_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as err:
        load_config(config=str(path))
    assert str(err.value).startswith(str(path)) and message in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if data is loaded or a model is built."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the configuration was checked")

    refuse_in_engine(monkeypatch, "load_dataset", refuse)
    refuse_in_engine(monkeypatch, "create_method", refuse)


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

    refuse_in_engine(monkeypatch, "create_method", refuse)
    cfg = load_config("simclr", overrides=["data.name=synthetic:20", "data.image_size=8", "optim.batch_size=32"])
    with pytest.raises(ConfigError, match=r"optim.batch_size=32 is larger than the dataset \(20 images\)"):
        Trainer(cfg)
