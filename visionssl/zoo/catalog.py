"""Zoo files: reading, validating and merging ``model_zoo.yaml`` files.

Three kinds of zoo file are read, in this order; an entry with a name seen before replaces it:

1. the packaged zoo, ``visionssl/zoo/model_zoo.yaml`` (shipped in the wheel; it is a copy of the
   repository's ``model_zoo.yaml``, and a test keeps the two identical);
2. the user's zoo, ``$VISIONSSL_HOME/zoo.yaml`` (default ``~/.cache/visionssl/zoo.yaml``), where
   ``visionssl zoo pin`` records hashes;
3. the files named by ``VISIONSSL_ZOO`` (one path, or several separated by ``os.pathsep``), e.g. a
   project's own zoo of exported checkpoints.

The schema is documented at the top of ``model_zoo.yaml``. Every entry is validated when read and a
bad one is reported by file, entry name and field.

Example:
    >>> import visionssl as vs
    >>> entry = vs.zoo.info("moco_v2_rn50_800ep")
    >>> entry.backbone, entry.format, entry.recipe["epochs"]
    ('resnet50', 'moco', 800)
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, urlparse

import yaml

from visionssl.files import atomic_write, visionssl_home
from visionssl.zoo.convert import CONVERTERS
from visionssl.zoo.errors import ZooError
from visionssl.zoo.hub import HUB_SCHEMES, WEIGHTS_NAME, resolve_hub_url

PACKAGED_ZOO = Path(__file__).with_name("model_zoo.yaml")
REQUIRED = ("name", "method", "backbone", "urls", "sha256", "size", "format", "recipe", "metrics", "paper", "license")
OPTIONAL = ("note", "backbone_kwargs", "published_hash")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # the name is a cache folder: no "/", no ".."
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
PUBLISHED_HASH_PATTERN = re.compile(r"^(md5|sha256):([0-9a-f]{6,64})$")
MAX_DEPTH = 32  # nesting of lists and mappings in a zoo file (an entry's metrics are four levels deep)


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One checkpoint of the zoo (the fields of a ``model_zoo.yaml`` entry).

    ``origin`` is the zoo file the entry was read from; local paths in ``urls`` are absolute.
    """

    name: str
    method: str
    backbone: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None
    format: str
    recipe: dict
    metrics: tuple[dict, ...]
    paper: str | None
    license: str | None
    note: str | None = None
    backbone_kwargs: dict = dataclasses.field(default_factory=dict)
    published_hash: str | None = None
    origin: str = ""

    @property
    def filename(self) -> str:
        """The file name the checkpoint is cached under (the last part of the first URL)."""
        return _basename(self.urls[0])

    def to_dict(self) -> dict[str, Any]:
        """The entry as it is written in a zoo file (optional fields left out when unset)."""
        out = {f: getattr(self, f) for f in REQUIRED}
        out["urls"], out["metrics"] = list(self.urls), [dict(m) for m in self.metrics]
        out["recipe"] = dict(self.recipe)
        for f in OPTIONAL:
            if getattr(self, f):
                out[f] = getattr(self, f)
        return out


def read_zoo_file(path: str | os.PathLike) -> dict[str, ZooEntry]:
    """Reads and validates one zoo file; a bad entry raises ``ZooError`` naming it and the field.

    Example:
        >>> entries = read_zoo_file(PACKAGED_ZOO)
        >>> entries["vicreg_rn50_1000ep"].format
        'torchvision'
    """
    path = Path(path)
    return parse_zoo(load_zoo_yaml(path), origin=path)


