"""Regions against the shipped GB/T 2260 table, bureaus for every region, ASCII digits."""

from __future__ import annotations

from typing import Annotated

import httpx
import pytest
from fastapi import FastAPI
from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator

from shared.digits import ascii_digits, digits_pattern, only_ascii_digits
from shared.http import install_error_handlers
from shared.regions import (
    BUREAU_NAMES,
    bureau_name,
    collecting_region,
    region_codes,
    region_problem,
    region_table,
)


def test_the_table_is_the_full_gb2260_list() -> None:
    table = region_table()
    assert len(table) > 3000
    assert table["110000"] == "北京市" and table["440300"] == "深圳市"
    assert table["440305"] == "南山区" and table["429004"] == "仙桃市"
    assert all(ascii_digits(code, 6) for code in table)
    assert region_table() is table  # read once


@pytest.mark.parametrize(
    "region", ["110000", "110105", "310000", "440300", "440305", "650100", "660000", "429004"]
)
def test_existing_regions_pass(region: str) -> None:
    assert region_problem(region) is None
    assert region in region_codes()


@pytest.mark.parametrize(
    ("region", "why"),
    [
        ("119999", "not a region code"),  # province 11, no such region: passed before
        ("440399", "not a region code"),
        ("110000\n", "6 digits"),
        (" 110000", "6 digits"),
        ("١١٠٠٠٠", "6 digits"),  # Arabic-Indic
        ("11٠٠٠٠", "6 digits"),  # mixed: booked a premium to bureau:11٠٠٠٠:premium before
        ("１１００００", "6 digits"),  # full-width
        ("810000", "not a province"),  # Hong Kong: its own schemes
        ("990000", "not a province"),
        ("", "6 digits"),
    ],
)
def test_non_existent_and_malformed_regions_are_refused(region: str, why: str) -> None:
    problem = region_problem(region)
    assert problem is not None and why in problem


def test_only_existing_codes_pass_among_all_six_digit_codes_of_served_provinces() -> None:
    passing = sum(
        region_problem(f"{p}{rest:04d}") is None
        for p in ("11", "44", "65")
        for rest in range(10_000)
    )
    expected = sum(1 for c in region_codes() if c[:2] in ("11", "44", "65"))
    assert passing == expected < 400


@pytest.mark.parametrize(
    ("region", "bureau"),
    [
        ("110000", "北京市医疗保障局"),
        ("310000", "上海市医疗保障局"),
        ("440100", "广州市医疗保障局"),
        ("440300", "深圳市医疗保障局"),
        ("440305", "深圳市医疗保障局"),  # a district: its prefecture-level city's bureau
        ("110105", "北京市医疗保障局"),  # a district of a municipality
        ("500229", "重庆市医疗保障局"),  # a county of a municipality
        ("440103", "广州市医疗保障局"),  # BUREAU_NAMES reaches the districts too
        ("440000", "广东省医疗保障局"),
        ("429004", "仙桃市医疗保障局"),  # county-level city under the province
        ("522600", "黔东南苗族侗族自治州医疗保障局"),
        ("660000", "新疆生产建设兵团医疗保障局"),
    ],
)
def test_every_region_has_a_bureau(region: str, bureau: str) -> None:
    assert bureau_name(region) == bureau


def test_every_served_region_names_a_bureau_from_the_table() -> None:
    for region in region_codes():
        name = bureau_name(region)
        assert name.endswith("医疗保障局") and " " not in name and region not in name
        assert collecting_region(collecting_region(region)) == collecting_region(region)


def test_the_three_default_names_and_the_settings_override_are_kept() -> None:
    assert dict(BUREAU_NAMES) == {
        "110000": "北京市医疗保障局",
        "310000": "上海市医疗保障局",
        "440100": "广州市医疗保障局",
    }
    names = {"440300": "深圳市医保局", "440305": "南山区医保分局"}
    assert bureau_name("440300", names) == "深圳市医保局"
    assert bureau_name("440306", names) == "深圳市医保局"  # via its city
    assert bureau_name("440305", names) == "南山区医保分局"  # its own entry first
    assert bureau_name("110000", {}) == "北京市医疗保障局"


@pytest.mark.parametrize(
    ("text", "length", "ok"),
    [
        ("110000", 6, True),
        ("110000", None, True),
        ("11000", 6, False),
        ("١١٠٠٠٠", 6, False),
        ("１１００００", None, False),
        ("110000\n", None, False),
        ("", None, False),
        ("12a", None, False),
    ],
)
def test_ascii_digits(text: str, length: int | None, ok: bool) -> None:
    assert ascii_digits(text, length) is ok


class _Form(BaseModel):
    code: str = Field(pattern=digits_pattern(6))
    payer_id: Annotated[str, AfterValidator(only_ascii_digits)]


@pytest.mark.parametrize("code", ["١٢٣٤٥٦", "１２３４５６", "123456\n", "12345"])
def test_digits_pattern_refuses_what_backslash_d_lets_by(code: str) -> None:
    with pytest.raises(ValidationError):
        _Form(code=code, payer_id="u-1")


def test_only_ascii_digits_refuses_other_scripts_digits_inside_ids() -> None:
    assert _Form(code="123456", payer_id="u-1001").payer_id == "u-1001"
    with pytest.raises(ValidationError, match="ASCII digits"):
        _Form(code="123456", payer_id="u-１٠٠1")


class _Premium(BaseModel):
    region: str

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str) -> str:  # as payment's schemas check it
        problem = region_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


@pytest.mark.parametrize("region", ["110000\n", "١١٠٠٠٠", "１１００００", "119999", "11٠٠٠٠"])
async def test_a_bad_region_over_http_is_a_400_error_object_never_a_500(region: str) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/premiums")
    async def premiums(body: _Premium) -> dict[str, str]:
        return {"payee": f"bureau:{body.region}:premium"}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.post("/premiums", json={"region": region})
        good = await client.post("/premiums", json={"region": "440305"})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "region"
    assert good.json() == {"payee": "bureau:440305:premium"}
