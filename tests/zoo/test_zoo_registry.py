"""model_zoo.yaml: the packaged entries, validation errors naming entry and field, merging user zoo files."""

import copy
from pathlib import Path

import pytest
import yaml

import visionssl as vs
from visionssl.cli import main
from visionssl.zoo import ZooError
from visionssl.zoo.catalog import PACKAGED_ZOO, parse_entry, parse_zoo, read_zoo_file, save_entry

ROOT_ZOO = Path(__file__).resolve().parents[2] / "model_zoo.yaml"

GOOD = {
    "name": "my_model",
    "method": "simclr",
    "backbone": "resnet18",
    "urls": ["https://example.org/w.pth"],
    "sha256": "ab" * 32,
    "size": 123,
    "format": "torchvision",
    "recipe": {"dataset": "imagenet-1k", "epochs": 100, "batch_size": 256},
    "metrics": [{"name": "imagenet_linear_top1", "value": 60.0, "source": "https://example.org/table"}],
    "paper": "https://arxiv.org/abs/0000.00000",
    "license": "MIT",
}


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONSSL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VISIONSSL_ZOO", raising=False)


@pytest.mark.skipif(not (ROOT_ZOO.parent / "pyproject.toml").is_file(), reason="runs from a source checkout only")
def test_repository_zoo_is_a_link_to_the_packaged_file():
    # one file to edit: the top-level model_zoo.yaml (where users look) is a symlink to the packaged one
    assert ROOT_ZOO.is_symlink(), "model_zoo.yaml must be a symlink: ln -sf visionssl/zoo/model_zoo.yaml model_zoo.yaml"
    assert ROOT_ZOO.resolve() == PACKAGED_ZOO.resolve()


def test_packaged_zoo_covers_the_required_methods_with_sources():
    entries = read_zoo_file(PACKAGED_ZOO)
    methods = {e.method for e in entries.values()}
    assert {
        "moco_v1",
        "moco_v2",
        "moco_v3",
        "simsiam",
        "vicreg",
        "byol",
        "simclr",
        "deepcluster_v2",
        "rotnet",
        "jigsaw",
    } <= methods
    for entry in entries.values():
        assert entry.format in vs.zoo.list_formats()
        assert entry.urls[0].startswith("https://")
        assert entry.metrics and all(m["source"].startswith("https://") for m in entry.metrics), entry.name
        assert entry.sha256 is not None or entry.note, entry.name
        assert entry.paper.startswith("https://arxiv.org/"), entry.name


def test_list_info_and_unknown_name():
    assert "moco_v2_rn50_800ep" in vs.zoo.list()
    assert vs.zoo.list("moco_v2*") == ["moco_v2_rn50_200ep", "moco_v2_rn50_800ep"]
    entry = vs.zoo.info("moco_v2_rn50_800ep")
    assert (entry.format, entry.published_hash, entry.metrics[0]["value"]) == ("moco", "md5:a04e12f8", 71.1)
    with pytest.raises(ZooError, match="no zoo entry named 'moco_v2_rn50_80ep'; did you mean moco_v2_rn50_800ep"):
        vs.zoo.info("moco_v2_rn50_80ep")


def test_good_entry_round_trips():
    entry = parse_entry(GOOD, origin="zoo.yaml")
    assert parse_entry(entry.to_dict(), origin="zoo.yaml") == entry


BAD = [
    ("missing field", lambda e: e.pop("urls"), "field 'urls' is missing"),
    ("typo", lambda e: e.update(url=e.pop("urls")), r"field 'url' is not a zoo field \(did you mean 'urls'\?\)"),
    ("bad sha256", lambda e: e.update(sha256="abc"), "field 'sha256' must be 64 hexadecimal characters or null"),
    ("null sha256 without note", lambda e: e.update(sha256=None), "field 'note' is required when sha256 is null"),
    (
        "unknown format",
        lambda e: e.update(format="tensorflow"),
        "field 'format' is 'tensorflow', not a known checkpoint format; valid: .*moco",
    ),
    ("empty urls", lambda e: e.update(urls=[]), "field 'urls' must be a non-empty list"),
    ("ftp url", lambda e: e.update(urls=["ftp://x.org/w.pth"]), "field 'urls' has 'ftp://x.org/w.pth'"),
    ("unsafe name", lambda e: e.update(name="../evil"), "field 'name' may only hold letters"),
    ("negative size", lambda e: e.update(size=-3), "field 'size' must be a positive number of bytes or null"),
    ("recipe epochs", lambda e: e["recipe"].update(epochs="many"), "field 'recipe' has epochs='many'"),
    (
        "recipe keys",
        lambda e: e.update(recipe={"dataset": "x"}),
        "field 'recipe' must be a mapping with dataset, epochs and batch_size",
    ),
    (
        "metric source",
        lambda e: e["metrics"][0].pop("source"),
        "field 'metrics' has .* needs a name, a numeric value and a source",
    ),
    ("published hash", lambda e: e.update(published_hash="crc:1234"), "field 'published_hash' must look like"),
    (
        "published hash too short",
        lambda e: e.update(published_hash="md5:8cad7"),
        r"\(6 to 64 hex digits\), got 'md5:8cad7'",
    ),
    ("kwargs", lambda e: e.update(backbone_kwargs=[1]), "field 'backbone_kwargs' must be a mapping"),
]


