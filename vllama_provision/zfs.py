"""ZFS model volumes: dataset names, property grammar, what a pool supports, and garbage collection.

Everything here is pure (no host is contacted), so the same rules serve these callers:

* the static checks (``validate``), run by the CLI before any host is contacted: dataset name
  grammar, property names and values, giving exit 2 with a clear message;
* the role's preflight (``pool_refusals``), fed with what the host's ``vllama_zfs`` module read
  from ``zpool get all`` / ``zfs get all`` (pool version, feature flags, known properties), so
  that an unsupported property (``lz4`` on zfs-fuse's pool version 23, ``recordsize`` above 128K
  without ``large_blocks``) is refused before anything changes;
* garbage collection (``unreferenced``): the model datasets no release references any more;
* a pool that exists but is not imported (``pool_import``): imported when the controller's
  record (the one file this module writes, under the controller's state folder) says this
  host last used it.

``zfs_facts``/``zpool_facts`` are not used: they fail on zfs-fuse, and the preflight must read
old pools too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllama_provision.errors import Problem, suggest

DATASET_VARIABLE = "vllama_zfs_dataset"
PROPERTIES_VARIABLE = "vllama_zfs_properties"

# Production defaults for model weights on OpenZFS: large records (weights are read
# sequentially in big chunks), cheap compression, no access-time writes, xattrs in inodes.
DEFAULT_PROPERTIES: dict[str, str] = {"recordsize": "1M", "compression": "lz4", "atime": "off",
                                      "xattr": "sa"}

# The snapshot taken once a dataset's content is staged and verified.
STAGED_SNAPSHOT = "staged"
# User properties the tool writes on every model dataset it creates; garbage collection never
# touches a dataset without them.
MARK_CONTENT = "org.vllama:content"
MARK_MODEL = "org.vllama:model"

# Properties the tool sets itself on every model dataset.
MANAGED = {"mountpoint": "the tool mounts each model dataset at its store folder",
           "readonly": "the tool sets readonly=on once a model is staged and verified",
           "canmount": "model datasets are always mounted"}

_POOL_RESERVED = frozenset({"mirror", "raidz", "raidz1", "raidz2", "raidz3", "draid", "spare",
                            "log", "cache", "special", "dedup"})
_COMPONENT = re.compile(r"^[A-Za-z0-9_.:-]+$")
MAX_PARENT_LENGTH = 160  # ZFS names are at most 255 bytes; children add a model component
_USER_PROPERTY = re.compile(r"^[a-z0-9_.-]+:[a-z0-9_.:-]+$")
SIZE_ALLOWED = "a power of two from 512 to 16M, written as bytes or with K/M (e.g. 128K, 1M)"

_ON_OFF = ("on", "off")
_COMPRESSION_RE = re.compile(r"^(on|off|lzjb|gzip|gzip-[1-9]|zle|lz4|zstd|zstd-([1-9]|1[0-9])|"
                             r"zstd-fast|zstd-fast-([1-9]|[1-9][0-9]|[1-9]00|1000))$")
_CHECKSUMS = ("on", "off", "fletcher2", "fletcher4", "sha256", "sha512", "skein", "edonr",
              "blake3")
_DEDUP = ("off", "on", "verify", *[f"{c}{v}" for c in ("sha256", "sha512", "skein", "edonr",
                                                       "blake3") for v in ("", ",verify")])


@dataclass(frozen=True)
class PropertySpec:
    """One settable property: its allowed values (a tuple, a regex, or sizes) in words."""

    allowed: str
    choices: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    size: bool = False

    def check(self, value: str) -> bool:
        if self.size:
            return parse_size(value) is not None
        if self.pattern is not None:
            return bool(self.pattern.match(value))
        return value in self.choices


PROPERTIES: dict[str, PropertySpec] = {
    "recordsize": PropertySpec(SIZE_ALLOWED, size=True),
    "compression": PropertySpec("on, off, lzjb, gzip, gzip-1..9, zle, lz4, zstd, zstd-1..19, "
                                "zstd-fast[-N]", pattern=_COMPRESSION_RE),
    "atime": PropertySpec("on, off", _ON_OFF),
    "relatime": PropertySpec("on, off", _ON_OFF),
    "xattr": PropertySpec("on, off, sa, dir", ("on", "off", "sa", "dir")),
    "checksum": PropertySpec(", ".join(_CHECKSUMS), _CHECKSUMS),
    "sync": PropertySpec("standard, always, disabled", ("standard", "always", "disabled")),
    "primarycache": PropertySpec("all, none, metadata", ("all", "none", "metadata")),
    "secondarycache": PropertySpec("all, none, metadata", ("all", "none", "metadata")),
    "logbias": PropertySpec("latency, throughput", ("latency", "throughput")),
    "copies": PropertySpec("1, 2, 3", ("1", "2", "3")),
    "dedup": PropertySpec("off, on, verify, sha256[,verify], ...", _DEDUP),
    "redundant_metadata": PropertySpec("all, most, some, none", ("all", "most", "some", "none")),
    "snapdir": PropertySpec("hidden, visible", ("hidden", "visible")),
}
PROPERTY_NAMES_ALLOWED = (", ".join(sorted(PROPERTIES)) +
                          ", or a user property MODULE:NAME")


def parse_size(value: str) -> int | None:
    """Bytes of a ZFS size (``131072``, ``128K``, ``1M``) that is a valid record size, else None."""
    m = re.match(r"^([0-9]+)([kKmM]?)$", value)
    if not m:
        return None
    number = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[m.group(2).lower()]
    if number < 512 or number > 16 * 1024**2 or number & (number - 1):
        return None
    return number


def normalize_value(value: Any) -> str | None:
    """A property value as ZFS takes it: YAML's booleans (``atime: off`` unquoted) become
    on/off, integers their digits; anything else that is not a string is None."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    return None


