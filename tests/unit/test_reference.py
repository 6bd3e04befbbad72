import pytest

from ormb.errors import InvalidReferenceError
from ormb.oci.reference import parse_reference


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("gaocegege/fashion_model:v1", "localhost:5000", "gaocegege/fashion_model", "v1", None),
        ("fashion", "localhost:5000", "fashion", "latest", None),
        ("localhost/fashion:v2", "localhost", "fashion", "v2", None),
        ("localhost:5000/a/b/c:1.0-rc_1", "localhost:5000", "a/b/c", "1.0-rc_1", None),
        ("registry.example.com/team/fashion", "registry.example.com", "team/fashion", "latest", None),
        ("127.0.0.1:8080/m@sha256:" + "a" * 64, "127.0.0.1:8080", "m", None, "sha256:" + "a" * 64),
        ("ghcr.io/o/m:v1@sha256:" + "b" * 64, "ghcr.io", "o/m", "v1", "sha256:" + "b" * 64),
        ("[::1]:5000/m:v1", "[::1]:5000", "m", "v1", None),
        ("Registry/m:v1", "Registry", "m", "v1", None),  # uppercase first component is a host, as in Docker
    ],
)
def test_parses_like_docker(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(text, "localhost:5000")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


def test_str_round_trips() -> None:
    text = "localhost:5000/team/m:v1@sha256:" + "c" * 64
    assert str(parse_reference(text, "x")) == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("Team/Model:v1", "repository component 'Model'"),
        ("m:bad tag", "tag 'bad tag'"),
        ("m:" + "x" * 200, "tag"),
        ("m@sha256:abc", "not a sha256/sha512 digest"),
        ("localhost:5000/", "no repository"),
        ("a//b", "repository component ''"),
        ("bad_host!.com/m", "not a valid registry host"),
    ],
)
def test_bad_references_show_the_accepted_form(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(text, "localhost:5000")
    assert fragment in str(info.value)
    assert "[host[:port]/]repository[:tag][@sha256:digest]" in str(info.value)


def test_default_registry_comes_from_environment_then_config(tmp_path, monkeypatch) -> None:
    from ormb.config import load_settings

    monkeypatch.delenv("ORMB_REGISTRY", raising=False)
    assert load_settings(tmp_path).default_registry == "localhost:5000"
    (tmp_path / "config.yaml").write_text("registry: harbor.example.com\n")
    assert load_settings(tmp_path).default_registry == "harbor.example.com"
    monkeypatch.setenv("ORMB_REGISTRY", "zot.local:5050")
    assert load_settings(tmp_path).default_registry == "zot.local:5050"


SECRET = "s3cr3t-pw"
WITH_USERINFO = [
    ["login", f"http://alice:{SECRET}@127.0.0.1:5000", "-u", "alice", "-p", "x"],
    ["login", f"alice:{SECRET}@127.0.0.1:5000", "-u", "alice", "-p", "x"],
    ["logout", f"https://alice:{SECRET}@registry.example.com/"],
    ["pull", f"alice:{SECRET}@127.0.0.1:5000/team/m:v1"],
    ["pull", f"alice:{SECRET}@127.0.0.1:5000"],
    ["pull", f"{SECRET}@registry.example.com/team/m"],
    ["tags", f"alice:{SECRET}@127.0.0.1:5000/team/m"],
    ["inspect", "--remote", f"alice:{SECRET}@127.0.0.1:5000/team/m:v1"],
    ["copy", f"alice:{SECRET}@127.0.0.1:5000/team/m:v1", "127.0.0.1:5000/team/n:v1"],
]


@pytest.mark.parametrize("argv", WITH_USERINFO, ids=lambda argv: argv[0] + ":" + argv[-1 if argv[0] != "login" else 1][:14])
def test_a_password_typed_into_an_address_is_refused_and_never_repeated(
        argv: list[str], ormb_home: object, capsys: pytest.CaptureFixture[str]) -> None:
    """A user name and password in a registry address (as a URL allows) is refused before anything is sent,
    and the error says so without repeating them (they would land in CI logs)."""
    from ormb.cli.main import main

    assert main(argv) == 2
    out = capsys.readouterr()
    assert SECRET not in out.err + out.out
    assert "user name or password" in out.err