@pytest.mark.parametrize("what, mutate, message", BAD, ids=[b[0] for b in BAD])
def test_bad_entry_is_reported_by_file_name_and_field(tmp_path, what, mutate, message):
    bad = copy.deepcopy(GOOD)
    mutate(bad)
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump({"models": [copy.deepcopy(GOOD) | {"name": "fine"}, bad]}))
    label = "'my_model'" if isinstance(bad.get("name"), str) and bad["name"] == "my_model" else ""
    with pytest.raises(ZooError, match=f"{path}: entry {label}.*{message}"):
        read_zoo_file(path)


def test_duplicate_names_and_bad_top_level(tmp_path):
    with pytest.raises(ZooError, match="entry 'my_model' appears twice"):
        parse_zoo({"models": [GOOD, GOOD]})
    with pytest.raises(ZooError, match="a mapping with one key, 'models'"):
        parse_zoo({"modles": [GOOD]})
    path = tmp_path / "broken.yaml"
    path.write_text("models: [\n")
    with pytest.raises(ZooError, match=f"zoo file {path} is not valid YAML"):
        read_zoo_file(path)


def test_user_zoo_files_merge_and_override_by_name(tmp_path, monkeypatch):
    override = dict(GOOD, name="moco_v2_rn50_800ep", backbone="resnet18")
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump({"models": [override, GOOD]}))
    second.write_text(yaml.safe_dump({"models": [dict(GOOD, method="byol")]}))
    monkeypatch.setenv("VISIONSSL_ZOO", f"{first}{':'}{second}")
    assert vs.zoo.info("moco_v2_rn50_800ep").backbone == "resnet18"
    assert vs.zoo.info("moco_v2_rn50_800ep").origin == str(first)
    assert vs.zoo.info("my_model").method == "byol"  # the later file wins
    assert "vicreg_rn50_1000ep" in vs.zoo.list()  # packaged entries stay
    monkeypatch.setenv("VISIONSSL_ZOO", str(tmp_path / "missing.yaml"))
    with pytest.raises(ZooError, match="VISIONSSL_ZOO names .*missing.yaml, which does not exist"):
        vs.zoo.list()


def test_relative_local_paths_are_relative_to_the_zoo_file(tmp_path):
    path = tmp_path / "project" / "zoo.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"models": [dict(GOOD, urls=["weights/w.safetensors", "https://x.org/w"])]}))
    entry = read_zoo_file(path)["my_model"]
    assert entry.urls == (str(tmp_path / "project" / "weights" / "w.safetensors"), "https://x.org/w")


def test_save_entry_adds_replaces_and_never_touches_the_packaged_zoo(tmp_path):
    path = tmp_path / "user.yaml"
    save_entry(GOOD, path)
    save_entry(dict(GOOD, name="other"), path)
    save_entry(dict(GOOD, size=999), path)
    entries = read_zoo_file(path)
    assert sorted(entries) == ["my_model", "other"] and entries["my_model"].size == 999
    before = PACKAGED_ZOO.read_bytes()
    with pytest.raises(ZooError, match="refusing to rewrite the packaged zoo"):
        save_entry(GOOD, PACKAGED_ZOO)
    with pytest.raises(ZooError, match="field 'sha256'"):
        save_entry(dict(GOOD, sha256="nope"), path)  # validated before it replaces the file
    assert PACKAGED_ZOO.read_bytes() == before and read_zoo_file(path)["my_model"].size == 999


ZOO_PAGE = Path(__file__).resolve().parents[2] / "docs" / "zoo.md"


@pytest.mark.skipif(not ZOO_PAGE.is_file(), reason="runs from a source checkout only")
def test_documented_table_is_the_generated_one():
    assert vs.zoo.markdown_table() in ZOO_PAGE.read_text(), (
        "regenerate the table of docs/zoo.md with `visionssl zoo list --markdown`"
    )