def load_zoo_yaml(path: Path) -> Any:
    """The parsed YAML of a zoo file; unreadable text, bad YAML or nesting deeper than ``MAX_DEPTH`` is a ``ZooError``.

    Example:
        >>> load_zoo_yaml(PACKAGED_ZOO)["models"][0]["name"]
        'moco_v1_rn50_200ep'
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZooError(f"zoo file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise ZooError(f"zoo file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ZooError(f"cannot read zoo file {path}: {exc.strerror or exc}") from None
    try:
        _check_depth(text, path)  # before safe_load, whose composer recurses once per level
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ZooError(f"zoo file {path} is not valid YAML: {' '.join(str(exc).split())}") from None


def _check_depth(text: str, path: Path) -> None:
    """Refuses lists or mappings nested deeper than ``MAX_DEPTH``, reading YAML events (which do not recurse)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise ZooError(
                    f"zoo file {path}: lists or mappings nested more than {MAX_DEPTH} levels deep (line {line}); "
                    "an entry needs four"
                )
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def parse_zoo(data: Any, origin: str | os.PathLike = "<zoo>") -> dict[str, ZooEntry]:
    """Validates the parsed YAML of a zoo file (``{"models": [entry, ...]}``) into entries by name."""
    where = str(origin)
    if data is None:
        return {}
    if not isinstance(data, Mapping) or set(data) - {"models", "version"}:
        raise ZooError(f"{where}: a zoo file is a mapping with one key, 'models' (a list of entries)")
    models = data.get("models") or []
    if not isinstance(models, list):
        raise ZooError(f"{where}: 'models' must be a list of entries")
    entries: dict[str, ZooEntry] = {}
    for index, raw in enumerate(models):
        entry = parse_entry(raw, origin=origin, index=index)
        if entry.name in entries:
            raise ZooError(f"{where}: entry {entry.name!r} appears twice")
        entries[entry.name] = entry
    return entries


def parse_entry(raw: Any, origin: str | os.PathLike = "<zoo>", index: int = 0) -> ZooEntry:
    """Validates one entry; errors read ``FILE: entry 'NAME': field 'F' <what is wrong>``.

    Example:
        >>> parse_entry({"name": "x"}, origin="zoo.yaml")
        Traceback (most recent call last):
        ...
        visionssl.errors.ZooError: zoo.yaml: entry 'x': field 'method' is missing (write null where a value is unknown)
    """
    where = str(origin)
    if not isinstance(raw, Mapping):
        raise ZooError(f"{where}: entry #{index + 1} must be a mapping of fields, got {type(raw).__name__}")
    label = (
        f"{where}: entry {raw.get('name')!r}" if isinstance(raw.get("name"), str) else f"{where}: entry #{index + 1}"
    )

    def fail(field: str, problem: str) -> NoReturn:
        raise ZooError(f"{label}: field {field!r} {problem}")

    _check_field_names(raw, fail)
    _check_identity(raw, fail)
    urls = _resolve_urls(raw["urls"], origin, fail)
    _check_hashes(raw, fail)
    _check_size_and_kwargs(raw, fail)
    _check_recipe_and_metrics(raw, fail)
    sha256 = raw["sha256"]
    return ZooEntry(
        name=raw["name"],
        method=raw["method"],
        backbone=raw["backbone"],
        urls=urls,
        sha256=sha256.lower() if sha256 else None,
        size=raw["size"],
        format=raw["format"],
        recipe=dict(raw["recipe"]),
        metrics=tuple(dict(m) for m in raw["metrics"]),
        paper=raw["paper"],
        license=raw["license"],
        note=raw.get("note"),
        backbone_kwargs=dict(raw.get("backbone_kwargs") or {}),
        published_hash=raw.get("published_hash"),
        origin=where,
    )


_Fail = Callable[[str, str], NoReturn]


