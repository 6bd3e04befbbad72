"""The one grammar (ormb.oci.grammar): ASCII only, anchored, and the client's parser agrees with it."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ormb.errors import InvalidReferenceError
from ormb.oci import grammar
from ormb.oci.reference import parse_reference

# Strings built mostly from the characters the grammar cares about, plus Unicode look-alikes.
_ALPHABET = string.ascii_letters + string.digits + "._-/:@\n é٣ＡK"
names = st.text(alphabet="abz09._-/_\n éK", max_size=40)
tags = st.text(alphabet=string.ascii_letters[:6] + "Z09._-\n é٣ＡK", min_size=1, max_size=140)


@pytest.mark.parametrize("tag", ["vé", "v1\n", "٣", "ＡB", "\u212a", ".v1", "-v1", "a" * 129, ""])
def test_tags_outside_the_ascii_grammar_are_refused(tag: str) -> None:
    assert not grammar.is_tag(tag)
    with pytest.raises(InvalidReferenceError):
        parse_reference(f"localhost:5000/team/model:{tag}", "localhost:5000")


@pytest.mark.parametrize("name", ["team/model\n", "team/modél", "Team/model", "team//model", "team/model/",
                                  "a" * 256, "team/-model", "team/model-", "te..am/m"])
def test_names_outside_the_grammar_are_refused(name: str) -> None:
    assert not grammar.is_repository(name)


@pytest.mark.parametrize("digest", ["sha256:" + "a" * 64 + "\n", "sha256:" + "A" * 64, "sha256:" + "a" * 63,
                                    "sha512:" + "a" * 64, "md5:" + "a" * 32, "sha256:" + "٣" * 64])
def test_digests_outside_the_grammar_are_refused(digest: str) -> None:
    assert not grammar.is_digest(digest)


def test_valid_values_are_accepted() -> None:
    assert grammar.is_repository("team/fashion_model") and grammar.is_repository("a/b__c/d-e.f")
    assert grammar.is_tag("v1.0_rc-2") and grammar.is_tag("_x") and grammar.is_tag("a" * 128)
    assert grammar.is_digest("sha256:" + "0" * 64) and grammar.is_digest("sha512:" + "f" * 128)
    assert grammar.is_host("localhost:5000") and grammar.is_host("[::1]:5000") and grammar.is_host("r.example.com")
    assert not grammar.is_host("localhost:5000\n") and not grammar.is_host("exämple.com")


@given(name=names, tag=tags)
def test_the_client_parser_accepts_exactly_what_the_grammar_accepts(name: str, tag: str) -> None:
    expected = grammar.is_repository(name) and grammar.is_tag(tag)
    try:
        ref = parse_reference(f"localhost:5000/{name}:{tag}", "localhost:5000")
    except InvalidReferenceError:
        accepted = False
    else:
        accepted = True
        assert (ref.repository, ref.tag) == (name, tag)
    assert accepted == expected, (name, tag)


@given(st.text(alphabet=_ALPHABET, max_size=80))
def test_parsing_any_text_either_succeeds_with_grammatical_parts_or_raises_the_reference_error(text: str) -> None:
    try:
        ref = parse_reference(text, "localhost:5000")
    except InvalidReferenceError:
        return
    assert grammar.is_host(ref.registry) and grammar.is_repository(ref.repository)
    assert ref.tag is None or grammar.is_tag(ref.tag)
    assert ref.digest is None or grammar.is_digest(ref.digest)


@given(st.text(alphabet="0123456789\u00b2\u0663\uff11 +-\n", max_size=22))
def test_a_header_number_is_ascii_digits_that_int_can_read(text: str) -> None:
    expected = 1 <= len(text) <= 18 and all(c in "0123456789" for c in text)
    assert grammar.is_decimal(text) == expected
    if grammar.is_decimal(text):
        assert 0 <= int(text) < 1 << 63