def test_vit_dino_and_mae_entries_name_their_converters_and_published_metrics():
    # issue 22: MoCo v3 ViT, DINO (ViT-S/16, ResNet-50) and MAE, with the numbers of the authors' READMEs
    entries = read_zoo_file(PACKAGED_ZOO)
    got = {
        name: (entries[name].format, entries[name].backbone, {m["name"]: m["value"] for m in entries[name].metrics})
        for name in ("moco_v3_vit_s_300ep", "moco_v3_vit_b_300ep", "dino_vit_s16", "dino_rn50", "mae_vit_b16_1600ep")
    }
    assert got == {
        "moco_v3_vit_s_300ep": ("mocov3_vit", "vit_small_patch16_224", {"imagenet_linear_top1": 73.2}),
        "moco_v3_vit_b_300ep": ("mocov3_vit", "vit_base_patch16_224", {"imagenet_linear_top1": 76.7}),
        "dino_vit_s16": ("dino", "vit_small_patch16_224", {"imagenet_linear_top1": 77.0, "imagenet_knn_top1": 74.5}),
        "dino_rn50": ("dino", "resnet50", {"imagenet_linear_top1": 75.3, "imagenet_knn_top1": 67.5}),
        "mae_vit_b16_1600ep": (
            "mae",
            "vit_base_patch16_224",
            {"imagenet_linear_top1": 68.0, "imagenet_finetune_top1": 83.6},
        ),
    }
    # MAE publishes a 6-digit md5 prefix; the others publish nothing: trust on first use, said in the note
    assert entries["mae_vit_b16_1600ep"].published_hash == "md5:8cad7c"
    assert all(entries[n].sha256 is None and "no " in entries[n].note for n in got)
    # moco-v3 vits.py: ViT-S with 12 heads, where timm's vit_small has 6 (same weight shapes, other features)
    vit_s = vs.create_backbone("vit_small_patch16_224", depth=1, **entries["moco_v3_vit_s_300ep"].backbone_kwargs)
    assert vit_s.blocks[0].attn.num_heads == 12


DEEP = "[" * 600 + "]" * 600  # PyYAML's composer recurses once per level: RecursionError near 500


@pytest.mark.parametrize(
    "text, message",
    [
        ("models: " + DEEP + "\n", "nested more than 32 levels deep"),
        ("models:\n- name: x\n  recipe: " + "{a: " * 600 + "1" + "}" * 600 + "\n", "nested more than 32 levels deep"),
        (b"models: [\xff\xfe]\n", "not UTF-8 text"),
        (None, "is a folder, not a zoo file"),
        ("models:\n- {1: x, name: y}\n", "field '1' is not a zoo field"),
    ],
    ids=["deep lists", "deep mappings", "not utf-8", "a folder", "a number as field name"],
)
def test_a_bad_user_zoo_file_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys, text, message):
    path = tmp_path / "zoo.yaml"
    if text is None:
        path.mkdir()
    else:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.setenv("VISIONSSL_ZOO", str(path))
    with pytest.raises(ZooError, match=message):  # the mistake: RecursionError, UnicodeDecodeError, TypeError
        vs.zoo.list()
    assert main(["zoo", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("visionssl: error: ") and str(path) in err, err


@pytest.mark.parametrize(
    "urls, message",
    [
        (["~no_such_user_here/w.pth"], None),  # expanduser of an unknown user: kept as written, never a crash
        (["w\0.pth"], "has a NUL character"),
        (["https://x.org/w%00.pth"], "has a NUL character"),
        (["https://x.org/.."], None),  # no file name: cached as 'checkpoint', never as '..'
        (["http://[::1/w.pth"], r"has 'http://\[::1/w.pth', which is not a valid URL \(Invalid IPv6 URL\)"),
        (["http://127.0.0.1:99999/w.pth"], "has .*, which is not a valid URL .*out of range"),
        (["http:///w.pth"], "has .*, which names no host"),
        (["http://exa mple.org/w.pth"], "has .*, with a space or control character"),
    ],
    ids=["unknown user", "nul byte", "encoded nul", "dot-dot", "bad ipv6", "port", "no host", "space"],
)
def test_urls_that_are_no_file_are_refused_or_named_safely(tmp_path, urls, message):
    if message is None:
        entry = parse_entry(dict(GOOD, urls=urls), origin=tmp_path / "zoo.yaml")
        assert entry.filename not in ("", ".", "..") and "/" not in entry.filename
    else:
        with pytest.raises(ZooError, match=f"field 'urls' {message}"):
            parse_entry(dict(GOOD, urls=urls), origin=tmp_path / "zoo.yaml")
