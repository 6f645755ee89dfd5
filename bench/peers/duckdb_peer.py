"""The peers' chain (bench/peers/chain.py) in DuckDB SQL: one query, window functions over the
person's year in settlement-time order.

What an analyst at a bureau would write against a warehouse. Each capped layer is a stage (a CTE):
a running SUM, then a running MIN of (cap - running sum), then the difference of the paid totals
(LAG); a layer that reads an earlier capped output is a later CTE. BIGINT only.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from . import chain

NAME = "DuckDB SQL"


def version() -> str:
    import duckdb
    return duckdb.__version__


def _capped(raw: str, cap: str, window: str, out: str) -> list[str]:
    """Three CTE bodies' select items for pay = P_k - P_{k-1}, P_k = R_k + least(0, min(cap - R))."""
    return [f"SUM({raw}) OVER {window} AS {out}_r",
            f"MIN({cap} - {out}_r) OVER {window} AS {out}_m",
            f"{out}_r + LEAST(0, {out}_m) AS {out}_p",
            f"{out}_p - COALESCE(LAG({out}_p) OVER {window}, 0) AS {out}"]


def query(bits: dict[str, int]) -> str:
    cats = " + ".join(f"(CASE WHEN regexp_matches(COALESCE(psn_cats, ''), '(^|,){name}(,|$)') "
                      f"THEN {1 << b} ELSE 0 END)" for name, b in bits.items()) or "0"
    bands = " + ".join(f"GREATEST(0, LEAST(S, b{k}_hi) - b{k}_lo) * b{k}_rate"
                       for k in range(chain.BAND_SLOTS))
    pool_w = "(PARTITION BY psn_no, year, pool ORDER BY setl_time, row)"
    year_w = "(PARTITION BY psn_no, year ORDER BY setl_time, row)"
    hifp, mi, maf = (_capped("hifp_raw", "hifp_cap", pool_w, "hifp"),
                     _capped("mi_raw", "mi_cap", year_w, "hifmi"),
                     _capped("maf_raw", "maf_cap", year_w, "maf"))
    return f"""
WITH v AS (
  SELECT row, psn_no, setl_time, med_type, medins_lv, inscp_scp_amt AS I,
         fulamt_ownpay_amt + overlmt_selfpay + preselfpay_amt + inscp_scp_amt AS T,
         (enddate - DATE '1970-01-01') AS day, year(enddate) AS year, {cats} AS cats
  FROM visits),
j AS (
  SELECT v.*, p.* EXCLUDE (med_type, medins_lv),
         CASE WHEN (cats & ded_waived_mask) <> 0 THEN 0 ELSE LEAST(ded_amount, I) END AS ded
  FROM v JOIN params p ON v.day BETWEEN p.eff_from AND p.eff_to
                      AND v.med_type = p.med_type AND v.medins_lv = p.medins_lv),
b1 AS (SELECT *, (((I - ded) * ratio) + 5000) // 10000 AS hifp_raw FROM j),
b2 AS (SELECT *, {hifp[0]} FROM b1),
b3 AS (SELECT *, {hifp[1]} FROM b2),
b4 AS (SELECT *, {hifp[2]} FROM b3),
b5 AS (SELECT *, {hifp[3]} FROM b4),
s AS (SELECT *, I - hifp AS S FROM b5),
m1 AS (SELECT *, CASE WHEN mi_on = 1 AND T > mi_threshold THEN ({bands} + 5000) // 10000 ELSE 0 END
              AS mi_raw FROM s),
m2 AS (SELECT *, {mi[0]} FROM m1),
m3 AS (SELECT *, {mi[1]} FROM m2),
m4 AS (SELECT *, {mi[2]} FROM m3),
m5 AS (SELECT *, {mi[3]} FROM m4),
a1 AS (SELECT *, CASE WHEN (cats & maf_mask) <> 0
              THEN (GREATEST(0, S - hifmi - maf_ded) * maf_ratio + 5000) // 10000 ELSE 0 END AS maf_raw
       FROM m5),
a2 AS (SELECT *, {maf[0]} FROM a1),
a3 AS (SELECT *, {maf[1]} FROM a2),
a4 AS (SELECT *, {maf[2]} FROM a3),
a5 AS (SELECT *, {maf[3]} FROM a4)
SELECT row, ded AS act_pay_dedc, ratio AS pool_prop_selfpay, hifp AS hifp_pay, hifmi AS hifmi_pay,
       maf AS maf_pay, hifp + hifmi + maf AS fund_pay_sumamt, T - (hifp + hifmi + maf) AS psn_part_amt
FROM a5 ORDER BY row
"""


def settle(visits: pa.Table, pack, threads: int | None = None) -> dict[str, np.ndarray]:
    """The compared result columns (chain.COMPARED) in input order."""
    import duckdb

    table = chain.params(pack)
    bits = chain.category_bits(pack, table)
    chain.check_visits(visits)
    cols = visits.select([c for c in chain.INPUT_COLUMNS if c in visits.column_names])
    cols = cols.append_column("row", pa.array(np.arange(cols.num_rows, dtype=np.int64)))
    con = duckdb.connect()
    try:
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.register("visits", cols)
        con.register("params", table)
        rel = con.sql(query(bits))
        result = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    finally:
        con.close()
    if result.num_rows != visits.num_rows:
        raise chain.OutsideSubset(f"{visits.num_rows - result.num_rows} visits match no rule of the pack")
    out = {c: result.column(c).to_numpy().astype(np.int64, copy=False) for c in chain.COMPARED if c != "psn_cash_pay"}
    out["psn_cash_pay"] = out["psn_part_amt"]
    return out
