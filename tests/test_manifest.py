"""The plugin manifest ``nyxplug.toml`` (``nyxplug.source.manifest``).

Every broken-manifest kind has its own test with the whole message, so a change in
wording is a deliberate change here too.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import msgspec
import pytest
import semver
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nyxplug._constants import Permission
from nyxplug._errors import NyxplugError
from nyxplug.source.layout import MANIFEST_FILE
from nyxplug.source.manifest import (
    DEFAULT_MEMORY_LIMIT,
    Manifest,
    ManifestError,
    check_api_compatible,
    decode_manifest,
    load_manifest,
    manifest_from_dict,
    parse_size,
)
from nyxplug.source.versions import PLUGIN_API_VERSION, VersionRange

PLUGIN = """\
[plugin]
name = "echo"
id = 1001
version = "1.2.0"
entry = "echo_plugin:Echo"
api = ">=1.0, <2"
"""

FULL = """\
[plugin]
name = "echo"
id = 1001
version = "1.2.0-rc.1+build.7"
entry = "echo_plugin.main:Echo"
api = "^1.0"
description = "Echoes DATA frames back"
authors = ["Ada <ada@example.org>"]
tags = ["demo", "echo"]

[permissions]
frames = ["DATA_ACCESS", "HANDSHAKE"]

[sandbox]
network = true
network_allowlist = ["*.example.org", "localhost"]
filesystem = "read-only"
filesystem_allowlist = ["/srv/data"]
memory_limit = "128MiB"

[resources]
capacity = 10
handler_timeout = 2.5
isolation = "process"

[config]
greeting = "hi"
limits = { max = 3, ratio = 0.5 }
when = 1979-05-27T07:32:00Z

[dependencies]
storage = ">=1.0, <2"
clock = "*"
"""


def exact(message: str) -> str:
    """An anchored regex matching ``message`` literally."""
    return f"^{re.escape(message)}$"


def write_plugin(tmp_path: Path, text: str | bytes) -> Path:
    """A plugin folder holding ``text`` as its manifest; returns the manifest path."""
    folder = tmp_path / "echo"
    folder.mkdir(exist_ok=True)
    path = folder / MANIFEST_FILE
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def broken(tmp_path: Path, text: str | bytes, problem: str, field: str) -> ManifestError:
    """Load ``text`` and check the full message and the error's fields."""
    path = write_plugin(tmp_path, text)
    at = "" if field == "$" else f" - at `{field}`"
    with pytest.raises(
        ManifestError, match=exact(f"Invalid manifest {path}: {problem}{at}")
    ) as info:
        load_manifest(path.parent)
    assert (info.value.source, info.value.field, info.value.problem) == (str(path), field, problem)
    return info.value


# -- valid manifests ----------------------------------------------------------------


def test_full_manifest(tmp_path: Path) -> None:
    manifest = load_manifest(write_plugin(tmp_path, FULL))
    assert manifest.name == "echo"
    assert manifest.id == 1001
    assert manifest.version == semver.Version(1, 2, 0, "rc.1", "build.7")
    assert manifest.entry_module == "echo_plugin.main"
    assert manifest.entry_attr == "Echo"
    assert manifest.api_range == VersionRange.parse(">=1.0.0, <2.0.0")
    assert manifest.plugin.description == "Echoes DATA frames back"
    assert manifest.plugin.authors == ("Ada <ada@example.org>",)
    assert manifest.plugin.tags == ("demo", "echo")
    assert manifest.permission_mask == Permission.DATA_ACCESS | Permission.HANDSHAKE
    sandbox = manifest.sandbox
    assert sandbox.network is True
    assert sandbox.network_allowlist == ("*.example.org", "localhost")
    assert sandbox.filesystem == "read-only"
    assert sandbox.filesystem_allowlist == ("/srv/data",)
    assert sandbox.memory_limit == 128 * 1024 * 1024
    assert manifest.resources.capacity == 10
    assert manifest.resources.handler_timeout == 2.5
    assert manifest.resources.isolation == "process"
    assert manifest.config["greeting"] == "hi"
    assert manifest.config["limits"] == {"max": 3, "ratio": 0.5}
    assert manifest.config["when"].year == 1979
    assert manifest.dependencies == {"storage": ">=1.0, <2", "clock": "*"}
    assert manifest.dependency_ranges == {
        "storage": VersionRange.parse(">=1, <2"),
        "clock": VersionRange.parse("*"),
    }
    check_api_compatible(manifest)


