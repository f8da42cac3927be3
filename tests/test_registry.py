import sys
import textwrap

import pytest
import torch

import visionssl as vs
from visionssl.registry import Registry, RegistryError, import_object


def test_register_create_and_wildcard_listing():
    reg = Registry("thing")

    @reg.register("alpha_one")
    def alpha_one(x=1):
        return x * 2

    reg.add("alpha_two", lambda: "two")
    reg.add("beta", lambda: "b")
    assert reg.create("alpha_one", x=4) == 8
    assert reg.list("alpha*") == ["alpha_one", "alpha_two"]
    assert reg.list() == ["alpha_one", "alpha_two", "beta"]
    assert "beta" in reg and len(reg) == 3


def test_taken_name_is_an_error_unless_override():
    reg = Registry("thing")
    reg.add("a", lambda: 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("a", lambda: 2)
    reg.add("a", lambda: 3, override=True)
    assert reg.create("a") == 3


def test_unknown_name_lists_closest_valid_names():
    reg = Registry("method")
    for name in ("simclr", "simsiam", "byol"):
        reg.add(name, lambda: None)
    with pytest.raises(RegistryError) as err:
        reg.get("simclrr")
    assert "unknown method 'simclrr'" in str(err.value) and "simclr" in str(err.value)
    with pytest.raises(RegistryError, match="valid: byol, simclr, simsiam"):
        reg.get("zzzzzz")


def test_unknown_method_and_backbone_errors_suggest():
    with pytest.raises(RegistryError, match="did you mean simclr"):
        vs.create_method("simclrr")
    with pytest.raises(RegistryError, match="resnet18"):
        vs.create_backbone("resnet18x")


def test_import_object_module_and_file(tmp_path):
    assert import_object("math:sqrt")(9.0) == 3.0
    f = tmp_path / "user_code.py"
    f.write_text("def answer():\n    return 42\n")
    assert import_object(f"{f}:answer")() == 42
    with pytest.raises(ValueError, match="not of the form"):
        import_object("math.sqrt")
    with pytest.raises(ValueError, match="has no attribute"):
        import_object("math:nope")


def test_real_entry_point_plugin_is_discovered(tmp_path, monkeypatch):
    """A third-party package installed with entry points in visionssl.methods / visionssl.backbones."""
    pkg = tmp_path / "ssl_plugin_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        import torch
        from visionssl.methods.base import SSLMethod

        def plugin_net(**kw):
            net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(8))
            net.num_features = 8
            return net

        class MeanMethod(SSLMethod):
            '''A toy plugin method.'''
            def __init__(self, backbone="plugin_net", backbone_kwargs=None, scale: float = 1.0):
                super().__init__(backbone, backbone_kwargs)
                self.scale = scale
            def forward(self, views):
                h = self.backbone(views[0])
                return {"loss": self.scale * h.pow(2).mean(), "embedding": h.detach()}
    """)
    )
    dist = tmp_path / "ssl_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ssl-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[visionssl.methods]\nplugin_mean = ssl_plugin_demo:MeanMethod\n\n"
        "[visionssl.backbones]\nplugin_net = ssl_plugin_demo:plugin_net\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from visionssl.backbones import BACKBONES
    from visionssl.methods import METHODS

    for reg in (BACKBONES, METHODS):
        monkeypatch.setattr(reg, "_plugins_loaded", False)
        monkeypatch.setattr(reg, "_factories", dict(reg._factories))
    assert "plugin_mean" in vs.list_methods()
    assert "plugin_net" in vs.list_backbones("plugin*")
    method = vs.create_method("plugin_mean", scale=2.0)
    out = method([torch.randn(2, 3, 4, 4)])
    out["loss"].backward()
    assert method.backbone.num_features == 8
    sys.modules.pop("ssl_plugin_demo", None)


def test_import_object_names_the_line_of_a_users_syntax_error(tmp_path):
    from visionssl.errors import ConfigError

    f = tmp_path / "broken_net.py"
    f.write_text("def build(:\n    pass\n")
    with pytest.raises(ConfigError, match=r"SyntaxError: .*broken_net.py, line 1\)"):
        import_object(f"{f}:build")
    assert not any(name.startswith("visionssl_user_broken_net") for name in sys.modules)  # nothing half-imported