def _check_field_names(raw: Mapping, fail: _Fail) -> None:
    """Every field is a zoo field, and every required one is there."""
    unknown = sorted(str(k) for k in set(raw) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        close = difflib.get_close_matches(unknown[0], REQUIRED + OPTIONAL, n=1)
        fail(
            unknown[0],
            f"is not a zoo field{f' (did you mean {close[0]!r}?)' if close else ''}; "
            f"valid fields: {', '.join(REQUIRED + OPTIONAL)}",
        )
    for field in REQUIRED:
        if field not in raw:
            fail(field, "is missing (write null where a value is unknown)")


def _check_identity(raw: Mapping, fail: _Fail) -> None:
    """name, method, backbone and format: non-empty strings; the name fits a folder; the format is known."""
    for field in ("name", "method", "backbone", "format"):
        if not isinstance(raw[field], str) or not raw[field].strip():
            fail(field, f"must be a non-empty string, got {raw[field]!r}")
    if not NAME_PATTERN.match(raw["name"]):
        fail("name", "may only hold letters, digits, '_', '.' and '-' (it names a cache folder)")
    if raw["format"] not in CONVERTERS:
        fail("format", f"is {raw['format']!r}, not a known checkpoint format; valid: {', '.join(CONVERTERS.list())}")
    for field in ("paper", "license"):
        if raw[field] is not None and not isinstance(raw[field], str):
            fail(field, f"must be a string or null, got {raw[field]!r}")


def _resolve_urls(urls: Any, origin: str | os.PathLike, fail: _Fail) -> tuple[str, ...]:
    """The URLs, with local paths made absolute (relative to the zoo file)."""
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u.strip() for u in urls):
        fail("urls", f"must be a non-empty list of URLs or paths (primary first, then mirrors), got {urls!r}")
    base = Path(origin).parent if str(origin) != "<zoo>" else Path.cwd()
    resolved = []
    for url in urls:
        if url.startswith(HUB_SCHEMES):  # a timm / Hugging Face folder (visionssl.zoo.hub)
            resolved.append(resolve_hub_url(url, base, fail))
            continue
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in ("", "http", "https", "file"):
            fail(
                "urls", f"has {url!r}: only http(s)://, file://, local-dir:, hf-hub: URLs and local paths are supported"
            )
        if "\0" in url or "\0" in unquote(url):
            fail("urls", f"has a NUL character in {url!r}; no file or URL holds one")
        if scheme in ("http", "https"):
            _check_web_url(url, fail)
        # os.path.expanduser keeps '~unknown_user' as written, where Path.expanduser raises
        resolved.append(url if scheme else str((base / os.path.expanduser(url)).resolve()))
    return tuple(resolved)


def _check_web_url(url: str, fail: _Fail) -> None:
    """An http(s) URL that urllib can open: a host, a port in range, no spaces or control characters."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        fail("urls", f"has {url!r}, with a space or control character; write it percent-encoded (%20)")
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018  (raises ValueError for a port out of range)
    except ValueError as exc:
        fail("urls", f"has {url!r}, which is not a valid URL ({exc})")
    if not parsed.hostname:
        fail("urls", f"has {url!r}, which names no host (e.g. https://example.org/w.pth)")


def _check_hashes(raw: Mapping, fail: _Fail) -> None:
    """sha256 (64 hex or null, with a note saying why), published_hash ('md5:…' / 'sha256:…')."""
    sha256 = raw["sha256"]
    if sha256 is not None and (not isinstance(sha256, str) or not SHA256_PATTERN.match(sha256.lower())):
        fail("sha256", f"must be 64 hexadecimal characters or null, got {sha256!r}")
    note = raw.get("note")
    if note is not None and not isinstance(note, str):
        fail("note", f"must be a string, got {note!r}")
    if sha256 is None and not note:
        fail("note", "is required when sha256 is null: say why there is no checksum")
    published = raw.get("published_hash")
    if published is not None and not (isinstance(published, str) and PUBLISHED_HASH_PATTERN.match(published)):
        fail(
            "published_hash", f"must look like 'md5:b251726a' or 'sha256:<hex>' (6 to 64 hex digits), got {published!r}"
        )


def _check_size_and_kwargs(raw: Mapping, fail: _Fail) -> None:
    """size: a positive int or null; backbone_kwargs: a mapping."""
    size = raw["size"]
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        fail("size", f"must be a positive number of bytes or null, got {size!r}")
    kwargs = raw.get("backbone_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        fail("backbone_kwargs", f"must be a mapping of keyword arguments, got {kwargs!r}")


def _check_recipe_and_metrics(raw: Mapping, fail: _Fail) -> None:
    """recipe: dataset, epochs, batch_size; metrics: a list of {name, value, source} with numeric values."""
    recipe = raw["recipe"]
    if not isinstance(recipe, Mapping) or not {"dataset", "epochs", "batch_size"} <= set(recipe):
        fail("recipe", f"must be a mapping with dataset, epochs and batch_size (null where unknown), got {recipe!r}")
    for key in ("epochs", "batch_size"):
        if recipe[key] is not None and (not isinstance(recipe[key], int) or isinstance(recipe[key], bool)):
            fail("recipe", f"has {key}={recipe[key]!r}; it must be an integer or null")
    metrics = raw["metrics"]
    if not isinstance(metrics, list):
        fail("metrics", f"must be a list (possibly empty) of {{name, value, source}}, got {metrics!r}")
    for metric in metrics:
        if (
            not isinstance(metric, Mapping)
            or not {"name", "value", "source"} <= set(metric)
            or not isinstance(metric["value"], (int, float))
            or isinstance(metric["value"], bool)
        ):
            fail(
                "metrics",
                f"has {metric!r}; each metric needs a name, a numeric value and a source (URL or paper table)",
            )


def user_zoo_path() -> Path:
    """The user's own zoo file, ``$VISIONSSL_HOME/zoo.yaml`` (it may not exist yet)."""
    return visionssl_home() / "zoo.yaml"