def test_minimal_manifest_defaults(tmp_path: Path) -> None:
    manifest = load_manifest(write_plugin(tmp_path, PLUGIN))
    assert manifest.plugin.description == ""
    assert manifest.plugin.authors == ()
    assert manifest.plugin.tags == ()
    assert manifest.permission_mask == Permission(0)
    assert manifest.sandbox.network is False
    assert manifest.sandbox.network_allowlist == ()
    assert manifest.sandbox.filesystem == "none"
    assert manifest.sandbox.filesystem_allowlist == ()
    assert manifest.sandbox.memory_limit == DEFAULT_MEMORY_LIMIT == 64 * 1024 * 1024
    # None means "the host's [defaults]".
    assert manifest.resources.capacity is None
    assert manifest.resources.handler_timeout is None
    assert manifest.resources.isolation == "in-process"
    assert manifest.config == {}
    assert manifest.dependencies == {}
    assert manifest.dependency_ranges == {}


def test_load_accepts_folder_or_file(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, PLUGIN)
    assert load_manifest(path) == load_manifest(path.parent) == load_manifest(str(path))


def test_decode_manifest_from_memory() -> None:
    assert decode_manifest(PLUGIN.encode()) == decode_manifest(PLUGIN)
    with pytest.raises(ManifestError, match=r"^Invalid manifest <memory>: Missing required table"):
        decode_manifest(b"")


def test_manifest_is_frozen(tmp_path: Path) -> None:
    manifest = load_manifest(write_plugin(tmp_path, PLUGIN))
    with pytest.raises(AttributeError):
        manifest.plugin = manifest.plugin  # type: ignore[misc]


def test_plain_msgspec_decode_validates_too() -> None:
    """``__post_init__`` checks run whoever decodes, so a Manifest is always valid."""
    with pytest.raises(msgspec.ValidationError):
        msgspec.toml.decode(PLUGIN.replace('"1.2.0"', '"1.2"').encode(), type=Manifest)


def test_manifest_from_dict() -> None:
    document = {
        "plugin": {"name": "echo", "id": 7, "version": "1.0.0", "entry": "m:A", "api": "^1"},
        "permissions": {"frames": ["CONTROL"]},
        "resources": {"capacity": 3},
    }
    manifest = manifest_from_dict(document, "@plugin on Echo")
    assert manifest.permission_mask == Permission.CONTROL
    assert manifest.resources.capacity == 3
    document["plugin"]["name"] = "Echo"  # type: ignore[index]
    message = (
        "Invalid manifest @plugin on Echo: Expected `str` matching `^[a-z][a-z0-9_-]{0,63}$`, "
        "got `Echo` - at `plugin.name`"
    )
    with pytest.raises(ManifestError, match=exact(message)):
        manifest_from_dict(document, "@plugin on Echo")


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1, 1),
        (4096, 4096),
        ("1KiB", 1024),
        ("512 KiB", 512 * 1024),
        ("64MiB", 64 * 1024**2),
        ("2GiB", 2 * 1024**3),
    ],
)
def test_parse_size(value: int | str, size: int) -> None:
    assert parse_size(value) == size


ISOLATED = '[resources]\nisolation = "process"\n'


def test_memory_limit_as_bytes(tmp_path: Path) -> None:
    text = PLUGIN + "[sandbox]\nmemory_limit = 1000\n" + ISOLATED
    manifest = load_manifest(write_plugin(tmp_path, text))
    assert manifest.sandbox.memory_limit == 1000


