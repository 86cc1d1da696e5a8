"""Option expiry, assignment and exercise on the wire: Alpaca's account activities and Tradier's
account history, in the shapes of the brokers' own documentation.

Alpaca: docs.alpaca.markets "Non-Trade Activities for Option Events" (OPEXC/OPASN with the OPTRD
stock trade they book; the OPTRD there repeats the option event's id). Tradier:
docs.tradier.com "History" (``{"type": "option", "option": {"option_type": "OPTEXP",
"description": "Expired", "quantity": -1.00000000}}``), its single object and "null" shapes.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aioresponses import aioresponses
from pydantic import SecretStr

from syncd.brokers.alpaca import AlpacaBroker
from syncd.brokers.base import BadBrokerData
from syncd.brokers.tradier import TradierBroker
from syncd.brokers.types import OptionEventKind
from syncd.settings import AccountSettings
from tests.unit.broker_wire import Recorder, calls, url_pattern

ALPACA = "https://paper-api.alpaca.markets"
TRADIER = "https://sandbox.tradier.com"
ACCT = "VA12345678"
SECRET = "wire-test-secret-do-not-leak-0001"


@pytest.fixture
def alpaca(session: aiohttp.ClientSession, rec: Recorder) -> AlpacaBroker:
    account = AccountSettings(
        name="alpaca-wire", broker="alpaca", api_key=SecretStr("PKWIRETESTKEY0001"), api_secret=SecretStr(SECRET)
    )
    return AlpacaBroker(account, session=session, **rec.wiring())


@pytest.fixture
def tradier(session: aiohttp.ClientSession, rec: Recorder) -> TradierBroker:
    account = AccountSettings(name="tradier-wire", broker="tradier", account_id=ACCT, token=SecretStr("tok-0123"))
    return TradierBroker(account, session=session, **rec.wiring())


ACTIVITIES = url_pattern(ALPACA, "/v2/account/activities")
HISTORY = url_pattern(TRADIER, f"/v1/accounts/{ACCT}/history")

# The documented exercise and assignment, verbatim but for the dates; then an expiry shaped the same.
EXERCISE = [
    {
        "id": "20190801011955195::5f596936-6f23-4cef-bdf1-3806aae57dbf",
        "activity_type": "OPEXC",
        "date": "2023-07-21",
        "net_amount": "0",
        "description": "Option Exercise",
        "symbol": "AAPL230721C00150000",
        "qty": "-2",
        "status": "executed",
    },
    {
        "id": "20190801011955195::5f596936-6f23-4cef-bdf1-3806aae57dbf",
        "activity_type": "OPTRD",
        "date": "2023-07-21",
        "net_amount": "-30000",
        "description": "Option Trade",
        "symbol": "AAPL",
        "qty": "200",
        "price": "150",
        "status": "executed",
    },
]
ASSIGNMENT = [
    {
        "id": "20230701000000000::0b5e3b8d-c566-4bef-b741-2bf598dd6ae7",
        "activity_type": "OPASN",
        "date": "2023-07-01",
        "net_amount": "0",
        "description": "Option Assignment",
        "symbol": "AAPL230721C00150000",
        "qty": "2",
        "status": "executed",
    },
    {
        "activity_type": "OPTRD",
        "id": "20230701000000000::0b5e3b8d-c566-4bef-b741-2bf598dd6ae7",
        "date": "2023-07-01",
        "net_amount": "30000",
        "description": "Option Trade",
        "symbol": "AAPL",
        "qty": "-200",
        "price": "150",
        "status": "executed",
    },
]
EXPIRY = {
    "id": "20230722000000000::1c0d9a41-1111-4cef-bdf1-3806aae57dbf",
    "activity_type": "OPEXP",
    "date": "2023-07-21",
    "net_amount": "0",
    "description": "Option Expiry",
    "symbol": "AAPL230721P00140000",
    "qty": "-1",
    "status": "executed",
}


async def test_alpaca_activities_exercise_assignment_expiry(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(ACTIVITIES, payload=[*ASSIGNMENT, *EXERCISE, EXPIRY])
    events = await alpaca.list_option_events(dt.date(2023, 7, 1))
    assert [(e.kind, e.symbol, e.quantity, e.price, e.on) for e in events] == [
        (OptionEventKind.ASSIGNED, "AAPL230721C00150000", Decimal(2), None, dt.date(2023, 7, 1)),
        (OptionEventKind.STOCK, "AAPL", Decimal(-200), Decimal(150), dt.date(2023, 7, 1)),
        (OptionEventKind.EXERCISED, "AAPL230721C00150000", Decimal(-2), None, dt.date(2023, 7, 21)),
        (OptionEventKind.STOCK, "AAPL", Decimal(200), Decimal(150), dt.date(2023, 7, 21)),
        (OptionEventKind.EXPIRED, "AAPL230721P00140000", Decimal(-1), None, dt.date(2023, 7, 21)),
    ]
    # the OPTRD shares the option event's id (as documented): both are kept, told apart by kind
    assert events[2].event_id == events[3].event_id
    ((_, url, _),) = calls(mock, "GET")
    query = parse_qs(urlsplit(url).query)
    assert query["activity_types"] == ["OPEXP,OPASN,OPEXC,OPTRD"]
    assert query["after"] == ["2023-06-30"]
    assert query["direction"] == ["asc"]


async def test_alpaca_activities_empty_and_canceled(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(ACTIVITIES, payload=[])
    assert await alpaca.list_option_events(dt.date(2023, 7, 1)) == []
    mock.get(ACTIVITIES, payload=[{**EXPIRY, "status": "canceled"}, {**EXPIRY, "activity_type": "DIV"}])
    assert await alpaca.list_option_events(dt.date(2023, 7, 1)) == []


async def test_alpaca_activities_pages(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    page = [{**EXPIRY, "id": f"20230721000000000::{i:036d}"} for i in range(100)]
    mock.get(ACTIVITIES, payload=page)
    mock.get(ACTIVITIES, payload=[{**EXPIRY, "id": "20230721000000001::last"}])
    events = await alpaca.list_option_events(dt.date(2023, 7, 21))
    assert len(events) == 101
    second = calls(mock, "GET")[1][1]
    assert parse_qs(urlsplit(second).query)["page_token"] == [page[-1]["id"]]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"id": None}, "activities[0].id"),
        ({"date": "yesterday"}, "activities[0].date"),
        ({"qty": "two"}, "activities[0].qty"),
        ({"qty": None}, "activities[0].qty"),
        ({"symbol": "AAPL"}, "activities[0].symbol"),
        ({"symbol": ""}, "activities[0].symbol"),
    ],
)
async def test_alpaca_activities_malformed(
    alpaca: AlpacaBroker, mock: aioresponses, bad: dict[str, Any], field: str
) -> None:
    mock.get(ACTIVITIES, payload=[{**EXPIRY, **bad}])
    with pytest.raises(BadBrokerData) as err:
        await alpaca.list_option_events(dt.date(2023, 7, 1))
    assert err.value.field == field
    assert SECRET not in str(err.value)


async def test_alpaca_activities_not_a_list(alpaca: AlpacaBroker, mock: aioresponses) -> None:
    mock.get(ACTIVITIES, payload={"activities": []})
    with pytest.raises(BadBrokerData):
        await alpaca.list_option_events(dt.date(2023, 7, 1))


# -- Tradier ------------------------------------------------------------------------------------

OPTEXP = {
    "amount": 0,
    "date": "2018-09-21T00:00:00Z",
    "type": "option",
    "option": {"option_type": "OPTEXP", "description": "Expired", "quantity": -1.00000000},
}


async def test_tradier_history_documented_expiry(tradier: TradierBroker, mock: aioresponses) -> None:
    mock.get(HISTORY, payload={"history": {"event": [OPTEXP]}})
    (event,) = await tradier.list_option_events(dt.date(2018, 9, 21))
    assert (event.kind, event.on, event.quantity, event.symbol) == (
        OptionEventKind.EXPIRED,
        dt.date(2018, 9, 21),
        Decimal(-1),
        None,
    )
    ((_, url, _),) = calls(mock, "GET")
    query = parse_qs(urlsplit(url).query)
    assert (query["type"], query["start"]) == (["option"], ["2018-09-21"])


async def test_tradier_history_single_object_and_null(tradier: TradierBroker, mock: aioresponses) -> None:
    mock.get(HISTORY, payload={"history": {"event": OPTEXP}})
    assert len(await tradier.list_option_events(dt.date(2018, 9, 1))) == 1
    mock.get(HISTORY, payload={"history": "null"})
    assert await tradier.list_option_events(dt.date(2018, 9, 1)) == []
    mock.get(HISTORY, payload={"history": None})
    assert await tradier.list_option_events(dt.date(2018, 9, 1)) == []


async def test_tradier_history_ids_are_stable_and_tell_identical_records_apart(
    tradier: TradierBroker, mock: aioresponses
) -> None:
    """Two identical expiries on one day (two legs of one sign) are two events; asking again gives the same ids."""
    trade = {
        "amount": -129.05,
        "date": "2018-05-23T00:00:00Z",
        "type": "trade",
        "trade": {"commission": 0, "description": "CALL GE 06/22/18 14", "price": 1.29, "quantity": 1.0},
    }
    answer = {"history": {"event": [OPTEXP, OPTEXP, trade]}}
    mock.get(HISTORY, payload=answer)
    mock.get(HISTORY, payload=answer)
    first = await tradier.list_option_events(dt.date(2018, 5, 1))
    second = await tradier.list_option_events(dt.date(2018, 5, 1))
    assert len(first) == 2 and len({e.event_id for e in first}) == 2
    assert [e.event_id for e in first] == [e.event_id for e in second]


async def test_tradier_history_assignment_exercise_and_symbol(tradier: TradierBroker, mock: aioresponses) -> None:
    events = [
        {**OPTEXP, "option": {"option_type": "OPTASGN", "description": "Assigned", "quantity": "1"}},
        {
            **OPTEXP,
            "option": {
                "option_type": "OPTEXER",
                "description": "Exercised",
                "quantity": -2,
                "symbol": "GE180921C00014000",
            },
        },
        {**OPTEXP, "option": {"option_type": "OPTJNL", "description": "something else", "quantity": 1}},
    ]
    mock.get(HISTORY, payload={"history": {"event": events}})
    got = await tradier.list_option_events(dt.date(2018, 9, 1))
    assert [(e.kind, e.quantity, e.symbol) for e in got] == [
        (OptionEventKind.ASSIGNED, Decimal(1), None),
        (OptionEventKind.EXERCISED, Decimal(-2), "GE180921C00014000"),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"option": "OPTEXP"},
        {"date": "soon"},
        {"option": {"option_type": "OPTEXP", "description": "Expired", "quantity": "x"}},
        {"option": {"option_type": "OPTEXP", "description": "Expired"}},
    ],
)
async def test_tradier_history_malformed(tradier: TradierBroker, mock: aioresponses, bad: dict[str, Any]) -> None:
    mock.get(HISTORY, payload={"history": {"event": [{**OPTEXP, **bad}]}})
    with pytest.raises(BadBrokerData):
        await tradier.list_option_events(dt.date(2018, 9, 1))


async def test_tradier_history_not_an_object(tradier: TradierBroker, mock: aioresponses) -> None:
    mock.get(HISTORY, payload={"history": {"event": ["OPTEXP"]}})
    with pytest.raises(BadBrokerData):
        await tradier.list_option_events(dt.date(2018, 9, 1))


async def test_alpaca_activity_with_a_timestamp_date_numbers_and_extra_fields(
    alpaca: AlpacaBroker, mock: aioresponses
) -> None:
    row = {
        **EXPIRY,
        "date": "2023-07-21T00:00:00Z",
        "qty": -1,
        "account_id": "3f7b0a1a-1111-4b5c-9d2e-5a6b7c8d9e0f",
        "per_share_amount": None,
        "symbol": " AAPL230721P00140000 ",
    }
    mock.get(ACTIVITIES, payload=[row])
    (event,) = await alpaca.list_option_events(dt.date(2023, 7, 21))
    assert (event.on, event.quantity, event.symbol) == (dt.date(2023, 7, 21), Decimal(-1), "AAPL230721P00140000")
