"""Grid files: a small TOML file that declares benchmark cells; every mistake is one line naming key and line.

A grid::

    name = "memory_speed"          # optional, default: the file's stem
    kind = "probe"                 # "finetune" (default) or "probe"
    description = "..."            # optional, printed at the top of the report

    [base]                         # settings every cell shares (FinetuneConfig fields, plus cpus)
    model = "smollm2-135m"
    steps = 8
    cpus = 2

    [axes]                         # the cells: the product of these lists, in this order
    scheme = ["full", "lora"]
    optimizer = ["zo-sgd", "fo-adam", { label = "hybrid", optimizer = "zo-sgd", hybrid_fo_budget = 0.05 }]
    seed = [0, 1, 2]

An axis named after a setting takes plain values; any axis may also take tables, each a named bundle of settings
(``label`` names it in reports; default: its settings). ``[[axes]]`` (an array of tables) declares several
products; the grid is their union. In an axes table, ``key = value`` (not a list) is a setting of that product's
cells alone. Relative paths in values are relative to the grid file's folder. A cell that two products both
declare runs once.
"""

from __future__ import annotations

import difflib
import itertools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from l2lzo.bench.cells import (
    FINETUNE,
    KINDS,
    Cell,
    check_settings,
    check_type,
    make_cell,
    resolve_path,
    setting_types,
)
from l2lzo.errors import L2LZOError

TOP_LEVEL = ("name", "kind", "description", "base", "axes")
LABEL = "label"


class GridError(L2LZOError):
    """A mistake in a grid file, as ``FILE:LINE: KEY: message``."""

    def __init__(self, path: Path, line: int, key: str, message: str):
        super().__init__(f"{path}:{line}: {key}: {message}" if key else f"{path}:{line}: {message}")


@dataclass
class Grid:
    """A parsed grid: its identity, shared settings and the expanded, validated cells (in grid order)."""

    path: Path
    name: str
    kind: str
    description: str
    base: dict
    axes: list[str]  # every axis name, in order of first appearance
    axis_settings: list[str]  # every setting some axis sets
    cells: list[Cell]


def load_grid(path: str | Path) -> Grid:
    """Parse, validate and expand a grid file; ``GridError`` names the key and line of the first mistake."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise L2LZOError(f"cannot read grid file {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line, message = _decode_error(exc)
        raise GridError(path, line, "", f"not valid TOML: {message}") from exc
    return _Parser(path, text).grid(data)


def _decode_error(exc: tomllib.TOMLDecodeError) -> tuple[int, str]:
    match = re.search(r"^(.*) \(at line (\d+), column (\d+)\)$", str(exc))
    if match is None:
        return 1, str(exc)
    return int(match[2]), f"{match[1]} (column {match[3]})"


class _Locator:
    """Lines of keys in a TOML text: tomllib keeps no positions, so assignments and headers are read here.

    Values may span lines (arrays), but TOML 1.0 keeps inline tables on one line and every ``key =`` that starts
    a line belongs to the table opened by the header above it.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?")
    _KEY = re.compile(r'^\s*("?)([A-Za-z0-9_-]+)\1\s*=')

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.assignments: list[tuple[int, str, str]] = []  # (line, table, key); table "" is the top level
        self.headers: dict[str, int] = {}
        arrays: dict[str, int] = {}
        table = ""
        for number, line in enumerate(self.lines, 1):
            header = self._HEADER.match(line)
            if header:
                name = header[2]
                if header[1] == "[[":
                    arrays[name] = arrays.get(name, -1) + 1
                    name = f"{name}#{arrays[name]}"
                elif name == "axes":
                    name = "axes#0"
                table = name
                self.headers[table] = number
                self.assignments.append((number, table, ""))
                continue
            key = self._KEY.match(line)
            if key:
                self.assignments.append((number, table, key[2]))

    def line(self, table: str, key: str = "", item: int | None = None) -> int:
        """Line of ``key`` in ``table`` (of the table's header for no key); with ``item``, of that array element."""
        for number, t, k in self.assignments:
            if t == table and k == key:
                return number if item is None else self._element_line(number, item)
        return self.headers.get(table, self.headers.get(f"{table}#0", 1))

    def _element_line(self, number: int, item: int) -> int:
        """Line where element ``item`` of the array assigned on line ``number`` starts (strings, comments aside)."""
        depth, index, expecting, quote = 0, -1, False, ""
        first = self.lines[number - 1]
        start = first.index("=") + 1
        for n in range(number, len(self.lines) + 1):
            text = self.lines[n - 1][start:] if n == number else self.lines[n - 1]
            escaped = False
            for ch in text:
                if quote:
                    escaped, closing = ch == "\\" and not escaped and quote == '"', ch == quote and not escaped
                    quote = "" if closing else quote
                    continue
                if ch == "#":
                    break
                if depth == 1 and expecting and not ch.isspace() and ch not in ",]":
                    index, expecting = index + 1, False
                    if index == item:
                        return n
                if ch in "\"'":
                    quote = ch
                elif ch in "[{":
                    depth += 1
                    expecting = expecting or (depth == 1 and ch == "[")
                elif ch in "]}":
                    depth -= 1
                    if depth == 0:
                        return number
                elif ch == "," and depth == 1:
                    expecting = True
        return number


