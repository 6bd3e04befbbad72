"""Malformed answers from a registry (or whatever answers in its place) are one clear error line
with a documented exit code (4: the artifact is malformed; 6: the registry answered badly; 3:
not found), never 70 ("internal error, report it") and never a traceback.

Each case bends one answer of the hostile registry (tests/hostile.py) byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostile import PASSWORD, TOKEN, USER, Answer, HostileRegistry, Origin, raw_answer

from conftest import make_model
from ormb import api
from ormb.cli.main import main
from ormb.config import Settings
from ormb.oci import mediatypes
from ormb.oci.grammar import IO_CHUNK, MAX_MANIFEST
from ormb.registry.credentials import Credential, CredentialStore

pytestmark = pytest.mark.integration
DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"schemaVersion": 2, "layers": ' + DEEP + b"}"


def _manifest(body: bytes, content_type: str = mediatypes.OCI_MANIFEST) -> Answer:
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    return Answer(200, {"Content-Type": content_type, "Docker-Content-Digest": digest}, body)


def _json(body: bytes, status: int = 200, **headers: str) -> Answer:
    return Answer(status, {"Content-Type": "application/json", **headers}, body)


def _descriptor(**override: object) -> dict[str, object]:
    return {"mediaType": mediatypes.ORMB_CONFIG, "digest": "sha256:" + "a" * 64, "size": 2, **override}


# (command, method, path fragment, answer, exit code)
MANIFEST = "/manifests/v1"
CASES: dict[str, tuple[str, str, str, Answer, int]] = {
    "manifest nested too deeply": ("pull", "GET", MANIFEST, _manifest(DEEP_OBJECT), 4),
    "manifest is not JSON": ("pull", "GET", MANIFEST, _manifest(b"<html>hello</html>"), 4),
    "manifest is not UTF-8": ("pull", "GET", MANIFEST, _manifest(b'{"a": "\xff\xfe"}'), 4),
    "manifest is a list": ("pull", "GET", MANIFEST, _manifest(b"[]"), 4),
    "mediaType is a number": ("pull", "GET", MANIFEST, _manifest(json.dumps(
        {"schemaVersion": 2, "mediaType": 7, "config": _descriptor(), "layers": []}).encode()), 4),
    "layers is an object": ("pull", "GET", MANIFEST, _manifest(json.dumps(
        {"schemaVersion": 2, "config": _descriptor(), "layers": {}}).encode()), 4),
    "size is a string": ("pull", "GET", MANIFEST, _manifest(json.dumps(
        {"schemaVersion": 2, "config": _descriptor(size="2"), "layers": []}).encode()), 4),
    "digest is not a digest": ("inspect", "GET", MANIFEST, _manifest(json.dumps(
        {"schemaVersion": 2, "config": _descriptor(digest="sha256:../../etc"), "layers": []}).encode()), 4),
    "manifest too large": ("pull", "GET", MANIFEST, _manifest(b" " * (MAX_MANIFEST + 1)), 4),
    "manifest digest header lies": ("pull", "GET", MANIFEST, Answer(
        200, {"Content-Type": mediatypes.OCI_MANIFEST, "Docker-Content-Digest": "sha256:" + "b" * 64}, b"{}"), 4),
    "404 body nested too deeply": ("pull", "GET", MANIFEST, _json(DEEP, 404), 3),
    "500 body nested too deeply": ("pull", "GET", MANIFEST, _json(DEEP, 500), 6),
    "tags is a number": ("tags", "GET", "/tags/list", _json(b'{"tags": 5}'), 6),
    "tags are numbers": ("tags", "GET", "/tags/list", _json(b'{"tags": [1, 2]}'), 6),
    "tag list nested too deeply": ("tags", "GET", "/tags/list", _json(DEEP), 6),
    "tag list is not JSON": ("tags", "GET", "/tags/list", _json(b"tags: v1"), 6),
    "a tag with terminal escapes": ("tags", "GET", "/tags/list", _json(b'{"tags": ["v1\\u001b[2J"]}'), 6),
    "a Link that is not a URL": ("tags", "GET", "/tags/list", _json(b'{"tags": ["v1"]}', Link='<http://[::1>; rel="next"'), 6),
    "a Link to another scheme": ("tags", "GET", "/tags/list", _json(b'{"tags": ["v1"]}', Link='<file:///etc/passwd>; rel="next"'), 6),
    "upload Location not a URL": ("push", "POST", "/blobs/uploads/", Answer(202, {"Location": "http://[::1"}), 6),
    "upload Location to a file": ("push", "POST", "/blobs/uploads/", Answer(202, {"Location": "file:///etc/passwd"}), 6),
    "upload without Location": ("push", "POST", "/blobs/uploads/", Answer(202, {}), 6),
    "chunk minimum not a number": ("push", "POST", "/blobs/uploads/", Answer(
        202, {"Location": "/upload/x", "OCI-Chunk-Min-Length": "lots"}), 6),
    "chunk minimum in Unicode digits": ("push", "POST", "/blobs/uploads/", Answer(
        202, {"Location": "/upload/x", "OCI-Chunk-Min-Length": "\u00b2"}), 6),
    "Retry-After in Unicode digits": ("pull-retry", "GET", MANIFEST, Answer(503, {"Retry-After": "\u00b2"}), 6),
    "chunk Range in Unicode digits": ("push", "PATCH", "/upload/", Answer(  # the Range is ignored; the bent
        202, {"Location": "/upload/x", "Range": "0-\u00b2"}), 3),       # Location then leads to an unknown upload
    # bodies that break, or are not what their headers say (F8: exit 70 before)
    "manifest shorter than its Content-Length": ("pull", "GET", MANIFEST, raw_answer(
        200, {"Content-Type": mediatypes.OCI_MANIFEST}, b'{"schemaVersion": 2, "con', length=10_000), 6),
    "manifest with a bogus Content-Encoding": ("pull", "GET", MANIFEST, Answer(
        200, {"Content-Type": mediatypes.OCI_MANIFEST, "Content-Encoding": "gzip"}, b"not gzip"), 6),
    "blob with a bogus Content-Encoding": ("pull", "GET", "/blobs/sha256:", Answer(
        200, {"Content-Encoding": "gzip"}, b"not gzip"), 6),
    # a Content-Length other than the descriptor's size is refused before a byte is read: corrupt content (4)
    "blob shorter than its Content-Length": ("pull", "GET", "/blobs/sha256:", raw_answer(200, {}, b"x", length=9999), 4),
    "tag page shorter than its Content-Length": ("tags", "GET", "/tags/list", raw_answer(
        200, {"Content-Type": "application/json"}, b'{"tags": ["v', length=1000), 6),
    "tag page with a bogus Content-Encoding": ("tags", "GET", "/tags/list", Answer(
        200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, b"not gzip"), 6),
    "referrers shorter than its Content-Length": ("referrers", "GET", "/referrers/", raw_answer(
        200, {"Content-Type": mediatypes.OCI_INDEX}, b'{"schema', length=1000), 6),
    "a redirect to a Location that is not a URL": ("pull", "GET", MANIFEST, Answer(302, {"Location": "http://[::1"}), 6),
    "a redirect to a Location with a backslash": ("pull", "GET", MANIFEST, Answer(
        302, {"Location": "http://127.0.0.1:1\\@127.0.0.1/v2/"}), 6),
    "a redirect to a file": ("pull", "GET", MANIFEST, Answer(302, {"Location": "file:///etc/passwd"}), 6),
    "a redirect without a Location": ("pull", "GET", MANIFEST, Answer(302, {}), 6),
    "referrers is not a list": ("referrers", "GET", "/referrers/", _json(b'{"schemaVersion": 2, "manifests": 5}'), 4),
    "referrers nested too deeply": ("referrers", "GET", "/referrers/", _json(DEEP), 4),
}

TOKEN_CASES: dict[str, tuple[Answer, int]] = {
    "token with a line break": (_json(b'{"token": "abc\\r\\nX-Injected: yes"}'), 6),
    "token answer nested too deeply": (_json(DEEP), 6),
    "token answer is a list": (_json(b"[]"), 6),
    "token is a number": (_json(b'{"token": 7}'), 6),
    "expires_in is NaN": (_json(b'{"token": "fine", "expires_in": NaN}'), 0),
    "expires_in has 401 digits": (_json(b'{"token": "fine", "expires_in": 1' + b"0" * 400 + b"}"), 0),
    "expires_in is infinite": (_json(b'{"token": "fine", "expires_in": 1e999}'), 0),
    "expires_in is negative": (_json(b'{"token": "fine", "expires_in": -5}'), 0),
    "expires_in is true": (_json(b'{"token": "fine", "expires_in": true}'), 0),
    "token answer shorter than its Content-Length": (raw_answer(
        200, {"Content-Type": "application/json"}, b'{"token": "fi', length=1000), 6),
    "token answer with a bogus Content-Encoding": (Answer(
        200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, b"not gzip"), 6),
}

CHALLENGE_CASES: dict[str, tuple[str, int]] = {
    "realm is not http": ('Bearer realm="ftp://127.0.0.1/token"', 6),
    "realm is missing": ("Bearer service=x", 6),
    "unknown scheme": ("Negotiate abc", 6),
    "empty header": ("", 5),
}


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    registry = HostileRegistry(auth="basic")
    yield registry
    registry.stop()


def _pushed(tmp_path: Path, registry: HostileRegistry, size: int = 2000) -> str:
    ref = f"{registry.host}/team/m:v1"
    pusher = Settings(home=tmp_path / "pusher", default_registry="localhost:5000")
    CredentialStore(pusher.home / "config.json").store(registry.host, Credential(USER, PASSWORD))
    api.save(make_model(tmp_path / "m", {"w.bin": os.urandom(size)}), ref, settings=pusher)
    api.push(ref, settings=pusher)
    return ref


def _bend(registry: HostileRegistry, method: str, fragment: str, answer: Answer, origin: str = "home") -> None:
    def intercept(where: Origin, got_method: str, path: str, headers: dict[str, str]) -> Answer | None:
        if where.name == origin and got_method == method and fragment in path and headers.get("Authorization"):
            return answer
        return None

    registry.intercept = intercept


def _exit_code(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


SECRETS = (PASSWORD, TOKEN, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())


def _check(code: int, err: str, expected: int) -> None:
    assert code == expected, err
    assert not any(secret in err for secret in SECRETS), "a secret in the error output"
    if expected:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "internal error" not in err, err


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_answer_is_a_clear_error(case: str, tmp_path: Path, settings: Settings,
                                             hostile: HostileRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    command, method, fragment, answer, expected = CASES[case]
    ref = _pushed(tmp_path, hostile)
    CredentialStore(settings.home / "config.json").store(hostile.host, Credential(USER, PASSWORD))
    api.save(make_model(tmp_path / "new", {"w.bin": os.urandom(3000)}), f"{hostile.host}/team/new:v1",
             settings=settings)
    argv: dict[str, list[str]] = {
        "pull": ["pull", "--retries", "0", ref],
        "pull-retry": ["pull", "--retries", "1", ref],
        "inspect": ["inspect", "--remote", ref],
        "tags": ["tags", f"{hostile.host}/team/m"],
        "push": ["push", "--retries", "0", "--chunk-size", "1K", f"{hostile.host}/team/new:v1"],
        "referrers": ["copy", "--referrers", ref, f"{hostile.host}/team/copy:v1"],
    }
    _bend(hostile, method, fragment, answer)
    _check(*_exit_code(argv[command], capsys), expected)


@pytest.mark.parametrize("case", list(TOKEN_CASES))
def test_a_malformed_token_answer_is_a_clear_error(case: str, settings: Settings,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    answer, expected = TOKEN_CASES[case]
    registry = HostileRegistry(auth="bearer")
    try:
        CredentialStore(settings.home / "config.json").store(registry.host, Credential(USER, PASSWORD))
        registry.intercept = _token_answer(answer)
        _check(*_exit_code(["tags", f"{registry.host}/team/m"], capsys), expected)
        assert not [s for s in registry.seen if s.authorization and "X-Injected" in s.authorization]
    finally:
        registry.stop()


def _token_answer(answer: Answer) -> Callable[[Origin, str, str, dict[str, str]], Answer | None]:
    def intercept(where: Origin, method: str, path: str, headers: dict[str, str]) -> Answer | None:
        if where.name == "realm":
            return answer
        if where.name == "home" and headers.get("Authorization", "").startswith("Bearer "):
            return _json(b'{"tags": ["v1"]}')  # whatever token came back is accepted
        return None

    return intercept


@pytest.mark.parametrize("case", list(CHALLENGE_CASES))
def test_a_malformed_challenge_is_a_clear_error(case: str, settings: Settings, hostile: HostileRegistry,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    header, expected = CHALLENGE_CASES[case]
    CredentialStore(settings.home / "config.json").store(hostile.host, Credential(USER, PASSWORD))

    def intercept(where: Origin, method: str, path: str, headers: dict[str, str]) -> Answer | None:
        return Answer(401, {"WWW-Authenticate": header} if header else {}) if where.name == "home" else None

    hostile.intercept = intercept
    _check(*_exit_code(["tags", f"{hostile.host}/team/m"], capsys), expected)


def test_a_resumed_download_that_breaks_while_skipping_is_resumed_again(
        tmp_path: Path, settings: Settings, hostile: HostileRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    """F8: the download breaks; the registry ignores Range (200 from the start) and breaks again while ormb
    skips what it has (exit 70 before); the third answer is whole.  The model arrives intact."""
    ref = _pushed(tmp_path, hostile, size=3 * IO_CHUNK)  # ormb reads IO_CHUNK at a time: several reads
    CredentialStore(settings.home / "config.json").store(hostile.host, Credential(USER, PASSWORD))
    layer = max(hostile.blobs, key=lambda d: len(hostile.blobs[d]))
    data = hostile.blobs[layer]
    answers = iter([raw_answer(200, {}, data[: 2 * IO_CHUNK + 100], length=len(data)),  # 2 chunks arrive, then a break
                    raw_answer(200, {}, data[: IO_CHUNK + 100], length=len(data))])  # Range ignored; breaks in the skip

    def intercept(where: Origin, method: str, path: str, headers: dict[str, str]) -> Answer | None:
        if method == "GET" and path.endswith(layer) and headers.get("Authorization"):
            return next(answers, None)  # then the whole blob, from the start (Range still ignored)
        return None

    hostile.intercept = intercept
    _check(*_exit_code(["pull", "--retries", "3", ref], capsys), 0)
    assert api.export(ref, tmp_path / "out", settings=settings).files


def test_an_early_hints_answer_is_not_taken_for_the_answer(
        tmp_path: Path, settings: Settings, hostile: HostileRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    """``103 Early Hints`` before every answer (a CDN may send them): skipped, and the connection stays in step."""
    ref = _pushed(tmp_path, hostile)
    CredentialStore(settings.home / "config.json").store(hostile.host, Credential(USER, PASSWORD))

    def bend(origin: Origin, method: str, path: str, answer: Answer) -> Answer:
        answer.informational = (103, 103)
        return answer

    hostile.bend = bend
    _check(*_exit_code(["pull", "--retries", "0", ref], capsys), 0)
    _check(*_exit_code(["tags", f"{hostile.host}/team/m"], capsys), 0)


RANGES: dict[str, Callable[[int, int], str]] = {
    "per chunk, not cumulative": lambda start, end: f"0-{end - start}",  # F10: 'ormb push' looped forever
    "never moves": lambda start, end: "0-0",
    "more than was sent": lambda start, end: f"0-{end + 100}",
}


@pytest.mark.parametrize("case", list(RANGES))
def test_a_chunk_range_that_does_not_advance_is_a_clear_error(case: str, tmp_path: Path, settings: Settings,
                                                              hostile: HostileRegistry,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The Range a PATCH answer gives must advance, and stay within what was sent; the PATCHes are capped."""
    CredentialStore(settings.home / "config.json").store(hostile.host, Credential(USER, PASSWORD))
    api.save(make_model(tmp_path / "new", {"w.bin": os.urandom(6000)}), f"{hostile.host}/team/new:v1",
             settings=settings)

    def intercept(where: Origin, method: str, path: str, headers: dict[str, str]) -> Answer | None:
        if method == "PATCH" and headers.get("Authorization"):
            start, _, end = headers["Content-Range"].partition("-")
            return Answer(202, {"Location": path, "Range": RANGES[case](int(start), int(end))})
        return None

    hostile.intercept = intercept
    _check(*_exit_code(["push", "--retries", "0", "--chunk-size", "1K", f"{hostile.host}/team/new:v1"], capsys), 6)
    patches = [s for s in hostile.seen if s.method == "PATCH" and s.authorization]
    assert len(patches) <= 2 * 7 + 8  # 6000 random bytes gzip to at most 7 chunks of 1 KiB
