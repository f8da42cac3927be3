"""The safe loader reads the bookkeeping real upstream files carry (mmengine's message_hub) and nothing more.

The mmengine files are rebuilt from mmengine's own saving code (``Runner.save_checkpoint``,
``MessageHub.state_dict``, ``HistoryBuffer``) and mmselfsup's ``publish_model.py``; their classes are
pickled under their real module names by a stand-in ``mmengine`` package put in ``sys.modules`` while
saving only, so loading works without mmengine, as on a user's machine.
"""

import contextlib
import copyreg
import importlib.util
import sys
import types
from collections import OrderedDict
from typing import ClassVar

import numpy as np
import pytest
import torch
from test_zoo_convert import (
    backbone_state,
    mlp_keys,
    optimizer_state,
    prefixed,
    reference_net,
)

from visionssl.cli import main as zoo_main
from visionssl.zoo import ZooError, load_file, read_checkpoint
from visionssl.zoo.safe_load import HistoryBuffer as StandIn

HISTORY_MODULE = "mmengine.logging.history_buffer"


class HistoryBuffer:
    """What mmengine's HistoryBuffer pickles: max_length and two numpy arrays (+ statistics_methods since 0.7.3)."""

    _statistics_methods: ClassVar[dict] = {}
    pickles_statistics = False  # mmengine >= 0.7.3 (__getstate__ adds statistics_methods)

    def __init__(self, log_history=(), count_history=(), max_length=1000000):
        self.max_length = max_length
        self._log_history = np.array(log_history)
        self._count_history = np.array(count_history)

    def min(self): ...
    def max(self): ...
    def current(self): ...
    def mean(self): ...

    def __getstate__(self):
        if not self.pickles_statistics:
            return self.__dict__
        methods = {n: getattr(HistoryBuffer, n) for n in ("min", "max", "current", "mean")}
        return {**self.__dict__, "statistics_methods": methods}


class ConfigDict(dict):
    """A class mmengine has but the allow-list does not: loading it needs mmengine's code."""


@contextlib.contextmanager
def mmengine_stand_in(statistics: bool = False):
    """Puts a stand-in ``mmengine`` package in sys.modules while saving, so pickle writes mmengine's names."""
    assert importlib.util.find_spec("mmengine") is None, "these tests reproduce a machine without mmengine"
    names = {
        "mmengine": None,
        "mmengine.logging": None,
        HISTORY_MODULE: "HistoryBuffer",
        "mmengine.config": "ConfigDict",
    }
    classes = {"HistoryBuffer": HistoryBuffer, "ConfigDict": ConfigDict}
    for name, cls_name in names.items():
        module = types.ModuleType(name)
        if cls_name:
            cls = classes[cls_name]
            cls.__module__ = name
            setattr(module, cls_name, cls)
        sys.modules[name] = module
    HistoryBuffer.pickles_statistics = statistics
    try:
        yield
    finally:
        for name in names:
            del sys.modules[name]
        HistoryBuffer.pickles_statistics = False
        HistoryBuffer.__module__ = ConfigDict.__module__ = __name__


def message_hub(iters: int = 3) -> dict:
    """MessageHub.state_dict() after training: log_scalars (HistoryBuffer), runtime_info, resumed_keys."""
    rng = np.random.default_rng(0)
    log_scalars = OrderedDict(
        (key, HistoryBuffer(rng.random(iters).tolist(), [1] * iters))
        for key in ("train/lr", "train/loss", "train/time", "train/data_time")
    )
    runtime_info = OrderedDict(
        cfg="model = dict(type='BYOL', backbone=dict(type='ResNet', depth=50))",
        seed=0,
        experiment_name="byol_resnet50_16xb256-coslr-200e_in1k_20220820",
        mmengine_version="0.1.0",
        epoch=200,
        iter=250200,
        max_epochs=200,
        max_iters=250200,
        dataset_meta={"classes": ("tench", "goldfish")},
        eta=np.float64(41.5),  # IterTimerHook: a numpy float from HistoryBuffer.current()
        last_ckpt="work_dirs/byol/epoch_200.pth",
        keep_ckpt_ids=[199, 200],
    )
    resumed = OrderedDict((key, True) for key in [*log_scalars, *runtime_info])
    return {"log_scalars": log_scalars, "runtime_info": runtime_info, "resumed_keys": resumed}


