"""The peers' chain (bench/peers/chain.py) in Polars: joins, expressions and window functions.

What a data engineer would write: the visits' rules joined from the parameter table, each capped
layer a running sum and a running minimum over the person's year in settlement-time order.
Integers only (Int64); Polars is a benchmark peer, never a product dependency.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from . import chain

NAME = "Polars"


def version() -> str:
    return pl.__version__


def _rh(x: pl.Expr) -> pl.Expr:
    return (x + 5000) // 10000


def _capped(df: pl.DataFrame, raw: str, cap: str, key: list[str], out: str) -> pl.DataFrame:
    """pay_k = P_k - P_{k-1}, P_k = R_k + min(0, running min of (cap_j - R_j)) (chain.py proves it).

    One with_columns per stage: an expression reused inside a window would be evaluated twice."""
    df = df.with_columns(_r=pl.col(raw).cum_sum().over(key))
    df = df.with_columns(_m=(pl.col(cap) - pl.col("_r")).cum_min().over(key))
    df = df.with_columns(_p=pl.col("_r") + pl.min_horizontal(pl.lit(0, pl.Int64), pl.col("_m")))
    return df.with_columns((pl.col("_p") - pl.col("_p").shift(1, fill_value=0).over(key)).alias(out)
                           ).drop("_r", "_m", "_p")


def settle(visits: pa.Table, pack) -> dict[str, np.ndarray]:
    """The compared result columns (chain.COMPARED) in input order."""
    table = chain.params(pack)
    bits = chain.category_bits(pack, table)
    chain.check_visits(visits)
    p = pl.from_arrow(table)
    versions = p.select("version", "eff_from", "eff_to").unique().sort("eff_from")
    df = pl.from_arrow(visits.select([c for c in chain.INPUT_COLUMNS if c in visits.column_names]))
    day = pl.col("enddate").cast(pl.Int32)
    version = pl.lit(None, pl.Int32)
    for v, lo, hi in versions.iter_rows():
        version = pl.when((day >= lo) & (day <= hi)).then(pl.lit(v, pl.Int32)).otherwise(version)
    cats = pl.lit(0, pl.Int64)
    for name, b in bits.items():
        cats = cats + pl.col("psn_cats").fill_null("").str.contains(f"(^|,){name}(,|$)").cast(pl.Int64) * (1 << b)
    df = (df.with_row_index("row")
            .with_columns(version=version, year=pl.col("enddate").dt.year(), cats=cats,
                          T=pl.col("fulamt_ownpay_amt") + pl.col("overlmt_selfpay")
                          + pl.col("preselfpay_amt") + pl.col("inscp_scp_amt"),
                          I=pl.col("inscp_scp_amt"))
            .join(p, on=["version", "med_type", "medins_lv"], how="left")
            .sort(["psn_no", "year", "setl_time", "row"]))
    if df["ratio"].null_count():
        raise chain.OutsideSubset("a visit matches no (version, med type, level) of the pack")
    # the person's year as one integer (the frame is sorted by it): cheaper windows than strings
    new_year = (pl.col("psn_no") != pl.col("psn_no").shift(1)) | (pl.col("year") != pl.col("year").shift(1))
    df = df.with_columns(person_year=new_year.fill_null(True).cum_sum())
    pool_key, year_key = ["person_year", "pool"], ["person_year"]
    waived = (pl.col("cats") & pl.col("ded_waived_mask")) != 0
    df = df.with_columns(ded=pl.when(waived).then(0).otherwise(pl.min_horizontal("ded_amount", "I")))
    df = df.with_columns(hifp_raw=_rh((pl.col("I") - pl.col("ded")) * pl.col("ratio")))
    df = _capped(df, "hifp_raw", "hifp_cap", pool_key, "hifp")
    df = df.with_columns(S=pl.col("I") - pl.col("hifp"))
    bands = pl.lit(0, pl.Int64)
    for k in range(chain.BAND_SLOTS):
        top = pl.min_horizontal("S", f"b{k}_hi")
        bands = bands + pl.max_horizontal(pl.lit(0, pl.Int64), top - pl.col(f"b{k}_lo")) * pl.col(f"b{k}_rate")
    triggered = (pl.col("mi_on") == 1) & (pl.col("T") > pl.col("mi_threshold"))
    df = df.with_columns(mi_raw=pl.when(triggered).then(_rh(bands)).otherwise(0))
    df = _capped(df, "mi_raw", "mi_cap", year_key, "hifmi")
    left = pl.max_horizontal(pl.lit(0, pl.Int64), pl.col("S") - pl.col("hifmi") - pl.col("maf_ded"))
    eligible = (pl.col("cats") & pl.col("maf_mask")) != 0
    df = df.with_columns(maf_raw=pl.when(eligible).then(_rh(left * pl.col("maf_ratio"))).otherwise(0))
    df = _capped(df, "maf_raw", "maf_cap", year_key, "maf")
    df = df.with_columns(fund=pl.col("hifp") + pl.col("hifmi") + pl.col("maf")).with_columns(
        psn=pl.col("T") - pl.col("fund")).sort("row")
    out = {"act_pay_dedc": "ded", "pool_prop_selfpay": "ratio", "hifp_pay": "hifp", "hifmi_pay": "hifmi",
           "maf_pay": "maf", "fund_pay_sumamt": "fund", "psn_part_amt": "psn", "psn_cash_pay": "psn"}
    return {name: df[col].cast(pl.Int64).to_numpy() for name, col in out.items()}