def env_zoo_paths() -> list[Path]:
    """The zoo files named by ``VISIONSSL_ZOO`` (``os.pathsep``-separated); each must exist."""
    paths = [Path(p).expanduser() for p in os.environ.get("VISIONSSL_ZOO", "").split(os.pathsep) if p.strip()]
    for path in paths:
        if path.is_dir():
            raise ZooError(f"VISIONSSL_ZOO names {path}, which is a folder, not a zoo file; name the .yaml file in it")
        if not path.is_file():
            raise ZooError(f"VISIONSSL_ZOO names {path}, which does not exist; fix the variable or create the file")
    return paths


def zoo_files() -> list[Path]:
    """The zoo files read, lowest priority first: packaged, user (if present), ``VISIONSSL_ZOO``."""
    files = [PACKAGED_ZOO]
    if user_zoo_path().is_file():
        files.append(user_zoo_path())
    return files + env_zoo_paths()


def all_entries() -> dict[str, ZooEntry]:
    """Every entry of every zoo file, merged by name (later files override earlier ones)."""
    merged: dict[str, ZooEntry] = {}
    for path in zoo_files():
        merged.update(read_zoo_file(path))
    return merged


def get_entry(name: str) -> ZooEntry:
    """The entry called ``name``; an unknown name lists the closest ones."""
    entries = all_entries()
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(entries))}"
        raise ZooError(f"no zoo entry named {name!r}; {hint}")
    return entries[name]


def save_entry(entry: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Adds or replaces (by name) ``entry`` in the zoo file ``path``, written atomically.

    The file is rewritten from its parsed content, so YAML comments in it are not kept. The new
    content is validated before it replaces the old file. Refuses to touch the packaged zoo.
    """
    path = Path(path).expanduser()
    if path.resolve() == PACKAGED_ZOO.resolve():
        raise ZooError(
            f"refusing to rewrite the packaged zoo {path}; write to {user_zoo_path()} or a VISIONSSL_ZOO file"
        )
    data = load_zoo_yaml(path) if path.is_file() else None
    data = data or {"models": []}
    if not isinstance(data, Mapping) or not isinstance(data.get("models") or [], list):
        parse_zoo(data, origin=path)  # raises: say what the file should look like
    models = [m for m in data.get("models") or [] if not (isinstance(m, Mapping) and m.get("name") == entry["name"])]
    data = {"models": models + [dict(entry)]}
    parse_zoo(data, origin=path)
    header = "# visionssl zoo file (see model_zoo.yaml in visionssl for the schema). Entries here override by name.\n"
    return atomic_write(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def filter_names(names: Iterable[str], pattern: str) -> list[str]:
    """The names matching a shell-style wildcard, sorted."""
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def _basename(url: str) -> str:
    if url.startswith(HUB_SCHEMES):
        return WEIGHTS_NAME
    name = Path(unquote(urlparse(url).path if "://" in url else url)).name
    return name if name not in ("", ".", "..") else "checkpoint"