def mmengine_byol(sd: dict) -> dict:
    """mmengine Runner.save_checkpoint of mmselfsup 1.x BYOL: meta, state_dict, message_hub, optimizer, param_schedulers."""
    state = {
        **prefixed(sd, "backbone."),
        **mlp_keys("neck.mlp."),
        **mlp_keys("head.predictor.mlp.", dims=(32, 64, 32)),
        **prefixed(sd, "target_net.module.0."),
        **mlp_keys("target_net.module.1.mlp."),
        "target_net.steps": torch.tensor(250200),
    }
    meta = {
        "epoch": 200,
        "iter": 250200,
        "cfg": "model = dict(type='BYOL')",
        "seed": 0,
        "experiment_name": "byol_resnet50_16xb256-coslr-200e_in1k_20220820",
        "time": "20220825_101010",
        "mmengine_version": "0.1.0",
        "dataset_meta": {"classes": ("tench", "goldfish")},
    }
    common = {"param_name": "lr", "by_epoch": True, "last_step": 200, "verbose": False, "_global_step": 200}
    schedulers = [
        {
            **common,
            "begin": 0,
            "end": 10,
            "base_values": [4.8],
            "_last_value": [4.8],
            "start_factor": 1e-4,
            "end_factor": 1.0,
            "total_iters": 9,
        },
        {
            **common,
            "begin": 10,
            "end": 200,
            "base_values": [4.8],
            "_last_value": [0.0],
            "T_max": 190,
            "eta_min": 0.0,
            "eta_min_ratio": None,
        },
    ]
    return {
        "meta": meta,
        "state_dict": state,
        "message_hub": message_hub(),
        "optimizer": optimizer_state(),
        "param_schedulers": schedulers,
    }


def publish(checkpoint: dict) -> dict:
    """mmselfsup's tools/model_converters/publish_model.py: deletes the optimizer, nothing else."""
    return {k: v for k, v in checkpoint.items() if k != "optimizer"}


def save(obj, path, *, legacy: bool = False, statistics: bool = False, numpy1: bool = False) -> None:
    """torch.save under the stand-in mmengine; numpy1 rewrites numpy 2's module names to numpy 1.x's (legacy files)."""
    with mmengine_stand_in(statistics):
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    if numpy1:
        raw = path.read_bytes()
        assert b"numpy._core.multiarray" in raw
        path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


# publish_model.py writes the legacy format; 2022 files are numpy 1.x; mmengine >= 0.7.3 adds statistics_methods
FILES = {
    "mmselfsup_1x_published_2022": {"build": lambda sd: publish(mmengine_byol(sd)), "legacy": True, "numpy1": True},
    "mmengine_training_checkpoint": {"build": mmengine_byol},
    "mmengine_0_7_3_published": {"build": lambda sd: publish(mmengine_byol(sd)), "legacy": True, "statistics": True},
}


@pytest.mark.parametrize("name", FILES)
def test_mmengine_checkpoint_loads_safely_and_gives_reference_features(tmp_path, name):
    spec = FILES[name]
    reference = reference_net()
    path = tmp_path / "byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth"
    save(
        spec["build"](backbone_state(reference)),
        path,
        legacy=spec.get("legacy", False),
        statistics=spec.get("statistics", False),
        numpy1=spec.get("numpy1", False),
    )
    assert b"mmengine.logging.history_buffer" in path.read_bytes()

    net = load_file(path, "openmmlab", "zoo_test_resnet").eval()

    assert "mmengine" not in sys.modules
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in reference.state_dict().items())


def test_history_buffer_comes_back_as_inert_data(tmp_path):
    path = tmp_path / "hub.pth"
    save({"message_hub": message_hub(iters=2)}, path, statistics=True)
    hub = read_checkpoint(path)["message_hub"]
    loss = hub["log_scalars"]["train/loss"]
    assert type(loss) is StandIn
    assert loss.max_length == 1000000 and loss._count_history.tolist() == [1, 1]
    assert loss._log_history.dtype == np.float64 and loss._log_history.shape == (2,)
    assert loss.statistics_methods == {
        n: f"{HISTORY_MODULE}.HistoryBuffer.{n}" for n in ("min", "max", "current", "mean")
    }
    assert hub["runtime_info"]["eta"] == 41.5 and hub["runtime_info"]["keep_ckpt_ids"] == [199, 200]


def test_empty_numpy_array_loads(tmp_path):
    # protocol 2 pickles an empty array's data as bytes(): builtins.bytes with no argument is allowed
    path = tmp_path / "empty.pth"
    save({"buf": HistoryBuffer()}, path)
    assert b"bytes" in path.read_bytes()
    buf = read_checkpoint(path)["buf"]
    assert buf._log_history.shape == (0,) and buf._log_history.dtype == np.float64


class BigBytes:
    def __reduce__(self):
        return bytes, (10**12,)


