"""Our canonical JSON is RFC 8785: byte-identical to the reference implementation on the
values we hash (receipt faces, journal entries, manifests, request bodies)."""

from __future__ import annotations

import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from shared.canonical import canonical_bytes, canonical_json

# JSON values as Yibao hashes them: integers (fen), strings (Chinese text included),
# booleans, null, nested objects and arrays; no floats (money is integer fen).
BMP_TEXT = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=12)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | BMP_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(BMP_TEXT, inner, max_size=4),
    max_leaves=20,
)


@given(VALUES)
def test_canonical_json_is_rfc8785(value: object) -> None:
    assert canonical_bytes(value) == rfc8785.dumps(value)


def test_a_receipt_face_canonicalises_as_rfc8785() -> None:
    face = {
        "title": "医疗收费电子票据",
        "code": "11060126",
        "number": "0000000001",
        "total": {"amount": 38000, "currency": "CNY", "in_words": "叁佰捌拾元整"},
        "payee": "北京市医疗保障局",
        "items": [{"name": "城乡居民基本医疗保险费", "amount": 38000}],
        "payer": {"name": "张三", "id_number_masked": "110105********002X"},
    }
    assert canonical_json(face).encode() == rfc8785.dumps(face)
    assert canonical_json(face).startswith('{"code":"11060126","items":')