def test_a_memory_limit_nothing_enforces_is_refused(tmp_path: Path) -> None:
    """Issue 15 item 13: only an isolated child's cgroup enforces memory_limit."""
    text = PLUGIN + '[sandbox]\nmemory_limit = "8MiB"\n'
    broken(
        tmp_path, text,
        'Expected it only with [resources] isolation = "process" (the child\'s cgroup enforces '
        'it), got it for an in-process plugin - set isolation = "process" or remove memory_limit',
        "sandbox.memory_limit",
    )  # fmt: skip


def test_handler_timeout_accepts_an_integer(tmp_path: Path) -> None:
    text = PLUGIN + "[resources]\nhandler_timeout = 3\n"
    assert load_manifest(write_plugin(tmp_path, text)).resources.handler_timeout == 3.0


def test_manifest_error_is_a_value_error_and_pickles(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        decode_manifest(b"x = 1\n", "somewhere.toml")
    error = info.value
    assert isinstance(error, NyxplugError)
    assert isinstance(error, ValueError)
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == str(error)
    assert (clone.source, clone.field, clone.problem) == (error.source, error.field, error.problem)


# -- the API range ------------------------------------------------------------------


def test_api_compatible_with_other_api_versions(tmp_path: Path) -> None:
    manifest = load_manifest(write_plugin(tmp_path, PLUGIN))
    check_api_compatible(manifest, "1.9.0")
    check_api_compatible(manifest, semver.Version(1, 0, 0))
    with pytest.raises(ManifestError, match=r"containing `2\.0\.0`"):
        check_api_compatible(manifest, "2.0.0")


def test_api_range_excluding_plugin_api_version(tmp_path: Path) -> None:
    path = write_plugin(tmp_path, PLUGIN.replace('">=1.0, <2"', '">=2.0, <3"'))
    manifest = load_manifest(path)  # decoding alone accepts it: tools can still read it
    message = (
        f"Invalid manifest of plugin `echo`: Expected a plugin-API range containing "
        f"`{PLUGIN_API_VERSION}` (the plugin API this nyxplug offers), got `>=2.0, <3` "
        "- at `plugin.api`"
    )
    with pytest.raises(ManifestError, match=exact(message)):
        check_api_compatible(manifest)
    with pytest.raises(ManifestError, match=rf"^Invalid manifest {re.escape(str(path))}: "):
        check_api_compatible(manifest, source=str(path))


# -- one test per broken-manifest kind ---------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / MANIFEST_FILE
    message = f"Invalid manifest {path}: Expected an existing file, got nothing there"
    with pytest.raises(ManifestError, match=exact(message)) as info:
        load_manifest(path)
    assert info.value.field == "$"


def test_folder_without_manifest(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST_FILE
    message = f"Invalid manifest {path}: Expected an existing file, got nothing there"
    with pytest.raises(ManifestError, match=exact(message)):
        load_manifest(tmp_path)


def test_not_toml(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN + "description = \n",
        "Invalid TOML: Invalid value (at line 7, column 15)",
        "$",
    )


def test_not_utf8(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN.encode() + b'description = "\xff"\n',
        f"Expected UTF-8 text, got byte 0xff at offset {len(PLUGIN) + 15}",
        "$",
    )


def test_missing_plugin_table(tmp_path: Path) -> None:
    broken(tmp_path, "[permissions]\n", "Missing required table `[plugin]`", "plugin")


def test_plugin_not_a_table(tmp_path: Path) -> None:
    broken(tmp_path, 'plugin = "echo"\n', "Expected `table`, got `str`", "plugin")


def test_missing_required_key(tmp_path: Path) -> None:
    text = PLUGIN.replace('version = "1.2.0"\n', "")
    broken(tmp_path, text, "Missing required key `version`", "plugin.version")


def test_wrong_type(tmp_path: Path) -> None:
    broken(tmp_path, PLUGIN.replace("1001", '"1001"'), "Expected `int`, got `str`", "plugin.id")


def test_wrong_type_in_array(tmp_path: Path) -> None:
    text = PLUGIN + 'authors = ["Ada", 3]\n'
    broken(tmp_path, text, "Expected `str`, got `int`", "plugin.authors[1]")


def test_bad_name(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN.replace('"echo"', '"Echo"'),
        "Expected `str` matching `^[a-z][a-z0-9_-]{0,63}$`, got `Echo`",
        "plugin.name",
    )


def test_id_out_of_range(tmp_path: Path) -> None:
    text = PLUGIN.replace("1001", str(2**32))
    broken(tmp_path, text, "Expected `int` <= 4294967295, got `4294967296`", "plugin.id")


def test_id_negative(tmp_path: Path) -> None:
    broken(tmp_path, PLUGIN.replace("1001", "-1"), "Expected `int` >= 0, got `-1`", "plugin.id")


def test_bad_semver(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN.replace('"1.2.0"', '"1.2"'),
        "Expected a semantic version like `1.2.3`, got `1.2` - it needs all three of "
        "MAJOR.MINOR.PATCH",
        "plugin.version",
    )


@pytest.mark.parametrize("entry", ["echo_plugin.Echo", "echo-plugin:Echo", "m:", ":A", "m:A.b"])
def test_bad_entry(tmp_path: Path, entry: str) -> None:
    broken(
        tmp_path,
        PLUGIN.replace("echo_plugin:Echo", entry),
        f"Expected `module:attr` (a dotted module path, a colon, an attribute name), got `{entry}`",
        "plugin.entry",
    )


def test_bad_api_range(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN.replace(">=1.0, <2", ">=1.0 <2"),
        "Expected a version range like `>=1.0, <2`, got `>=1.0 <2` - `>=1.0 <2` has a space "
        "inside; separate comparisons with commas",
        "plugin.api",
    )


def test_unknown_permission(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN + '[permissions]\nframes = ["DATA_ACCESS", "DATA"]\n',
        "Expected one of `HANDSHAKE`, `DATA_ACCESS`, `CONTROL`, `ERROR_REPORTING`, got `DATA`",
        "permissions.frames[1]",
    )


@pytest.mark.parametrize(
    ("extra", "problem", "field"),
    [
        (
            'verison = "1.0.0"\n',
            "Unknown key `verison` (did you mean `version`?)",
            "plugin.verison",
        ),
        (
            "zzz = 1\n",
            "Unknown key `zzz`, expected one of `name`, `id`, `version`, `entry`, `api`, "
            "`description`, `authors`, `tags`",
            "plugin.zzz",
        ),
        ("[sandbx]\n", "Unknown table `[sandbx]` (did you mean `sandbox`?)", "sandbx"),
        (
            "[permissions]\nframe = []\n",
            "Unknown key `frame` (did you mean `frames`?)",
            "permissions.frame",
        ),  # fmt: skip
        (
            "[sandbox]\nnetwrk = true\n",
            "Unknown key `netwrk` (did you mean `network`?)",
            "sandbox.netwrk",
        ),  # fmt: skip
        (
            "[resources]\ntimeout = 1\n",
            "Unknown key `timeout` (did you mean `handler_timeout`?)",
            "resources.timeout",
        ),  # fmt: skip
    ],
)
def test_unknown_key(tmp_path: Path, extra: str, problem: str, field: str) -> None:
    broken(tmp_path, PLUGIN + extra, problem, field)


def test_bad_filesystem(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN + '[sandbox]\nfilesystem = "rw"\n',
        "Expected one of `none`, `read-only`, `full`, got `rw`",
        "sandbox.filesystem",
    )


def test_empty_allowlist_entry(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN + '[sandbox]\nfilesystem_allowlist = ["/srv", " "]\n',
        "Expected a pattern, got an empty string",
        "sandbox.filesystem_allowlist[1]",
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            '"64MB"',
            "Expected bytes as an integer or text like `64MiB` (units KiB, MiB, GiB), got `64MB`",
        ),
        (
            '"-1MiB"',
            "Expected bytes as an integer or text like `64MiB` (units KiB, MiB, GiB), got `-1MiB`",
        ),  # fmt: skip
        ("0", "Expected a size of at least 1 byte, got `0`"),
        ("1.5", "Expected `int | str`, got `float`"),
        ("true", "Expected `int | str`, got `bool`"),
    ],
)
def test_bad_memory_size(tmp_path: Path, value: str, problem: str) -> None:
    text = PLUGIN + f"[sandbox]\nmemory_limit = {value}\n"
    broken(tmp_path, text, problem, "sandbox.memory_limit")