def normalize_properties(props: Mapping[str, Any] | None) -> dict[str, str]:
    """The properties as ``zfs create -o`` takes them (values already validated)."""
    out: dict[str, str] = {}
    for key, value in (props or {}).items():
        text = normalize_value(value)
        if text is not None:
            enum = str(key) in PROPERTIES and not PROPERTIES[str(key)].size
            out[str(key)] = text.lower() if enum else text
    return out


def dataset_name_problem(name: str) -> str:
    """What is wrong with a parent dataset name ('' when it is fine)."""
    if not name:
        return "is empty"
    if name.startswith("/"):
        return "is a mount point, not a dataset name (POOL/DATASET, without a leading '/')"
    if len(name) > MAX_PARENT_LENGTH:
        return f"is longer than {MAX_PARENT_LENGTH} characters"
    if "@" in name or "#" in name or "%" in name:
        return "names a snapshot or bookmark; give a dataset (no '@', '#' or '%')"
    parts = name.split("/")
    if any(p == "" for p in parts):
        return "has an empty component (a leading, trailing or doubled '/')"
    bad = [p for p in parts if not _COMPONENT.match(p)]
    if bad:
        return f"component {bad[0]!r} has characters ZFS does not allow"
    if any(p in (".", "..") for p in parts):
        return "has a '.' or '..' component"
    pool = parts[0]
    if not pool[0].isalpha():
        return f"pool name {pool!r} must start with a letter"
    if pool.lower() in _POOL_RESERVED or re.match(r"^(raidz|draid)[0-9]", pool.lower()):
        return f"pool name {pool!r} is a word ZFS reserves"
    return ""


def validate(host_vars: Mapping[str, Any], where: Mapping[str, str]) -> list[Problem]:
    """Static checks of ``vllama_zfs_dataset`` and ``vllama_zfs_properties`` beyond their types."""
    problems: list[Problem] = []
    dataset = host_vars.get(DATASET_VARIABLE)
    if isinstance(dataset, str) and dataset:
        why = dataset_name_problem(dataset)
        if why:
            problems.append(Problem(why, variable=DATASET_VARIABLE, value=dataset,
                                    has_value=True, allowed="POOL[/DATASET...]", **where))
    props = host_vars.get(PROPERTIES_VARIABLE)
    if isinstance(props, Mapping):
        problems += _validate_properties(props, where)
    return problems


def _validate_properties(props: Mapping[str, Any], where: Mapping[str, str]) -> list[Problem]:
    problems: list[Problem] = []
    for key, raw in props.items():
        name = str(key)
        variable = f"{PROPERTIES_VARIABLE}.{name}"
        if name in MANAGED:
            problems.append(Problem(f"is set by the tool itself ({MANAGED[name]})",
                                    variable=variable, **where))
            continue
        value = normalize_value(raw)
        if ":" in name:
            if not _USER_PROPERTY.match(name):
                problems.append(Problem("is not a valid user property name", variable=variable,
                                        allowed="MODULE:NAME in lowercase letters, digits and "
                                        "_ . - :", **where))
            elif value is None or len(value) > 8191:
                problems.append(Problem("must be a string of at most 8191 characters",
                                        variable=variable, value=raw, has_value=True, **where))
            continue
        spec = PROPERTIES.get(name)
        if spec is None:
            problems.append(Problem("is not a ZFS property this tool sets", variable=variable,
                                    suggestion=suggest(name, list(PROPERTIES)),
                                    allowed=PROPERTY_NAMES_ALLOWED, **where))
            continue
        if value is None or not spec.check(value if spec.size else value.lower()):
            problems.append(Problem("is not a valid value", variable=variable, value=raw,
                                    has_value=True, allowed=spec.allowed, **where))
    return problems


