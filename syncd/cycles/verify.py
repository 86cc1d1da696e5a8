"""``syncd verify``'s work: the broker's positions, fetched live, against the database.

Two comparisons per account, on signed quantities (short < 0):

* **the mirror** (``portfolio_positions``) against the broker:
  ``missing`` (the broker holds it, the mirror lacks it), ``extra`` (the mirror has it,
  the broker holds none), ``quantity_mismatch`` (both, different quantities);
* **the open trades** (``v_trade_expected_positions``: each live trade's legs, signed by
  side, times ``trades.quantity`` x ratio, summed per instrument) against the broker:
  ``untracked_position`` (held, no open trade has it), ``missing_position`` (an open
  trade's leg the broker does not hold), ``quantity_mismatch`` (the trades' sum differs).

``v_position_mismatches`` answers the second question from the mirror alone; this asks the
broker. Nothing is written. The comparison itself (:func:`compare`) is pure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import structlog

from syncd.brokers.base import BrokerError
from syncd.context import Account, Context
from syncd.errors import DB_ERRORS, describe

log = structlog.get_logger(__name__)

Against = Literal["mirror", "trades"]
ZERO = Decimal(0)

_DB_ERRORS = DB_ERRORS


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement: what the broker holds against what ``against`` says."""

    account: str
    symbol: str
    against: Against
    kind: str
    broker_quantity: Decimal
    db_quantity: Decimal  # the mirror's quantity, or the trades' signed sum

    @property
    def untracked(self) -> Decimal:
        """What the broker holds that no trade claims (signed; 0 when the trades claim it all or more)."""
        if self.against != "trades" or self.broker_quantity == 0:
            return ZERO
        held, claimed = self.broker_quantity, self.db_quantity
        if held > 0:
            return max(held - max(claimed, ZERO), ZERO)
        return min(held - min(claimed, ZERO), ZERO)

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "symbol": self.symbol,
            "against": self.against,
            "kind": self.kind,
            "broker_quantity": _num(self.broker_quantity),
            "db_quantity": _num(self.db_quantity),
            "untracked": _num(self.untracked),
        }


@dataclass(slots=True)
class AccountReport:
    account: str
    error: str | None = None  # the account could not be checked
    positions: int = 0  # positions the broker reported
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.error is None and not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "ok": self.error is None,
            "error": self.error,
            "positions": self.positions,
            "findings": [f.as_dict() for f in self.findings],
        }


def _num(d: Decimal) -> int | float:
    """A quantity for JSON: an int when whole (``67``), else a float (``2.5``)."""
    return int(d) if d == d.to_integral_value() else float(d)


def compare(
    account: str,
    live: Mapping[str, Decimal],
    mirrored: Mapping[str, Decimal],
    expected: Mapping[str, Decimal],
) -> list[Finding]:
    """Every disagreement of the broker's positions (``live``) with the mirror and the trades."""
    live = {s: q for s, q in live.items() if q != ZERO}
    mirrored = {s: q for s, q in mirrored.items() if q != ZERO}
    out: list[Finding] = []
    checks: tuple[tuple[Against, Mapping[str, Decimal], tuple[str, str, str]], ...] = (
        ("mirror", mirrored, ("missing", "extra", "quantity_mismatch")),
        ("trades", expected, ("untracked_position", "missing_position", "quantity_mismatch")),
    )
    for against, book, kinds in checks:
        for symbol in sorted(live.keys() | book.keys()):
            held, claimed = live.get(symbol), book.get(symbol)
            if held is not None and claimed is None:
                kind = kinds[0]
            elif held is None and claimed is not None:
                kind = kinds[1]
            elif held != claimed:
                kind = kinds[2]
            else:
                continue
            out.append(Finding(account, symbol, against, kind, held or ZERO, claimed or ZERO))
    return out


async def verify_account(ctx: Context, account: Account) -> AccountReport:
    """Fetch ``account``'s positions live and compare them; errors end up in the report."""
    report = AccountReport(account.name)
    try:
        positions = await account.broker.list_positions()
        async with ctx.pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
            mirrored = await conn.fetch(ctx.queries["verify_mirrored_positions"], account.id)
            expected = await conn.fetch(ctx.queries["verify_expected_positions"], account.id)
    except BrokerError as exc:
        report.error = describe(exc)
        log.warning("verify_failed", account=account.name, error=report.error)
        return report
    except _DB_ERRORS as exc:
        report.error = describe(exc)
        log.error("verify_failed", account=account.name, error=report.error)
        return report
    live: dict[str, Decimal] = {}
    for p in positions:
        live[p.symbol] = live.get(p.symbol, ZERO) + p.quantity
    report.positions = len(live)
    report.findings = compare(
        account.name,
        live,
        {r["symbol"]: r["quantity"] for r in mirrored},
        {r["symbol"]: r["trade_quantity"] for r in expected},
    )
    log.info("verify_account", account=account.name, positions=report.positions, findings=len(report.findings))
    return report


async def verify_accounts(ctx: Context, accounts: Sequence[Account]) -> list[AccountReport]:
    """Every account at once (at most ``cycles.concurrency``), in the order given."""
    sem = asyncio.Semaphore(ctx.settings.cycles.concurrency)

    async def one(acct: Account) -> AccountReport:
        async with sem:
            return await verify_account(ctx, acct)

    return list(await asyncio.gather(*(one(a) for a in accounts)))


def render_text(reports: Sequence[AccountReport], syncd: str = "syncd") -> str:
    """For a person: one block per account, a line per finding, a summary line; ``syncd`` starts the
    command line the import hint suggests (the CLI passes its ``--config``)."""
    lines: list[str] = []
    for r in reports:
        if r.error is not None:
            lines.append(f"{r.account}: ERROR {r.error}")
            continue
        status = "ok" if not r.findings else f"{len(r.findings)} mismatch(es)"
        lines.append(f"{r.account}: {r.positions} position(s) at the broker, {status}")
        width = max((len(f.symbol) for f in r.findings), default=0)
        for f in r.findings:
            other = "mirror" if f.against == "mirror" else "trades"
            extra = f" untracked={_num(f.untracked)}" if f.untracked and f.kind == "quantity_mismatch" else ""
            lines.append(
                f"  {f.symbol:<{width}}  {f.against:<6}  {f.kind:<18}  "
                f"broker={_num(f.broker_quantity)} {other}={_num(f.db_quantity)}{extra}"
            )
    errors = sum(r.error is not None for r in reports)
    mismatches = sum(len(r.findings) for r in reports)
    lines.append(f"verify: {len(reports)} account(s), {mismatches} mismatch(es), {errors} error(s)")
    untracked = [r.account for r in reports if any(f.untracked for f in r.findings)]
    if untracked:
        accounts = "".join(f" --account {name}" for name in untracked)
        lines.append(
            "hint: positions (or parts of them) no trade owns are untracked holdings; "
            f"`{syncd} import-positions{accounts}` makes them trades"
        )
    return "\n".join(lines)


def as_json(reports: Sequence[AccountReport]) -> dict[str, Any]:
    return {
        "ok": all(r.clean for r in reports),
        "mismatches": sum(len(r.findings) for r in reports),
        "errors": sum(r.error is not None for r in reports),
        "accounts": [r.as_dict() for r in reports],
    }