def test_capacity_below_one(tmp_path: Path) -> None:
    text = PLUGIN + "[resources]\ncapacity = 0\n"
    broken(tmp_path, text, "Expected `int` >= 1, got `0`", "resources.capacity")


def test_timeout_not_positive(tmp_path: Path) -> None:
    text = PLUGIN + "[resources]\nhandler_timeout = -0.5\n"
    broken(tmp_path, text, "Expected `float` > 0.0, got `-0.5`", "resources.handler_timeout")


def test_timeout_not_finite(tmp_path: Path) -> None:
    text = PLUGIN + "[resources]\nhandler_timeout = inf\n"
    problem = "Expected a finite number of seconds, got `inf`"
    broken(tmp_path, text, problem, "resources.handler_timeout")


def test_bad_isolation(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN + '[resources]\nisolation = "thread"\n',
        "Expected one of `in-process`, `process`, got `thread`",
        "resources.isolation",
    )


def test_bad_dependency_range(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN + '[dependencies]\nstorage = "1.0"\n',
        "Expected a version range like `>=1.0, <2`, got `1.0` - `1.0` has no operator; write "
        "`==1.0` for exactly that version or `^1.0` for compatible ones",
        "dependencies.storage",
    )


def test_bad_dependency_name(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN + '[dependencies]\nStorage = "*"\n',
        "Expected a plugin name matching `^[a-z][a-z0-9_-]{0,63}$`, got `Storage`",
        "dependencies.Storage",
    )


