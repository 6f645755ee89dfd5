"""The re-settlement report a person reads: terminal tables (rich) and an HTML / PNG report.

Figures a bureau asks for (SOURCE-FIGURES.md): person-times compensated (补偿人次), fund totals,
the actual compensation ratio (实际补偿比 = funds / total cost), benefit coverage (受益面 =
person-times / enrollees), and the current-year and cumulative surplus ratios against 15% / 25%.
Charts (fund spending by month before and after; how many patients gain how much) need matplotlib,
the optional extra ``report``; without it the HTML has the tables only.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.table import Table

from .api import fen, pct
from .resettle import COMPARED, GAIN_EDGES, surplus, totals

FUND_NAMES = {"hifp_pay": "basic pooled fund (统筹基金)", "hifob_pay": "large-amount subsidy (大额补助)",
              "hifmi_pay": "serious illness (大病保险)", "cvlserv_pay": "civil-servant subsidy (公务员补助)",
              "hifes_pay": "enterprise supplement", "maf_pay": "medical assistance (医疗救助)",
              "oth_pay": "other", "fund_pay_sumamt": "all funds", "psn_part_amt": "patient share",
              "acct_pay": "  of which personal account", "psn_cash_pay": "  of which cash",
              "hosp_part_amt": "hospital part"}


@dataclass
class Funding:
    income: int | None = None          # fen: the fund's income for the year
    carried: int = 0                   # fen: accumulated balance at the start of the year
    enrollees: int | None = None
    layers: list = field(default_factory=list)
    counties: list = field(default_factory=list)     # region.json: [{code, name, enrollees, ...}]


def read_region(path) -> dict:
    """region.json of `medsettle synth` (or a bureau's own in the same shape): counties with their
    code, name and enrollees; the region's enrollees and fund income (yuan)."""
    import json
    from .errors import InputError
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
        counties = [{"code": str(c["code"]), "name": str(c.get("name", c["code"])), "enrollees": int(c["enrollees"])}
                    for c in meta["counties"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError("--region", f"not a region file (counties with code and enrollees): {e}", str(path)) from None
    enrollees = int(meta.get("enrollees", sum(c["enrollees"] for c in counties)))
    income = meta.get("fund_income_yuan")
    if income is not None:                 # yuan, exactly: an integer or a decimal string, never a float
        from .policy import fen_of_yuan
        try:
            if isinstance(income, bool) or not isinstance(income, (int, str)):
                raise ValueError
            income = fen_of_yuan(str(income))
        except ValueError:
            raise InputError("fund_income_yuan", "yuan as an integer or a string with at most two "
                             "decimals", income, source=str(path)) from None
    return {"counties": counties, "enrollees": enrollees, "fund_income": income}


@dataclass
class Names:
    """What a person reads for the summary's codes: the pack's levels, med types and schemes, and
    the counties of the region (region.json of `medsettle synth`)."""
    medins_lv: dict = field(default_factory=dict)
    med_type: dict = field(default_factory=dict)
    insutype: dict = field(default_factory=dict)
    region: dict = field(default_factory=dict)

    def of(self, key: str, code) -> str:
        if key == "month":
            return f"{code // 100}-{code % 100:02d}"
        return getattr(self, key, {}).get(code, str(code))


def names_for(plan, counties=None) -> Names:
    """Names from the new side's pack (as compiled for the run) and the region's counties."""
    pack = plan.new.settler().pack
    region = {pack.region: f"{pack.region} (the pack's region)"}
    region.update({c["code"]: f"{c['code']} {c['name']}" for c in (counties or [])})
    return Names(medins_lv={lv.code: lv.name for lv in pack.levels},
                 med_type={m.code: m.name for m in pack.med_types},
                 insutype={sc.code: sc.name for sc in pack.schemes}, region=region)


def _ratio(num, den):
    return pct(num * 10000 // den) if den else "-"


def _signed(v):
    return ("+" if v > 0 else "") + fen(v)


def _table(title: str, label: str, money: list, counts=(), text=()) -> Table:
    """A table whose first column is a wrapping label; money columns never wrap (a figure is printed
    whole: an 80-column terminal folds the labels, not the amounts)."""
    table = Table(title=title, title_justify="left")
    table.add_column(label, justify="left", ratio=1, overflow="fold")
    for c in money:
        table.add_column(c, justify="right", no_wrap=True)
    for c in counts:
        table.add_column(c, justify="right", no_wrap=True)
    for c in text:
        table.add_column(c, justify="right")
    return table


def fund_table(summary: pa.Table, title: str) -> Table:
    """Old, new and delta per fund and for the patient, yuan."""
    t = totals(summary)
    table = _table(title, "fund (yuan)", ["old", "new", "delta"])
    for c in COMPARED:
        if c in ("hifes_pay", "oth_pay") and not (t[f"old_{c}"] or t[f"new_{c}"]):
            continue
        table.add_row(FUND_NAMES.get(c, c), fen(t[f"old_{c}"]), fen(t[f"new_{c}"]), _signed(t[f"delta_{c}"]))
    return table


def person_times_table(summary: pa.Table) -> Table:
    """Person-times compensated (补偿人次): visits a fund paid something for, old and new."""
    t = totals(summary)
    table = _table("person-times compensated (补偿人次)", "fund", [], ["old", "new", "delta"])
    for c in COMPARED:
        if f"old_n_{c}" not in t or (c in ("hifes_pay", "oth_pay") and not (t[f"old_n_{c}"] or t[f"new_n_{c}"])):
            continue
        old, new = t[f"old_n_{c}"], t[f"new_n_{c}"]
        table.add_row(FUND_NAMES.get(c, c), f"{old:,}", f"{new:,}", ("+" if new > old else "") + f"{new - old:,}")
    return table


KEY_HEADERS = {"month": "settlement month", "medins_lv": "hospital level", "region": "region (参保地)",
               "insutype": "scheme", "med_type": "med type", "psn_cats": "category"}


def by_dimension(summary: pa.Table, key: str, title: str, names: Names | None = None, full: bool = False) -> Table:
    """Funds old / new / delta and the actual compensation ratio by one summary key (yuan). full: also
    visits and total cost (the HTML report, which has the width)."""
    names = names or Names()
    g = summary.group_by([key]).aggregate([(c, "sum") for c in ("visits", "medfee_sumamt", "old_fund_pay_sumamt",
                                                               "new_fund_pay_sumamt", "delta_fund_pay_sumamt")])
    g = g.sort_by(key)
    money = (["total cost"] if full else []) + ["funds old", "funds new", "delta"]
    table = _table(title, KEY_HEADERS.get(key, key), money, ["visits"] if full else [], ["comp. ratio old → new"])
    for r in g.to_pylist():
        cost = r["medfee_sumamt_sum"]
        money = ([fen(cost)] if full else []) + [fen(r["old_fund_pay_sumamt_sum"]), fen(r["new_fund_pay_sumamt_sum"]),
                                                 _signed(r["delta_fund_pay_sumamt_sum"])]
        table.add_row(names.of(key, r[key]), *money, *([f"{r['visits_sum']:,}"] if full else []),
                      f"{_ratio(r['old_fund_pay_sumamt_sum'], cost)} → {_ratio(r['new_fund_pay_sumamt_sum'], cost)}")
    return table


def ratios(summary: pa.Table, funding: Funding, inpatient_med_types=("21",)) -> dict:
    """Actual compensation ratio (all, inpatient), benefit coverage, surplus; old and new."""
    t = totals(summary)
    inp = summary.filter(pc.is_in(summary.column("med_type"), pa.array(list(inpatient_med_types))))
    ti = totals(inp) if inp.num_rows else {k: 0 for k in t}
    out = {"cost": t["medfee_sumamt"], "visits": t["visits"]}
    for side in ("old", "new"):
        out[side] = {"funds": t[f"{side}_fund_pay_sumamt"], "person_times": t[f"{side}_n_fund_pay_sumamt"],
                     "comp_bp": t[f"{side}_fund_pay_sumamt"] * 10000 // t["medfee_sumamt"] if t["medfee_sumamt"] else 0,
                     "inpatient_comp_bp": (ti.get(f"{side}_fund_pay_sumamt", 0) * 10000 // ti["medfee_sumamt"]
                                           if ti.get("medfee_sumamt") else 0),
                     "coverage_bp": (t[f"{side}_n_fund_pay_sumamt"] * 10000 // funding.enrollees
                                     if funding.enrollees else None)}
    if funding.income:
        layers = funding.layers or ["hifp_pay", "hifob_pay", "hifmi_pay"]
        spent = {side: sum(t[f"{side}_{c}"] for c in layers) for side in ("old", "new")}
        out["surplus"] = surplus(spent["old"], spent["new"], funding.income, funding.carried)
    return out


def patients_table(h: dict) -> Table:
    p = _table("patients: owed (补付) and recovered (追回)", "", ["total (yuan)"], ["persons"])
    p.add_row("owed to patients (补付)", fen(h["owed_total"]), f"{h['persons_owed']:,}")
    p.add_row("recovered from patients (追回)", fen(h["recovered_total"]), f"{h['persons_recovered']:,}")
    for k, lo in enumerate(GAIN_EDGES):
        hi = GAIN_EDGES[k + 1] if k + 1 < len(GAIN_EDGES) else None
        p.add_row(f"  gain {fen(lo)}" + (f" to {fen(hi)}" if hi else " and more"), "", f"{h['owed'][k]:,}")
    return p


def figures_table(r: dict, funding: Funding) -> Table:
    f = _table("fund figures", "figure", [], [], ["old", "new"])
    f.add_row("person-times compensated (补偿人次)", f"{r['old']['person_times']:,}", f"{r['new']['person_times']:,}")
    f.add_row("actual compensation ratio (实际补偿比)", pct(r["old"]["comp_bp"]), pct(r["new"]["comp_bp"]))
    f.add_row("  inpatient (住院实际补偿比)", pct(r["old"]["inpatient_comp_bp"]), pct(r["new"]["inpatient_comp_bp"]))
    if funding.enrollees:
        f.add_row("benefit coverage (受益面)", pct(r["old"]["coverage_bp"]), pct(r["new"]["coverage_bp"]))
    if "surplus" in r:
        su = r["surplus"]
        f.add_row("pooled fund spending (yuan)", fen(su["old"]["spent"]), fen(su["new"]["spent"]))
        f.add_row("current-year surplus (limit 15%)", pct(su["old"]["current_bp"]),
                  pct(su["new"]["current_bp"]))
        f.add_row("cumulative surplus (limit 25%)", pct(su["old"]["cumulative_bp"]),
                  pct(su["new"]["cumulative_bp"]))
    return f


def _gain_row(table: Table, label: str, g: dict) -> None:
    table.add_row(label, f"{g['persons_owed']:,}", fen(g["owed"]), f"{g['persons_recovered']:,}", fen(g["recovered"]))


def _gain_columns(title: str, label: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column(label, justify="left", ratio=1, overflow="fold")
    for c in ("persons gaining", "owed (补付)", "persons losing", "recovered (追回)"):
        persons = c.startswith("persons")
        t.add_column(c, justify="right", no_wrap=not persons, max_width=9 if persons else None)
    return t


GAIN_VALUES = ("persons", "persons_owed", "owed", "persons_recovered", "recovered")


def gains_by_region(gains: pa.Table, names: Names) -> Table:
    """Who gains (补付) and who loses (追回), by the county where they are insured (参保地)."""
    t = _gain_columns("who gains, by region (参保地)", "region")
    g = gains.group_by(["region"]).aggregate([(c, "sum") for c in GAIN_VALUES]).sort_by("region")
    for r in g.to_pylist():
        _gain_row(t, names.of("region", r["region"]), {c: r[f"{c}_sum"] for c in GAIN_VALUES})
    return t


def gains_by_category(gains: pa.Table) -> Table:
    """Who gains and who loses, by person category (a person in two categories counts in both)."""
    t = _gain_columns("who gains, by category (a person in two counts in both)", "category")
    by = {}
    for r in gains.to_pylist():
        for name in (r["psn_cats"].split(",") if r["psn_cats"] else ["none"]):
            acc = by.setdefault(name, dict.fromkeys(GAIN_VALUES, 0))
            for c in GAIN_VALUES:
                acc[c] += r[c]
    for name in sorted(by, key=lambda k: (k == "none", k)):
        _gain_row(t, name, by[name])
    return t


def coverage_by_region(summary: pa.Table, funding: Funding, names: Names) -> Table:
    """Benefit coverage (受益面) per county: person-times compensated / the county's enrollees."""
    g = summary.group_by(["region"]).aggregate([("old_n_fund_pay_sumamt", "sum"), ("new_n_fund_pay_sumamt", "sum")])
    pt = {r["region"]: (r["old_n_fund_pay_sumamt_sum"], r["new_n_fund_pay_sumamt_sum"]) for r in g.to_pylist()}
    t = _table("benefit coverage (受益面), by region", "region", [], ["enrollees", "person-times old", "new"],
               ["coverage old → new"])
    for c in funding.counties:
        old, new = pt.get(c["code"], (0, 0))
        n = c["enrollees"]
        t.add_row(names.of("region", c["code"]), f"{n:,}", f"{old:,}", f"{new:,}",
                  f"{_ratio(old, n)} → {_ratio(new, n)}")
    return t


def summary_tables(summary: pa.Table, hist: dict, names: Names, funding: Funding, title: str, full=False,
                   gains: pa.Table | None = None) -> list:
    """Every table of the report, in reading order (the terminal's, or the HTML's with full=True)."""
    tables = [fund_table(summary, title), person_times_table(summary),
              by_dimension(summary, "month", "by settlement month", names, full),
              by_dimension(summary, "medins_lv", "by hospital level", names, full)]
    if full or len(set(summary.column("region").to_pylist())) > 1:
        tables.append(by_dimension(summary, "region", "by region (参保地)", names, full))
    if full or len(set(summary.column("insutype").to_pylist())) > 1:
        tables.append(by_dimension(summary, "insutype", "by scheme", names, full))
    tables.append(patients_table(hist))
    if gains is not None and gains.num_rows:
        if full or len(set(gains.column("region").to_pylist())) > 1:
            tables.append(gains_by_region(gains, names))
        if full or gains.column("psn_cats").null_count < gains.num_rows:
            tables.append(gains_by_category(gains))
    if funding.counties:
        tables.append(coverage_by_region(summary, funding, names))
    tables.append(figures_table(ratios(summary, funding), funding))
    return tables


def title_of(plan, rows: int) -> str:
    old = "old results file" if plan.old is None else plan.old.label()
    return f"Re-settlement of {rows:,} visits: {old} -> {plan.new.label()}"


def print_summary(console, outcome, plan, funding: Funding, names: Names | None = None) -> None:
    names = names or names_for(plan, funding.counties)
    for table in summary_tables(outcome.summary, outcome.histogram, names, funding, title_of(plan, outcome.rows),
                                gains=outcome.gains):
        console.print(table)
    for w in ratios(outcome.summary, funding).get("surplus", {}).get("warnings", []):
        console.print(f"[bold yellow]warning:[/bold yellow] {w}")


# --- files ------------------------------------------------------------------------------------

def _paired_bars(plt, labels, left, right, legend, xlabel, ylabel, title, rotation=0) -> bytes:
    """A PNG of two bar series side by side (before/after, gain/loss)."""
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(x - 0.2, left, 0.4, label=legend[0])
    ax.bar(x + 0.2, right, 0.4, label=legend[1])
    ax.set_xticks(x, labels, rotation=rotation)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return png.getvalue()


def _charts(summary: pa.Table, hist: dict):
    """Two PNGs (bytes): fund spending by month old/new; persons by gain. None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    g = summary.group_by(["month"]).aggregate([("old_fund_pay_sumamt", "sum"), ("new_fund_pay_sumamt", "sum")]).sort_by("month")
    months = [str(m) for m in g.column("month").to_pylist()]
    # yuan only for the picture's axis; every figure in the tables stays in fen
    spending = _paired_bars(plt, months, np.asarray(g.column("old_fund_pay_sumamt_sum")) / 100,
                            np.asarray(g.column("new_fund_pay_sumamt_sum")) / 100, ("before", "after"),
                            None, "yuan", "fund spending by settlement month", rotation=45)
    gains = _paired_bars(plt, [f"{fen(lo)}+" for lo in GAIN_EDGES], hist["owed"], hist["recovered"],
                         ("gain (owed)", "loss (recovered)"), "yuan per person", "persons",
                         "how many patients gain (or lose) how much")
    return spending, gains


def _html_table(table: Table) -> str:
    cols = [c.header for c in table.columns]
    rows = list(zip(*[list(c.cells) for c in table.columns])) if table.columns else []
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<h2>{html.escape(str(table.title or ''))}</h2><table><tr>{head}</tr>{body}</table>"


def write_reports(final: Path, kinds, plan, funding: Funding, names: Names | None = None) -> None:
    """report.html (every table, with visits and total cost, and the embedded charts) and/or
    fund_by_month.png, gains.png."""
    if not kinds:
        return
    import json
    summary = pq.read_table(final / "summary.parquet")
    gains = pq.read_table(final / "gains.parquet")
    meta = json.loads((final / "meta.json").read_text())
    hist = meta["histogram"]
    charts = _charts(summary, hist) if summary.num_rows else None
    if "png" in kinds and charts:
        (final / "fund_by_month.png").write_bytes(charts[0])
        (final / "gains.png").write_bytes(charts[1])
    if "html" in kinds:
        names = names or names_for(plan, funding.counties)
        tables = summary_tables(summary, hist, names, funding, title_of(plan, meta["rows"]), full=True, gains=gains)
        if charts:
            imgs = "".join(f'<img alt="{a}" src="data:image/png;base64,{base64.b64encode(c).decode()}">'
                           for a, c in zip(("fund spending by month", "persons by gain"), charts))
        else:
            imgs = "<p>(charts need matplotlib: pip install medsettle[report])</p>"
        warnings = "".join(f"<p class=warn>warning: {html.escape(w)}</p>"
                           for w in ratios(summary, funding).get("surplus", {}).get("warnings", []))
        doc = ("<!doctype html><meta charset=utf-8><title>medsettle re-settlement</title>"
               "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
               ".warn{color:#a60;font-weight:bold}</style>"
               f"<h1>Re-settlement: {html.escape('old results' if plan.old is None else plan.old.label())} &rarr; "
               f"{html.escape(plan.new.label())}</h1>{warnings}{imgs}"
               + "".join(_html_table(t) for t in tables))
        (final / "report.html").write_text(doc, encoding="utf-8")