# --- what a pool supports -------------------------------------------------------------------

FEATURE_FLAGS_VERSION = 5000


@dataclass
class PoolInfo:
    """What the host's ``vllama_zfs`` module read about a pool (``zpool get all``/``zfs get``)."""

    name: str
    version: int  # 5000 for feature-flag pools (``zpool get version`` prints '-')
    features: dict[str, str] = field(default_factory=dict)  # lz4_compress -> enabled/active/...
    known_properties: frozenset[str] = frozenset()  # from ``zfs get all POOL``

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any]) -> PoolInfo:
        raw = str(facts.get("version") or "-").strip()
        version = int(raw) if raw.isdigit() else FEATURE_FLAGS_VERSION
        return cls(name=str(facts.get("name", "")), version=version,
                   features={str(k): str(v) for k, v in (facts.get("features") or {}).items()},
                   known_properties=frozenset(map(str, facts.get("known_properties") or [])))

    def has_feature(self, feature: str) -> bool:
        return self.features.get(feature, "") in ("enabled", "active")

    def describe(self) -> str:
        if self.version >= FEATURE_FLAGS_VERSION:
            return f"pool {self.name!r} (feature flags)"
        return f"pool {self.name!r} (pool version {self.version})"


def _needs(prop: str, value: str) -> tuple[str, int] | None:
    """The feature flag (and the legacy pool version that would also do; 0: none) a value needs."""
    if prop == "compression":
        if value == "lz4":
            return "lz4_compress", 0
        if value.startswith("zstd"):
            return "zstd_compress", 0
        if value == "zle":
            return "", 20
    if prop == "recordsize":
        size = parse_size(value) or 0
        if size > 128 * 1024:
            return "large_blocks", 0
    if prop == "xattr" and value == "sa":
        return "", 24
    if prop == "checksum" and value in ("sha512", "skein", "edonr", "blake3"):
        return value, 0
    if prop == "dedup":
        algo = value.split(",")[0]
        if algo in ("sha512", "skein", "edonr", "blake3"):
            return algo, 0
    return None


def _alternative(prop: str) -> str:
    return {"compression": "compression: 'on' (or lzjb/gzip)",
            "recordsize": "recordsize: 128K",
            "xattr": "xattr: 'on'"}.get(prop, "another value, or leave the property out")


def pool_refusals(pool: PoolInfo, props: Mapping[str, str]) -> list[str]:
    """Why the pool cannot take each of these (normalized) properties; empty when it can."""
    refusals: list[str] = []
    for prop, value in props.items():
        if ":" in prop:
            continue  # user properties: every pool version takes them
        if pool.known_properties and prop not in pool.known_properties:
            refusals.append(f"{PROPERTIES_VARIABLE}: {prop} is not a property the ZFS on "
                            f"{pool.describe()} knows (`zfs get all` does not list it); leave "
                            "it out")
            continue
        need = _needs(prop, value)
        if need is None:
            continue
        feature, legacy_version = need
        if pool.version >= FEATURE_FLAGS_VERSION:
            ok = not feature or pool.has_feature(feature)
        else:
            ok = bool(legacy_version) and pool.version >= legacy_version
        if ok:
            continue
        what = f"feature@{feature}" if feature else f"pool version {legacy_version}"
        if pool.version >= FEATURE_FLAGS_VERSION:
            state = pool.features.get(feature)
            detail = (f"feature@{feature} is {state}" if state else
                      f"this ZFS has no feature@{feature}")
            hint = (f"enable it (`zpool set feature@{feature}=enabled {pool.name}`) or set "
                    f"{_alternative(prop)}" if state else f"set {_alternative(prop)}")
        else:
            detail = f"it needs {what}"
            hint = f"set {_alternative(prop)}"
        refusals.append(f"{PROPERTIES_VARIABLE}: {prop}={value} is not supported by "
                        f"{pool.describe()}: {detail}; {hint}")
    return refusals


