"""JupySQL's result-set API on warden's pandas results.

A ``%sql`` result is a :class:`ResultSet`: a pandas DataFrame (everything warden's
results did before keeps working, ``attrs["warden"]`` included) that also answers
JupySQL's idioms::

    result.DataFrame()          # a plain pandas DataFrame (a copy, attrs["warden"] kept)
    result.PolarsDataFrame()    # polars (SqlMagic.polars_dataframe_kwargs applied)
    result.dict()               # {column: (value, ...)}
    result.dicts()              # an iterator of {column: value} per row
    result.csv()                # CSV text; result.csv(filename="x.csv") writes the file
    result[0]                   # the first row, as a tuple

``result[0]`` is a row only when ``0`` is not a column label (pandas' meaning wins for a
result that has a column named ``0``). Derived frames (``result.head()``, a filter) are
plain DataFrames that keep ``attrs["warden"]``: the masks travel with the data.
"""

from __future__ import annotations

import builtins
import csv as _csv
import io
from collections.abc import Iterator
from typing import Any

import pandas as pd


class CSVFile(str):
    """What ``csv(filename=…)`` returns: the path, shown as JupySQL shows it."""

    def __repr__(self) -> str:
        return f"CSV results at {self!s}"


class ResultSet(pd.DataFrame):
    """A warden result with JupySQL's ResultSet methods (see the module docstring)."""

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        # Slices and derived frames are plain DataFrames (attrs still propagate):
        # `result[0]` meaning "first row" belongs to the result, not to its pieces.
        return pd.DataFrame

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int) and not isinstance(key, bool) and key not in self.columns:
            return self.row(key)
        return super().__getitem__(key)

    def row(self, index: int) -> tuple[Any, ...]:
        """Row ``index`` (negative counts from the end) as a tuple of Python values."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"row {index} is out of range: the result has {n} row{'s' if n != 1 else ''}")
        return tuple(_py(v) for v in self.iloc[index].tolist())

    def DataFrame(self) -> pd.DataFrame:
        """A plain pandas DataFrame (a copy) with ``attrs["warden"]``."""
        df = pd.DataFrame(self, copy=True)
        df.attrs = {k: v for k, v in self.attrs.items()}
        return df

    def PolarsDataFrame(self, **kwargs: Any) -> Any:
        """A polars DataFrame; ``kwargs`` (else ``SqlMagic.polars_dataframe_kwargs``) go
        to ``polars.DataFrame``. polars has no metadata slot: the mask info stays here."""
        import polars as pl

        from warden.magic.magics import active

        magic = active()
        options = dict(getattr(magic, "polars_dataframe_kwargs", {}) or {}) if magic is not None else {}
        options.update(kwargs)
        return pl.DataFrame({c: list(v) for c, v in self.dict().items()}, **options)

    def dict(self) -> builtins.dict[str, tuple[Any, ...]]:
        """``{column: (value, ...)}`` for every column."""
        return {str(c): tuple(_py(v) for v in self.iloc[:, i].tolist()) for i, c in enumerate(self.columns)}

    def dicts(self) -> Iterator[builtins.dict[str, Any]]:
        """One ``{column: value}`` per row."""
        names = [str(c) for c in self.columns]
        for values in self.itertuples(index=False, name=None):
            yield dict(zip(names, (_py(v) for v in values), strict=True))

    def bar(self, key_word_sep: str = " ", title: str | None = None, **kwargs: Any) -> Any:
        """A matplotlib bar chart (JupySQL's deprecated ``.bar()``): the last numeric
        column gives the heights, the other columns joined by ``key_word_sep`` the labels."""
        import matplotlib.pyplot as plt

        numeric = [i for i in range(self.shape[1]) if pd.api.types.is_numeric_dtype(self.dtypes.iloc[i])]
        if not numeric:
            raise TypeError("bar() needs a numeric column for the heights")
        y = numeric[-1]
        others = [i for i in range(self.shape[1]) if i != y]
        labels = [key_word_sep.join(str(self.iat[r, i]) for i in others) or str(r) for r in range(len(self))]
        ax = plt.gca()
        ax.bar(range(len(self)), self.iloc[:, y].tolist(), **kwargs)
        ax.set_xticks(range(len(labels)), labels, rotation=45)
        ax.set_xlabel(key_word_sep.join(str(self.columns[i]) for i in others))
        ax.set_ylabel(str(self.columns[y]))
        ax.set_title(title or str(self.columns[y]))
        return ax

    def csv(self, filename: str | None = None, **format_params: Any) -> str:
        """The rows as CSV with a header line; with ``filename`` written there (the
        path is returned). ``format_params`` go to :func:`csv.writer`."""
        encoding = format_params.pop("encoding", "utf-8")
        buffer = io.StringIO()
        writer = _csv.writer(buffer, **format_params)
        writer.writerow([str(c) for c in self.columns])
        for values in self.itertuples(index=False, name=None):
            writer.writerow(["" if v is None else v for v in (_py(x) for x in values)])
        if filename is None:
            return buffer.getvalue()
        with open(filename, "w", newline="", encoding=encoding) as f:
            f.write(buffer.getvalue())
        return CSVFile(filename)


def _py(value: Any) -> Any:
    """numpy scalars and pandas' missing markers as plain Python values."""
    if value is pd.NaT:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass  # lists, arrays: not a scalar
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return item()
    return value


def as_resultset(df: pd.DataFrame) -> ResultSet:
    """``df`` as a :class:`ResultSet` (same data, same attrs)."""
    result = ResultSet(df)
    result.attrs = dict(df.attrs)
    return result