def test_dependency_on_itself(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN + '[dependencies]\necho = ">=1"\n',
        "Expected another plugin, got `echo` (this plugin itself)",
        "dependencies.echo",
    )


def test_a_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    """``$`` alone would accept ``"echo\\n"`` (it matches before a final newline)."""
    path = tmp_path / "nyxplug.toml"
    path.write_text(PLUGIN.replace('"echo"', '"echo\\n"'))
    with pytest.raises(ManifestError, match="plugin.name"):
        load_manifest(path)


# -- hostile bytes: only a ManifestError ever comes out (issue 15 item 5) -----------------

DEEP = "Expected arrays and tables nested at most 32 levels deep, got deeper nesting"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a = " + "[" * 5000 + "]" * 5000 + "\n", 1),  # the 10 KB manifest that stopped a host
        (PLUGIN + "[config]\nx = " + "{a = " * 3000 + "}" * 3000 + "\n", 8),
        (PLUGIN + "[config]\nx = " + "[{a = " * 400 + "}]" * 400 + "\n", 8),
        (PLUGIN + "[config]\nx = " + "[" * 33 + "]" * 33 + "\n", 8),
    ],
    ids=["arrays", "inline-tables", "mixed", "just-over"],
)
def test_deep_nesting_is_refused_with_the_line(tmp_path: Path, text: str, line: int) -> None:
    broken(tmp_path, text, f"{DEEP} at line {line} - flatten that value", "$")


def test_nesting_up_to_the_limit_decodes() -> None:
    manifest = decode_manifest(PLUGIN + "[config]\nx = " + "[" * 31 + "]" * 31 + "\n")
    value = manifest.config["x"]
    for _ in range(30):
        (value,) = value
    assert value == []


def test_brackets_in_strings_and_comments_do_not_count() -> None:
    deep = "[" * 100
    text = (
        PLUGIN
        + f'description = "{deep}\\"{deep}"\n'
        + f"tags = ['{deep}', '''{deep}\n{deep}'''', \"\"\"{deep}\"\"\"\"]\n"
        + f"# {deep}\n"
    )
    manifest = decode_manifest(text)
    assert manifest.plugin.description == f'{deep}"{deep}'
    assert manifest.plugin.tags == (deep, f"{deep}\n{deep}'", f'{deep}"')


