"""Outbox payloads (docs/outbox.md), client ids, and what a close may close."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.brokers.types import Intent, OrderType, Side, TimeInForce
from syncd.trading.outbox import (
    CLIENT_ID_RE,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_DEPTH,
    CancelPayload,
    CloseLeg,
    ClosePayload,
    Next,
    OpenPayload,
    PayloadError,
    ReplacePayload,
    after_lookup,
    check_client_order_id,
    check_price,
    closable_quantity,
    close_request,
    decimal_places,
    make_client_order_id,
    parse_payload,
    price_places,
    read_payload,
    trade_refusal,
)
from syncd.trading.outbox_store import Trade

D = Decimal
LONG_C, SHORT_C = "AAPL260116C00150000", "AAPL260116C00160000"
STOCK = {
    "symbol": "AAPL",
    "side": "buy",
    "qty": 10,
    "type": "limit",
    "limit_price": 150.25,
    "time_in_force": "day",
    "strategy": "LONG_STOCK",
    "take_profit_pct": 50,
    "stop_loss_pct": 25,
}
SPREAD = {
    "legs": [{"symbol": LONG_C, "side": "buy", "ratio": 1}, {"symbol": SHORT_C, "side": "sell", "ratio": 1}],
    "qty": 67,
    "type": "limit",
    "limit_price": 2.10,
    "time_in_force": "day",
    "strategy": "BULL_CALL_DEBIT",
    "take_profit_pct": 50,
}


def test_contract_stock_example() -> None:
    p = parse_payload("open", STOCK)
    assert isinstance(p, OpenPayload)
    assert (p.qty, p.type, p.limit_price, p.time_in_force) == (D(10), OrderType.LIMIT, D("150.25"), TimeInForce.DAY)
    assert (p.strategy, p.take_profit_pct, p.stop_loss_pct, p.underlying) == ("LONG_STOCK", D(50), D(25), "AAPL")
    req = p.order_request("syncd-1-x")
    assert (req.symbol, req.side, req.intent, req.is_multileg) == ("AAPL", Side.BUY, Intent.OPEN, False)


def test_contract_spread_example() -> None:
    p = parse_payload("open", SPREAD)
    assert isinstance(p, OpenPayload)
    assert [(leg.symbol, leg.side, leg.ratio) for leg in p.legs] == [(LONG_C, Side.BUY, 1), (SHORT_C, Side.SELL, 1)]
    assert p.underlying == "AAPL" and p.take_profit_pct == D(50) and p.stop_loss_pct is None
    req = p.order_request("syncd-1-x")
    assert req.is_multileg and req.qty == 67 and req.limit_price == D("2.1")


def test_defaults_market_day_and_a_derived_strategy() -> None:
    p = parse_payload("open", {"symbol": "msft", "side": "sell", "qty": "5", "type": "market"})
    assert isinstance(p, OpenPayload)
    assert (p.legs[0].symbol, p.time_in_force, p.strategy, p.limit_price) == (
        "MSFT",
        TimeInForce.DAY,
        "SHORT_STOCK",
        None,
    )


def test_close_and_cancel_payloads() -> None:
    assert parse_payload("close", {"type": "market"}) == ClosePayload(
        OrderType.MARKET, TimeInForce.DAY, None, None, None
    )
    c = parse_payload("close", {"type": "limit", "limit_price": 2.5, "qty": 10, "reason": "take_profit"})
    assert c == ClosePayload(OrderType.LIMIT, TimeInForce.DAY, D("2.5"), D(10), "take_profit")
    assert parse_payload("close", {}) == ClosePayload(OrderType.MARKET, TimeInForce.DAY, None, None, None)
    assert parse_payload("cancel", {}) == CancelPayload()


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("open", {**STOCK, "colour": "red"}, "unknown key 'colour'"),
        ("open", {k: v for k, v in STOCK.items() if k != "qty"}, "missing field 'qty'"),
        ("open", {k: v for k, v in STOCK.items() if k != "type"}, "missing field 'type'"),
        ("open", {k: v for k, v in STOCK.items() if k != "side"}, "missing field 'side'"),
        ("open", {"qty": 1, "type": "market"}, "missing field 'symbol'"),
        ("open", {**STOCK, "qty": "ten"}, "qty must be a number"),
        ("open", {**STOCK, "qty": True}, "qty must be a number"),
        ("open", {**STOCK, "qty": 0}, "greater than 0"),
        ("open", {**STOCK, "qty": float("nan")}, "finite"),
        ("open", {**STOCK, "qty": "NaN"}, "qty must be a number"),
        ("open", {**STOCK, "qty": 1e12}, "out of range"),
        ("open", {**STOCK, "limit_price": -1}, "limit_price must be greater than 0"),
        ("open", {**STOCK, "limit_price": None}, "missing field 'limit_price'"),
        ("open", {**STOCK, "type": "market"}, "limit_price given for a market order"),
        ("open", {**STOCK, "type": "stop"}, "type must be one of market, limit"),
        ("open", {**STOCK, "time_in_force": "forever"}, "time_in_force must be one of"),
        ("open", {**STOCK, "symbol": "not a symbol!"}, "symbol must be a ticker"),
        ("open", {**STOCK, "take_profit_pct": -5}, "take_profit_pct must be greater than 0"),
        ("open", {**STOCK, "strategy": "BULL CALL"}, "strategy must be"),
        ("open", {**SPREAD, "symbol": "AAPL"}, "either legs or symbol"),
        ("open", {**SPREAD, "qty": 1.5}, "whole number"),
        ("open", {**SPREAD, "legs": []}, "legs must be a list of 1 to 4"),
        (
            "open",
            {**SPREAD, "legs": [{"symbol": LONG_C, "side": "buy"}, {"symbol": LONG_C, "side": "sell"}]},
            "same symbol twice",
        ),
        (
            "open",
            {**SPREAD, "legs": [{"symbol": LONG_C, "side": "buy"}, {"symbol": "AAPL", "side": "sell"}]},
            "OCC option symbol",
        ),
        (
            "open",
            {**SPREAD, "legs": [{"symbol": LONG_C, "side": "buy", "ratio": 0}, {"symbol": SHORT_C, "side": "sell"}]},
            "ratio must be greater than 0",
        ),
        (
            "open",
            {**SPREAD, "legs": [{"symbol": LONG_C}, {"symbol": SHORT_C, "side": "sell"}]},
            "missing field 'side' in legs[0]",
        ),
        (
            "open",
            {**SPREAD, "legs": [{"symbol": LONG_C, "side": "buy", "qty": 3}, {"symbol": SHORT_C, "side": "sell"}]},
            "unknown key 'qty' in leg",
        ),
        ("open", "AAPL", "must be a JSON object"),
        ("close", {"type": "market", "qty": -1}, "qty must be greater than 0"),
        ("close", {"type": "limit"}, "missing field 'limit_price'"),
        ("close", {"type": "market", "symbol": "AAPL"}, "unknown key 'symbol'"),
        ("close", {"reason": ""}, "reason must be"),
        ("cancel", {"x": 1}, "unknown key 'x'"),
        ("cancel", None, "must be a JSON object"),
        ("amend", {}, "unknown request kind"),
        ("replace", {}, "a replace changes limit_price or qty"),
        ("replace", {"limit_price": 2, "type": "limit"}, "unknown key 'type' in replace payload"),
        ("replace", {"qty": 0}, "qty must be greater than 0"),
        ("replace", {"qty": "1e3"}, "plain decimal digits"),
        ("replace", {"limit_price": 2, "request_id": 0}, "must be the id of a request"),
        ("replace", {"limit_price": 2, "request_id": True}, "must be the id of a request"),
        ("replace", {"limit_price": 2, "request_id": "7"}, "must be the id of a request"),
    ],
)
def test_bad_payloads_say_what_is_wrong(kind: str, payload: Any, message: str) -> None:
    with pytest.raises(PayloadError) as err:
        parse_payload(kind, payload)
    assert message in str(err.value), str(err.value)


def test_replace_payload() -> None:
    p = parse_payload("replace", {"limit_price": "-1.05", "qty": 3, "request_id": 7})
    assert isinstance(p, ReplacePayload)
    assert (p.limit_price, p.qty, p.request_id) == (D("-1.05"), D(3), 7)
    assert parse_payload("replace", {"qty": 2}) == ReplacePayload(None, D(2), None)


def test_negative_limit_is_a_credit_for_a_spread() -> None:
    p = parse_payload("open", {**SPREAD, "limit_price": -1.05})
    assert isinstance(p, OpenPayload) and p.limit_price == D("-1.05")


@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_generated_client_ids_are_valid_and_unique(request_id: int) -> None:
    a, b = make_client_order_id(request_id), make_client_order_id(request_id)
    assert CLIENT_ID_RE.fullmatch(a) and len(a) <= 48
    assert a != b  # Alpaca treats a client id as single-use forever, even across databases
    check_client_order_id(a)


@pytest.mark.parametrize("cid", ["", "x" * 49, "has space", "under_score", "ünï", "a/b"])
def test_user_client_ids_outside_the_alphabet_are_refused(cid: str) -> None:
    with pytest.raises(PayloadError, match="client_order_id"):
        check_client_order_id(cid)


def test_close_closes_what_is_held_minus_working_closing_orders() -> None:
    """The seed: a spread recorded with quantity 1 while 67 of each leg are held; 7 already being closed."""
    legs = [CloseLeg(LONG_C, Side.BUY, 1, D(67), D(7)), CloseLeg(SHORT_C, Side.SELL, 1, D(-67), D(0))]
    assert closable_quantity(legs, None, whole=True) == 60
    assert closable_quantity(legs, D(10), whole=True) == 10
    ratio = [CloseLeg(LONG_C, Side.BUY, 1, D(10), D(0)), CloseLeg(SHORT_C, Side.SELL, 2, D(-15), D(0))]
    assert closable_quantity(ratio, None, whole=True) == 7  # 15 / 2 = 7.5 -> 7 whole spreads
    assert closable_quantity([CloseLeg("AAPL", Side.BUY, 1, D("2.5"), D(0))], None, whole=False) == D("2.5")
    wrong_side = [CloseLeg(LONG_C, Side.BUY, 1, D(-5), D(0))]
    assert closable_quantity(wrong_side, None, whole=True) == 0
    assert closable_quantity([CloseLeg(LONG_C, Side.BUY, 1, D(0), D(0))], None, whole=True) == 0


def test_close_request_flips_every_leg_and_the_net_sign() -> None:
    legs = [CloseLeg(LONG_C, Side.BUY, 1, D(67), D(0)), CloseLeg(SHORT_C, Side.SELL, 1, D(-67), D(0))]
    req = close_request("syncd-2-y", legs, D(67), ClosePayload(OrderType.LIMIT, TimeInForce.DAY, D("2.5"), None, None))
    assert [(leg.symbol, leg.side, leg.intent) for leg in req.legs] == [
        (LONG_C, Side.SELL, Intent.CLOSE),
        (SHORT_C, Side.BUY, Intent.CLOSE),
    ]
    assert req.limit_price == D("-2.5")  # selling the spread for 2.50 is a 2.50 credit at the broker
    single = close_request(
        "syncd-3-z",
        [CloseLeg("AAPL", Side.SELL, 1, D(-5), D(0))],
        D(5),
        ClosePayload(OrderType.MARKET, TimeInForce.DAY, None, None, None),
    )
    assert (single.symbol, single.side, single.intent, single.qty) == ("AAPL", Side.BUY, Intent.CLOSE, D(5))


def test_after_lookup() -> None:
    assert after_lookup(True, 3) == Next.RECORD
    assert after_lookup(False, 1) == Next.SEND
    assert after_lookup(False, 3) == Next.FAIL


# -- issue 10: what syncd accepts, bounded; nothing folded, nothing rounded ------------------------


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        # Decimal("5_0") is 50: 50 shares were placed for "5_0"
        ("open", {**STOCK, "qty": "5_0"}, "qty must be a number (plain decimal digits), got '5_0'"),
        ("open", {**STOCK, "qty": " 5"}, "qty must be a number"),
        ("open", {**STOCK, "qty": "1e3"}, "qty must be a number"),
        ("open", {**STOCK, "qty": "\u0665"}, "qty must be a number"),  # ARABIC-INDIC DIGIT FIVE: Decimal takes it
        ("open", {**STOCK, "limit_price": "1_50.25"}, "limit_price must be a number"),
        ("open", {**STOCK, "take_profit_pct": "5_0"}, "take_profit_pct must be a number"),
        ("close", {"type": "market", "qty": "1_0"}, "qty must be a number"),
        (
            "open",
            {
                **SPREAD,
                "legs": [{"symbol": LONG_C, "side": "buy", "ratio": "1_0"}, {"symbol": SHORT_C, "side": "sell"}],
            },
            "legs[0].ratio must be a number",
        ),
        # "\u017fpy".upper() == "SPY": symbols that only match after Unicode case folding are refused
        ("open", {**STOCK, "symbol": "\u017fpy"}, "symbol must be a ticker"),
        ("open", {**STOCK, "symbol": "\uff33\uff30\uff39"}, "symbol must be a ticker"),  # fullwidth SPY
        ("open", {**STOCK, "symbol": "AAPL\n"}, "symbol must be a ticker"),
        ("open", {**STOCK, "symbol": " AAPL"}, "symbol must be a ticker"),
        # LONG_C with CYRILLIC CAPITAL LETTER ES for the C
        (
            "open",
            {
                **SPREAD,
                "legs": [{"symbol": LONG_C.replace("C", "\u0421"), "side": "buy"}, {"symbol": SHORT_C, "side": "sell"}],
            },
            "legs[0].symbol must be a ticker",
        ),
        ("open", {**STOCK, "type": "mar\u212aet"}, "type must be one of"),  # KELVIN SIGN lower()s to "k"
        ("open", {**STOCK, "side": "buy\n"}, "side must be one of"),
        # a regex `$` matches before a trailing newline: the newline reached the broker
        ("open", {**STOCK, "strategy": "LONG_STOCK\n"}, "strategy must be"),
        ("close", {"reason": "take_profit\n"}, "reason must be"),
        # prices with more decimals than the broker takes
        ("open", {**STOCK, "limit_price": "1.12345678901234567890"}, "limit_price has more than 4 decimal places"),
        ("open", {**STOCK, "limit_price": D("1.12345678901234567890")}, "limit_price has more than 4 decimal"),
        ("open", {**STOCK, "limit_price": "150.255"}, "(a stock price at or above $1 takes at most 2)"),
        ("open", {**STOCK, "limit_price": "0.12345"}, "limit_price has more than 4 decimal places"),
        ("open", {**STOCK, "limit_price": "1.0001"}, "more than 2 decimal places"),
        ("open", {**STOCK, "symbol": LONG_C, "qty": 1, "limit_price": "0.125"}, "(an option or multi-leg price"),
        ("open", {**SPREAD, "limit_price": "2.105"}, "(an option or multi-leg price takes at most 2)"),
        ("open", {**SPREAD, "limit_price": "-0.001"}, "(an option or multi-leg price takes at most 2)"),
        ("close", {"type": "limit", "limit_price": "2.00001"}, "limit_price has more than 4 decimal places"),
        ("open", {**STOCK, "qty": "0.0000000001"}, "qty has more than 9 decimal places"),
        ("open", {**STOCK, "qty": D("1E-400")}, "qty has more than 9 decimal places"),
        ("open", {**SPREAD, "legs": [{"symbol": LONG_C, "side": "buy"}] * 5}, "legs must be a list of 1 to 4"),
    ],
)
def test_issue10_refusals(kind: str, payload: Any, message: str) -> None:
    with pytest.raises(PayloadError) as err:
        parse_payload(kind, payload)
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize(
    ("payload", "limit", "qty"),
    [
        ({**STOCK, "limit_price": "150.25"}, D("150.25"), D(10)),
        ({**STOCK, "limit_price": "150.2500"}, D("150.25"), D(10)),  # trailing zeros change nothing
        ({**STOCK, "limit_price": "0.1234"}, D("0.1234"), D(10)),  # sub-dollar stocks take 4 decimals
        ({**STOCK, "qty": "0.123456789", "type": "market", "limit_price": None}, None, D("0.123456789")),
        ({**SPREAD, "limit_price": D("-1.05")}, D("-1.05"), D(67)),
        ({**STOCK, "qty": D("10.000000000000")}, D("150.25"), D(10)),
    ],
)
def test_exact_numbers_within_bounds_are_taken_exactly(payload: Any, limit: Decimal | None, qty: Decimal) -> None:
    if payload.get("limit_price", 0) is None:
        payload = {k: v for k, v in payload.items() if k != "limit_price"}
    p = parse_payload("open", payload)
    assert isinstance(p, OpenPayload)
    assert (p.limit_price, p.qty) == (limit, qty)


def test_price_places_rule() -> None:
    assert [price_places(D(x), option=False) for x in ("1", "0.99", "-0.5", "1000")] == [2, 4, 4, 2]
    assert [price_places(D(x), option=True) for x in ("1", "0.05", "-0.5")] == [2, 2, 2]
    check_price(None, option=True)
    check_price(D("0.05"), option=True)
    with pytest.raises(PayloadError, match="more than 2 decimal places"):
        check_price(D("0.055"), option=True)
    assert [decimal_places(D(x)) for x in ("1.50", "100", "1E+2", "0.000", "-2.500", "0.0001")] == [1, 0, 0, 0, 1, 4]


def test_client_id_with_a_trailing_newline_is_refused() -> None:
    """CLIENT_ID_RE.match with `$` took "abc\\n"; fullmatch does not."""
    with pytest.raises(PayloadError, match="client_order_id"):
        check_client_order_id("syncd-1-abc\n")


def test_read_payload_reads_numbers_exactly() -> None:
    data = read_payload('{"qty": 10, "limit_price": 1.12345678901234567890, "symbol": "[[{{"}')
    assert data == {"qty": 10, "limit_price": D("1.12345678901234567890"), "symbol": "[[{{"}
    assert isinstance(data["limit_price"], Decimal)


def test_read_payload_bounds() -> None:
    def nested(n: int) -> str:
        return "[" * n + "]" * n

    assert read_payload(nested(MAX_PAYLOAD_DEPTH)) is not None
    read_payload('{"s": "' + "[" * 1000 + '"}')  # brackets inside a string are not nesting
    read_payload('{"s": "\\"[[[[[[[[[[\\""}')  # nor after an escaped quote
    for text, message in [
        (nested(MAX_PAYLOAD_DEPTH + 1), f"more than {MAX_PAYLOAD_DEPTH} deep"),
        (nested(5000), f"more than {MAX_PAYLOAD_DEPTH} deep"),  # json.loads would raise RecursionError
        ('{"a":' * 2000 + "1" + "}" * 2000, f"more than {MAX_PAYLOAD_DEPTH} deep"),
        ('{"strategy": "' + "x" * MAX_PAYLOAD_BYTES + '"}', f"more than the {MAX_PAYLOAD_BYTES} syncd accepts"),
        ('{"qty": ' + "9" * 5000 + "}", "payload is not readable JSON"),  # beyond int's 4300-digit limit
        ('{"qty": ', "payload is not readable JSON"),
    ]:
        with pytest.raises(PayloadError, match=re.escape(message)):
            read_payload(text)


def test_trade_refusal() -> None:
    mine, theirs = Trade(7, 1, "open", D(1)), Trade(7, 2, "open", D(1))
    assert trade_refusal("close", "queued", 0, None, None, 1) is None
    assert trade_refusal("close", "queued", 0, 7, mine, 1) is None
    assert trade_refusal("cancel", "queued", 0, 7, mine, 1) is None
    assert trade_refusal("open", "submitting", 1, 7, mine, 1) is None  # syncd's own link, set as it marked it
    for kind in ("open", "close", "cancel"):
        assert "not a trade of this account" in str(trade_refusal(kind, "queued", 0, 7, theirs, 1))
        assert "not a trade of this account" in str(trade_refusal(kind, "queued", 0, 7, None, 1))
        assert "not a trade of this account" in str(trade_refusal(kind, "submitting", 1, 7, theirs, 1))
    assert "an open request creates its own trade" in str(trade_refusal("open", "queued", 0, 7, mine, 1))
    # an app inserting a "submitting" open with a trade_id and no attempt: not syncd's link either
    assert "an open request creates its own trade" in str(trade_refusal("open", "submitting", 0, 7, mine, 1))


# -- issue 12: the rules live in pydantic models (OpenModel, CloseModel, LegModel, CancelModel) ----


def test_every_problem_is_named_at_once() -> None:
    """Guards the pydantic models' error report: each bad key named, unknown keys first, joined."""
    with pytest.raises(PayloadError) as err:
        parse_payload("open", {**STOCK, "colour": "red", "qty": "ten", "time_in_force": "forever"})
    message = str(err.value)
    assert message.startswith("unknown key 'colour' in open payload (allowed: legs, limit_price, qty, ")
    assert "; qty must be a number (plain decimal digits), got 'ten'" in message
    assert "; time_in_force must be one of day, gtc" in message


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({**STOCK, "symbol": None}, "symbol must be a ticker"),
        ({**STOCK, "side": None}, "side must be one of buy, sell"),
        ({**STOCK, "qty": None}, "qty must be a number, got NoneType"),
        ({**STOCK, "type": None}, "type must be one of market, limit"),
        ({**STOCK, "time_in_force": None}, "time_in_force must be one of"),
        ({**SPREAD, "legs": None}, "legs must be a list of 1 to 4 legs"),
        (
            {**SPREAD, "legs": [{"symbol": LONG_C, "side": "buy", "ratio": None}, {"symbol": SHORT_C, "side": "sell"}]},
            "legs[0].ratio must be a number, got NoneType",
        ),
        (
            {**SPREAD, "legs": [{"symbol": LONG_C, "side": "buy", "ratio": True}, {"symbol": SHORT_C, "side": "sell"}]},
            "legs[0].ratio must be a number, got bool",
        ),
        ({**SPREAD, "legs": ["AAPL", {"symbol": SHORT_C, "side": "sell"}]}, "legs[0] must be a JSON object, got str"),
        ({**STOCK, "stop_loss_pct": False}, "stop_loss_pct must be a number, got bool"),
    ],
)
def test_an_explicit_null_or_a_wrong_type_is_refused_not_defaulted(payload: Any, message: str) -> None:
    """Guards the models' optional fields: only an absent key takes the default; JSON null is a bad value."""
    with pytest.raises(PayloadError) as err:
        parse_payload("open", payload)
    assert message in str(err.value), str(err.value)


def test_nulls_where_the_contract_allows_them() -> None:
    """limit_price, take_profit_pct, stop_loss_pct (open) and qty, reason (close) may be JSON null: absent."""
    p = parse_payload(
        "open",
        {
            **STOCK,
            "type": "market",
            "limit_price": None,
            "take_profit_pct": None,
            "stop_loss_pct": None,
            "strategy": None,
        },
    )
    assert isinstance(p, OpenPayload) and (p.limit_price, p.take_profit_pct, p.strategy) == (None, None, "LONG_STOCK")
    c = parse_payload("close", {"qty": None, "reason": None, "limit_price": None})
    assert c == ClosePayload(OrderType.MARKET, TimeInForce.DAY, None, None, None)
    assert parse_payload("open", {**STOCK, "qty": 0.1, "type": "market", "limit_price": None}) == parse_payload(
        "open", {**STOCK, "qty": "0.1", "type": "market", "limit_price": None}
    )  # a float goes through str