# --- names of model datasets and garbage collection -----------------------------------------

def _component(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
    if cleaned != text:
        cleaned += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return cleaned


def child_name(parent: str, slug: str, content_key: str) -> str:
    """The model dataset for one content: ``PARENT/SLUG--KEY`` with KEY the sha256's first 16
    hex digits, or the pinned revision (unsafe characters replaced, plus a hash of the original
    so different revisions never share a dataset)."""
    if re.fullmatch(r"[0-9a-f]{64}", content_key):
        key = content_key[:16]
    else:
        key = _component(content_key)[:60]
    return f"{parent.rstrip('/')}/{_component(slug)[:60]}--{key}"


@dataclass(frozen=True)
class ModelDataset:
    """A model dataset found on a host."""

    name: str
    mountpoint: str
    content: str = ""  # the MARK_CONTENT user property: set only on datasets the tool made


def unreferenced(datasets: Iterable[ModelDataset], referenced: Iterable[str],
                 keep: Iterable[str] = ()) -> list[ModelDataset]:
    """The model datasets garbage collection may destroy: made by the tool (marked), and
    neither mounted at a folder a release references nor named in ``keep``."""
    refs = {r.rstrip("/") for r in referenced if r}
    kept = set(keep)
    out = []
    for ds in datasets:
        if not ds.content or ds.name in kept:
            continue
        mount = ds.mountpoint.rstrip("/")
        if any(r == mount or r.startswith(mount + "/") for r in refs):
            continue
        out.append(ds)
    return out


# --- the role's preflight -------------------------------------------------------------------

@dataclass(frozen=True)
class WantedDataset:
    """A model dataset this run needs: where it mounts, what it holds, bytes still to copy."""

    name: str
    mountpoint: str
    content: str
    model: str = ""
    size: int = 0


def wanted_datasets(sources: Mapping[str, Any],
                    models: Mapping[str, str] | None = None) -> list[WantedDataset]:
    """The model datasets of a host's resolved sources (``_vllama_sources``, by instance), once
    each; ``models`` gives each instance's ``model`` for the dataset's mark."""
    seen: dict[str, WantedDataset] = {}
    for instance, source in sources.items():
        model = source.get("model") or {}
        name = model.get("dataset") or ""
        if not name or name in seen:
            continue
        store_dir = str(model.get("store_dir") or "")
        seen[name] = WantedDataset(name=name, mountpoint=store_dir,
                                   content=store_dir.rstrip("/").rsplit("/", 1)[-1],
                                   model=(models or {}).get(instance, ""),
                                   size=int(model.get("size") or 0)
                                   if model.get("mode") == "copy" else 0)
    return list(seen.values())


def preflight_refusals(parent: str, props: Mapping[str, str], facts: Mapping[str, Any],
                       wanted: Iterable[WantedDataset]) -> list[str]:
    """Everything that stops this host's ZFS store, from the ``vllama_zfs`` facts; [] if none."""
    pool_facts = facts.get("pool") or {}
    pool = str(pool_facts.get("name") or parent.split("/")[0])
    if not facts.get("tools"):
        return [f"{DATASET_VARIABLE} is {parent!r} but this host has no zfs/zpool commands: "
                f"install ZFS (OpenZFS, or zfs-fuse) and create pool {pool!r}, or leave "
                f"{DATASET_VARIABLE} empty for plain folders"]
    if not pool_facts.get("exists"):
        pools = ", ".join(pool_facts.get("pools") or []) or "none"
        importable = ", ".join(f"{p.get('name')} (id {p.get('id')})"
                               for p in pool_facts.get("importable") or []) or "none"
        return [f"{DATASET_VARIABLE}: pool {pool!r} does not exist on this host (its pools: "
                f"{pools}); create it (zpool create {pool} ...) or name a dataset of an existing "
                f"pool; nor can it be imported (importable pools: {importable}; for devices "
                "outside /dev, such as files, set vllama_zfs_import_dirs)"]
    refusals = pool_refusals(PoolInfo.from_facts(pool_facts), props)
    states = {d["name"]: d for d in facts.get("datasets") or []}
    missing_bytes = 0
    for want in wanted:
        state = states.get(want.name) or {}
        if not state.get("exists"):
            missing_bytes += want.size
            if state.get("conflict"):
                refusals.append(f"model dataset {want.name} cannot be mounted: "
                                f"{state['conflict']} (a plain-folder store?); move it away or "
                                "choose another vllama_models_root")
            continue
        if not state.get("content"):
            refusals.append(f"dataset {want.name} exists but vllama-provision did not make it "
                            f"(no {MARK_CONTENT} property); the tool never writes into it: "
                            f"rename or destroy it, or choose another {DATASET_VARIABLE}")
        elif state["content"] != want.content:
            refusals.append(f"dataset {want.name} holds content {state['content']}, not "
                            f"{want.content}")
        elif state.get("mountpoint") and state["mountpoint"] != want.mountpoint:
            refusals.append(f"model dataset {want.name} is mounted at {state['mountpoint']}, "
                            f"and this inventory's vllama_models_root would put it at "
                            f"{want.mountpoint}; releases link to the old place: keep "
                            "vllama_models_root as it was")
        elif not state.get("sealed"):
            missing_bytes += want.size  # staging was interrupted: the copy starts again
    available = int(pool_facts.get("available_bytes") or 0)
    if missing_bytes and available and missing_bytes > available:
        refusals.append(f"pool {pool!r} has {available / 1048576:.1f} MiB available; the models "
                        f"to stage need {missing_bytes / 1048576:.1f} MiB")
    return refusals


# --- a pool that exists but is not imported (a host rebuilt on its surviving disks) ---
#
# The controller records, per inventory host, the pool (name and GUID) each run found imported
# there. A rebuilt host's pool is not imported (its old OS never exported it), and ZFS says it
# was "last accessed by another system" (the new OS has another hostid): it is imported, with
# -f, only when the controller's record says this inventory host last used that very pool;
# otherwise the host is refused with the command to run.

POOL_RECORDS = "zfs-pools"


@dataclass(frozen=True)
class PoolImport:
    """What to do about a pool that is not imported: import it (``pool_id``, ``force``),
    refuse (``refusal``), or neither (no importable pool has its name)."""

    pool_id: str = ""
    force: bool = False
    refusal: str = ""


def import_command(pool_id: str, dirs: Iterable[str], force: bool) -> str:
    return " ".join(["zpool import", *(f"-d {d}" for d in dirs), *(["-f"] if force else []),
                     pool_id])


def pool_import(pool: str, importable: Iterable[Mapping[str, Any]],
                record: Mapping[str, Any] | None, dirs: Iterable[str] = ()) -> PoolImport:
    """Decide about ``pool`` (not imported) from what ``zpool import`` lists and the
    controller's record of this host's pool."""
    dirs = list(dirs)
    found = [p for p in importable if p.get("name") == pool]
    if not found:
        return PoolImport()  # nothing to import: the preflight says the pool does not exist
    if len(found) > 1:
        ids = ", ".join(str(p.get("id")) for p in found)
        return PoolImport(refusal=(
            f"{DATASET_VARIABLE}: {len(found)} importable pools are named {pool!r} (ids {ids}); "
            "import the right one yourself: " + import_command("ID", dirs, True)))
    candidate = found[0]
    pool_id, foreign = str(candidate.get("id") or ""), bool(candidate.get("foreign"))
    mine = bool(record) and record.get("pool") == pool and str(record.get("guid")) == pool_id
    if str(candidate.get("state") or "ONLINE") != "ONLINE":
        return PoolImport(refusal=(
            f"{DATASET_VARIABLE}: pool {pool!r} (id {pool_id}) is importable but "
            f"{candidate.get('state')}; repair it, then: {import_command(pool_id, dirs, foreign)}"))
    if not mine:
        last = "last accessed by another system" if foreign else "exported"
        return PoolImport(refusal=(
            f"{DATASET_VARIABLE}: pool {pool!r} (id {pool_id}, {last}) is not imported, and "
            "the controller has no record of this host using it; if it is this host's, import "
            f"it: {import_command(pool_id, dirs, foreign)}"))
    return PoolImport(pool_id=pool_id, force=foreign)


def pool_record_path(state_dir: Path, host: str) -> Path:
    return state_dir / POOL_RECORDS / f"{host}.json"


def load_pool_record(state_dir: Path, host: str) -> dict[str, Any] | None:
    try:
        data = json.loads(pool_record_path(state_dir, host).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_pool_record(state_dir: Path, host: str, pool: str, guid: str) -> None:
    """Record that ``host`` uses ``pool`` (GUID ``guid``); rewritten only when it changed."""
    if not guid or load_pool_record(state_dir, host) == {"pool": pool, "guid": guid}:
        return
    path = pool_record_path(state_dir, host)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"pool": pool, "guid": guid}) + "\n", encoding="utf-8")
    os.replace(tmp, path)