def test_dotted_keys_deep_in_config_are_refused(tmp_path: Path) -> None:
    """``a.b.c = 1`` nests tables without a bracket; plugins must not get 5000 levels."""
    broken(
        tmp_path,
        PLUGIN + "[config]\n" + ".".join(["a"] * 5000) + " = 1\n",
        "Expected tables and arrays nested at most 32 levels deep (dotted keys count as "
        "levels), got deeper nesting - flatten the plugin's settings",
        "config",
    )


def test_an_integer_too_long_for_python_is_refused(tmp_path: Path) -> None:
    broken(
        tmp_path,
        PLUGIN + "[config]\nx = 1" + "0" * 5000 + "\n",
        "Expected integers of at most 4300 digits, got a longer one - write such a number "
        "as a string",
        "$",
    )


def test_deep_python_data_is_refused_by_manifest_from_dict() -> None:
    value: list[object] = []
    for _ in range(5000):
        value = [value]
    document = {"plugin": {"name": "echo"}, "config": {"x": value}}
    with pytest.raises(
        ManifestError, match=exact(f"Invalid manifest <dict>: {DEEP} - flatten the document")
    ):
        manifest_from_dict(document)


#: Pieces of hostile TOML: nesting, quotes of every kind, escapes, comments, dotted keys,
#: huge numbers, control characters, invalid UTF-8 and surrogates' encodings.
_PIECES = [
    b"[",
    b"]",
    b"{",
    b"}",
    b"[[",
    b"]]",
    b"=",
    b",",
    b".",
    b"a",
    b"config",
    b"plugin",
    b"\n",
    b"\r",
    b"\t",
    b" ",
    b"#",
    b'"',
    b"'",
    b'"""',
    b"'''",
    b"\\",
    b"\\u",
    b"\\U0010ffff",
    b"\x00",
    b"\x1f",
    b"\x7f",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"1",
    b"-",
    b"+",
    b"e",
    b"inf",
    b"nan",
    b"true",
    b"1979-05-27",
    b"T07:32:00Z",
    b"0x",
    b"9" * 4400,
    b"1e99999",
]
_NESTED = st.builds(
    lambda opening, depth, closing: opening * depth + closing * depth,
    st.sampled_from([b"[", b"{a=", b"[{a=", b"a."]),
    st.integers(0, 3000),
    st.sampled_from([b"]", b"}", b"}]", b"=1"]),
)
_HOSTILE = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(_PIECES), max_size=60).map(b"".join),
    st.tuples(
        st.sampled_from([b"", PLUGIN.encode(), PLUGIN.encode() + b"[config]\n"]),
        st.sampled_from([b"", b"x = ", b"[config]\nx = ", b"a."]),
        _NESTED,
        st.lists(st.sampled_from(_PIECES), max_size=8).map(b"".join),
    ).map(b"".join),
)


@given(data=_HOSTILE)
@settings(max_examples=400, deadline=None)
def test_hostile_bytes_decode_or_raise_manifest_error(data: bytes) -> None:
    try:
        manifest = decode_manifest(data, "fuzz")
    except ManifestError as exc:
        assert exc.source == "fuzz"
        assert str(exc).startswith("Invalid manifest fuzz: ")
    else:
        assert isinstance(manifest, Manifest)


@given(text=st.text(st.characters(categories=["Cs", "Cc", "L", "N", "P", "S", "Z"]), max_size=200))
@example(text='description = "\ud800"\n')  # str.encode() raised UnicodeEncodeError here
@settings(max_examples=200, deadline=None)
def test_hostile_text_decodes_or_raises_manifest_error(text: str) -> None:
    """Text too, lone surrogates included (refused as bad UTF-8)."""
    try:
        decode_manifest(PLUGIN + text)
    except ManifestError:
        pass
