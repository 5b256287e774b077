"""Rendering for people (rich tables on stdout) and for machines (-o json on stdout).

Contract: commands build plain data (dicts and lists of JSON types) and hand it here with a table
recipe; messages and errors go to stderr only, so `-o json` output can always be piped to jq.
"""

from __future__ import annotations

import enum
import json
import sys
from typing import Any, Callable, Iterable, Sequence


class Format(str, enum.Enum):
    table = "table"
    json = "json"


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    Console(highlight=False).print(t)


def emit(fmt: Format, data: Any, render: Callable[[Any], None]) -> None:
    if fmt == Format.json:
        emit_json(data)
    else:
        render(data)


def info(msg: str) -> None:
    sys.stderr.write(msg + "\n")