@dataclass
class _Option:
    """One value of an axis: the label it has in reports and the settings it sets."""

    label: str
    settings: dict


class _Parser:
    """Turns the parsed TOML of one grid file into a Grid, failing on the first mistake with its line."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.where = _Locator(text)
        self.types = setting_types()
        self.kind = FINETUNE

    def fail(self, line: int, key: str, message: str) -> GridError:
        return GridError(self.path, line, key, message)

    def grid(self, data: dict) -> Grid:
        for key in data:
            if key not in TOP_LEVEL:
                raise self.fail(self.where.line("", key) if key not in self.where.headers else self.where.line(key),
                                key, f"unknown key{_hint(key, TOP_LEVEL)}; a grid has {', '.join(TOP_LEVEL)}")
        for key in ("name", "kind", "description"):
            if key in data and not isinstance(data[key], str):
                raise self.fail(self.where.line("", key), key, f"must be a string, got {data[key]!r}")
        self.kind = data.get("kind", FINETUNE)
        if self.kind not in KINDS:
            raise self.fail(self.where.line("", "kind"), "kind",
                            f"unknown kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        if not isinstance(data.get("base", {}), dict):
            raise self.fail(self.where.line("", "base"), "base", "must be a table of settings")
        base = self._fixed("base", "base", data.get("base", {}), {})
        products = data.get("axes", [{}])
        if isinstance(products, dict):
            products = [products]
        if not isinstance(products, list) or not all(isinstance(p, dict) for p in products):
            raise self.fail(self.where.line("", "axes"), "axes", "must be a table ([axes]) or tables ([[axes]])")
        expanded = [self._product(i, product, base) for i, product in enumerate(products)]
        axes = list(dict.fromkeys(axis for _, product in expanded for axis, _ in product))
        axis_settings = sorted({k for _, product in expanded for _, options in product for o in options
                                for k in o.settings})
        cells, seen, digests = [], set(), {}
        for index, (fixed, product) in enumerate(expanded):
            for combo in itertools.product(*(options for _, options in product)):
                settings = dict(fixed)
                for option in combo:
                    settings.update(option.settings)
                own = {axis: option.label for (axis, _), option in zip(product, combo, strict=True)}
                try:
                    check_settings(self.kind, settings)
                except L2LZOError as exc:
                    where = ", ".join(f"{a}={label}" for a, label in own.items())
                    raise self.fail(self.where.line(f"axes#{index}"), f"axes cell ({where})", str(exc)) from exc
                cell = make_cell(self.kind, settings, own, digests)
                # An axis of another product labels this cell by the value the cell runs with.
                cell.labels = {axis: own.get(axis, _as_label(cell.config.get(axis, ""))) for axis in axes}
                if cell.key not in seen:
                    seen.add(cell.key)
                    cells.append(cell)
        return Grid(path=self.path, name=data.get("name", self.path.stem), kind=self.kind,
                    description=data.get("description", ""), base=base, axes=axes, axis_settings=axis_settings,
                    cells=cells)

    def _fixed(self, table: str, prefix: str, items: dict, start: dict) -> dict:
        """``start`` updated with the settings ``items`` (of ``table``), each checked as it is added, so a failure
        names the first key that made the settings invalid."""
        settings = dict(start)
        for key, value in items.items():
            line = self.where.line(table, key)
            settings[key] = self._setting(line, f"{prefix}.{key}", key, value)
            self._check(line, f"{prefix}.{key}", settings)
        return settings

    def _setting(self, line: int, where: str, key: str, value):
        if key not in self.types:
            raise self.fail(line, where, f"unknown setting{_hint(key, self.types)}")
        try:
            return resolve_path(check_type(value, self.types[key]), self.path.parent)
        except L2LZOError as exc:
            raise self.fail(line, where, str(exc)) from exc

    def _check(self, line: int, where: str, settings: dict) -> None:
        try:
            check_settings(self.kind, settings)
        except L2LZOError as exc:
            raise self.fail(line, where, str(exc)) from exc

    def _product(self, index: int, product: dict, base: dict) -> tuple[dict, list[tuple[str, list[_Option]]]]:
        """One axes table: its plain settings (``key = value``: this product's cells only) and its axes (lists)."""
        table = f"axes#{index}"
        prefix = _axes_name(table)
        fixed = self._fixed(table, prefix, {k: v for k, v in product.items() if not isinstance(v, list)}, base)
        axes, setters = [], {k: "" for k, v in product.items() if not isinstance(v, list)}
        for axis, values in product.items():
            if not isinstance(values, list):
                continue
            line = self.where.line(table, axis)
            if not values:
                raise self.fail(line, f"{prefix}.{axis}", "an axis is a non-empty list of values")
            options = [self._option(table, axis, i, value, fixed) for i, value in enumerate(values)]
            for key in {k for option in options for k in option.settings}:
                if key in setters:
                    other = f"axis {setters[key]!r}" if setters[key] else "this table"
                    raise self.fail(line, f"{prefix}.{axis}", f"sets {key!r}, which {other} sets too")
                setters[key] = axis
            axes.append((axis, list({o.label: o for o in options}.values())))
        return fixed, axes

    def _option(self, table: str, axis: str, index: int, value, base: dict) -> _Option:
        where = f"{_axes_name(table)}.{axis}[{index}]"
        if isinstance(value, dict):
            line = self.where.line(table, axis, item=index)
            label = value.get(LABEL)
            if label is not None and not isinstance(label, str):
                raise self.fail(line, f"{where}.{LABEL}", f"must be a string, got {label!r}")
            settings = {}
            for key, item in value.items():
                if key != LABEL:
                    settings[key] = self._setting(line, f"{where}.{key}", key, item)
            if not settings:
                raise self.fail(line, where, "a table value needs at least one setting besides its label")
            label = label or ",".join(f"{k}={_as_label(v)}" for k, v in settings.items())
        else:
            line = self.where.line(table, axis, item=index)
            if axis not in self.types:
                raise self.fail(line, where, f"{axis!r} is not a setting{_hint(axis, self.types)}: give this "
                                             "axis tables of settings ({label = ..., setting = ...})")
            settings = {axis: self._setting(line, where, axis, value)}
            label = _as_label(value)
        self._check(line, where, {**base, **settings})
        return _Option(label, settings)


def _axes_name(table: str) -> str:
    index = int(table.split("#")[1])
    return "axes" if index == 0 else f"axes[{index}]"


def _as_label(value) -> str:
    if isinstance(value, dict):  # a file reference in a cell's config
        return value["file"]
    return value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)


def _hint(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" {name!r} (did you mean {close[0]!r}?)" if close else f" {name!r}"