class GetattrOnStandIn:
    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return getattr, (HistoryBuffer, *self.args)


def history_buffer_with_arguments(monkeypatch):
    monkeypatch.setattr(
        HistoryBuffer, "__reduce_ex__", lambda self, protocol: (copyreg.__newobj__, (HistoryBuffer, 10**9), None)
    )
    return HistoryBuffer()


@pytest.mark.parametrize(
    "make, named",
    [
        (lambda _: BigBytes(), "builtins.bytes"),
        (lambda _: GetattrOnStandIn("__init__"), "builtins.getattr"),
        (lambda _: GetattrOnStandIn("min", None), "builtins.getattr"),
        (history_buffer_with_arguments, HISTORY_MODULE + ".HistoryBuffer"),
    ],
)
def test_bytes_getattr_and_the_stand_in_are_allowed_only_in_their_harmless_form(tmp_path, monkeypatch, make, named):
    payload = make(monkeypatch)
    path = tmp_path / "crafted.pth"
    save({"state_dict": {"w": torch.ones(1)}, "x": payload}, path)
    with pytest.raises(
        ZooError,
        match=rf"refusing to load .*crafted\.pth: it holds the object '{named}' in a form the allow-list does not accept \(.+\)",
    ):
        read_checkpoint(path)


def test_a_class_that_needs_code_is_refused_in_one_line(tmp_path):
    path = tmp_path / "cfg.pth"
    save({"state_dict": {"w": torch.ones(1)}, "meta": {"cfg": ConfigDict(a=1)}}, path)
    with pytest.raises(
        ZooError, match=r"'mmengine\.config\.ConfigDict', which is not on the allow-list.*--unsafe-load"
    ):
        read_checkpoint(path)


def test_unsafe_load_names_the_missing_module_exit_2(tmp_path, capsys):
    path = tmp_path / "cfg.pth"
    save(publish(mmengine_byol(backbone_state(reference_net()))) | {"extra": ConfigDict(a=1)}, path)
    out = tmp_path / "w.safetensors"
    argv = ["zoo", "convert", str(path), "--format", "openmmlab", "--backbone", "zoo_test_resnet", "--out", str(out)]

    assert zoo_main(argv + ["--unsafe-load"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "needs the Python module 'mmengine', which is not installed" in err
    assert not out.exists()


def test_unsafe_load_of_known_bookkeeping_needs_no_mmengine(tmp_path, capsys):
    # --unsafe-load tries the safe load first: the zoo's BYOL file converts with or without the flag
    reference = reference_net()
    path = tmp_path / "byol.pth"
    save(publish(mmengine_byol(backbone_state(reference))), path, legacy=True, numpy1=True)
    out = tmp_path / "byol.safetensors"
    argv = ["zoo", "convert", str(path), "--format", "openmmlab", "--backbone", "zoo_test_resnet", "--out", str(out)]
    for extra in ([], ["--unsafe-load"]):
        assert zoo_main(argv + extra) == 0
        from safetensors.torch import load_file as load_safetensors

        assert torch.equal(load_safetensors(out)["conv1.weight"], reference.conv1.weight)


def test_the_packaged_byol_entry_loads_its_publish_model_file_into_timm_resnet50(tmp_path, monkeypatch):
    # the zoo's own entry (format openmmlab, backbone resnet50), its URL pointed at a file rebuilt like the release:
    # torchvision's ResNet-50 (what mmselfsup trains) in mmselfsup 1.x's published layout, numpy 1.x names
    import torchvision
    import yaml

    import visionssl as vs
    from visionssl.zoo import sha256_file

    reference = torchvision.models.resnet50()
    reference.fc = torch.nn.Identity()
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2.0), m.weight.uniform_(0.5, 1.5)
    reference.eval()
    path = tmp_path / "byol_resnet50_16xb256-coslr-200e_in1k_20220825-de817331.pth"
    save(publish(mmengine_byol(backbone_state(reference))), path, legacy=True, numpy1=True)

    entry = vs.zoo.info("byol_rn50_200ep_mmselfsup").to_dict()
    entry.pop("published_hash", None)
    entry.update(urls=[str(path)], sha256=sha256_file(path), size=None)
    zoo_file = tmp_path / "zoo.yaml"
    zoo_file.write_text(yaml.safe_dump({"models": [entry]}))
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VISIONSSL_ZOO", str(zoo_file))

    net = vs.zoo.load("byol_rn50_200ep_mmselfsup").eval()

    assert type(net).__module__.startswith("timm") and "mmengine" not in sys.modules
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), reference(x), rtol=1e-4, atol=1e-5)
