"""docs/privacy.md's table of plans is what make_plan derives, row by row."""

from __future__ import annotations

from pathlib import Path

from fedsilo.common.secagg import ThreatModel, make_plan

DOC = Path(__file__).resolve().parents[3] / "docs" / "privacy.md"


def _rows() -> list[list[str]]:
    text = DOC.read_text()
    table = text.split("<!-- plan-table -->")[1].split("<!-- /plan-table -->")[0]
    lines = table.strip().splitlines()[2:]  # past the header and rule
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_every_row_of_the_plan_table_is_what_make_plan_derives() -> None:
    rows = _rows()
    assert len(rows) >= 10
    for n, corrupt, dropout, kind, degree, threshold in rows:
        threat = ThreatModel(corrupt_fraction=float(corrupt), dropout_fraction=float(dropout))
        plan = make_plan(list(range(int(n))), int(n), b"\x00" * 32, threat)
        got = [plan.kind.value, str(plan.degree), str(plan.threshold)]
        assert got == [kind, degree, threshold], (n, corrupt, dropout)
