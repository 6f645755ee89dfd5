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


def _ratio(num, den):
    return pct(num * 10000 // den) if den else "-"


def _signed(v):
    return ("+" if v > 0 else "") + fen(v)


def fund_table(summary: pa.Table, title: str) -> Table:
    t = totals(summary)
    table = Table(title=title, title_justify="left")
    for c, j in (("fund", "left"), ("old", "right"), ("new", "right"), ("delta", "right"),
                 ("person-times old", "right"), ("person-times new", "right")):
        table.add_column(c, justify=j)
    for c in COMPARED:
        if c in ("hifes_pay", "oth_pay") and not (t[f"old_{c}"] or t[f"new_{c}"]):
            continue
        n_old = f"{t[f'old_n_{c}']:,}" if f"old_n_{c}" in t else ""
        n_new = f"{t[f'new_n_{c}']:,}" if f"new_n_{c}" in t else ""
        table.add_row(FUND_NAMES.get(c, c), fen(t[f"old_{c}"]), fen(t[f"new_{c}"]), _signed(t[f"delta_{c}"]),
                      n_old, n_new)
    return table


def by_dimension(summary: pa.Table, key: str, title: str) -> Table:
    g = summary.group_by([key]).aggregate([(c, "sum") for c in ("visits", "medfee_sumamt", "old_fund_pay_sumamt",
                                                               "new_fund_pay_sumamt", "delta_fund_pay_sumamt",
                                                               "old_n_fund_pay_sumamt", "new_n_fund_pay_sumamt")])
    g = g.sort_by(key)
    table = Table(title=title, title_justify="left")
    for c in (key, "visits", "total cost", "funds old", "funds new", "delta", "comp. ratio old", "comp. ratio new"):
        table.add_column(c, justify="left" if c == key else "right")
    for r in g.to_pylist():
        cost = r["medfee_sumamt_sum"]
        table.add_row(str(r[key]), f"{r['visits_sum']:,}", fen(cost), fen(r["old_fund_pay_sumamt_sum"]),
                      fen(r["new_fund_pay_sumamt_sum"]), _signed(r["delta_fund_pay_sumamt_sum"]),
                      _ratio(r["old_fund_pay_sumamt_sum"], cost), _ratio(r["new_fund_pay_sumamt_sum"], cost))
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


def print_summary(console, outcome, plan, funding: Funding) -> None:
    s = outcome.summary
    console.print(fund_table(s, f"Re-settlement of {outcome.rows:,} visits: "
                                f"{'old results file' if plan.old is None else plan.old.label()} -> {plan.new.label()}"))
    console.print(by_dimension(s, "month", "by settlement month"))
    console.print(by_dimension(s, "medins_lv", "by hospital level"))
    if len(set(s.column("region").to_pylist())) > 1:
        console.print(by_dimension(s, "region", "by region (参保地)"))
    if len(set(s.column("insutype").to_pylist())) > 1:
        console.print(by_dimension(s, "insutype", "by scheme"))
    h = outcome.histogram
    p = Table(title="patients: owed (补付) and recovered (追回)", title_justify="left")
    for c in ("", "persons", "total"):
        p.add_column(c, justify="left" if not c else "right")
    p.add_row("owed to patients (补付)", f"{h['persons_owed']:,}", fen(h["owed_total"]))
    p.add_row("recovered from patients (追回)", f"{h['persons_recovered']:,}", fen(h["recovered_total"]))
    for k, lo in enumerate(GAIN_EDGES):
        hi = GAIN_EDGES[k + 1] if k + 1 < len(GAIN_EDGES) else None
        p.add_row(f"  gain {fen(lo)}" + (f" to {fen(hi)}" if hi else " and more"), f"{h['owed'][k]:,}", "")
    console.print(p)
    r = ratios(s, funding)
    f = Table(title="fund figures", title_justify="left")
    for c in ("figure", "old", "new"):
        f.add_column(c, justify="left" if c == "figure" else "right")
    f.add_row("person-times compensated (补偿人次)", f"{r['old']['person_times']:,}", f"{r['new']['person_times']:,}")
    f.add_row("actual compensation ratio (实际补偿比)", pct(r["old"]["comp_bp"]), pct(r["new"]["comp_bp"]))
    f.add_row("  inpatient (住院实际补偿比)", pct(r["old"]["inpatient_comp_bp"]), pct(r["new"]["inpatient_comp_bp"]))
    if funding.enrollees:
        f.add_row("benefit coverage (受益面)", pct(r["old"]["coverage_bp"]), pct(r["new"]["coverage_bp"]))
    if "surplus" in r:
        su = r["surplus"]
        f.add_row("pooled fund spending", fen(su["old"]["spent"]), fen(su["new"]["spent"]))
        f.add_row("current-year surplus (limit 15%)", pct(su["old"]["current_bp"]) if su["old"]["current_bp"] >= 0
                  else "-" + pct(-su["old"]["current_bp"]),
                  pct(su["new"]["current_bp"]) if su["new"]["current_bp"] >= 0 else "-" + pct(-su["new"]["current_bp"]))
        f.add_row("cumulative surplus (limit 25%)", pct(su["old"]["cumulative_bp"]) if su["old"]["cumulative_bp"] >= 0
                  else "-" + pct(-su["old"]["cumulative_bp"]),
                  pct(su["new"]["cumulative_bp"]) if su["new"]["cumulative_bp"] >= 0 else "-" + pct(-su["new"]["cumulative_bp"]))
    console.print(f)
    for w in r.get("surplus", {}).get("warnings", []):
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


def write_reports(final: Path, kinds, plan, funding: Funding) -> None:
    """report.html (tables and embedded charts) and/or fund_by_month.png, gains.png."""
    if not kinds:
        return
    import json
    summary = pq.read_table(final / "summary.parquet")
    hist = json.loads((final / "meta.json").read_text())["histogram"]
    charts = _charts(summary, hist) if summary.num_rows else None
    if "png" in kinds and charts:
        (final / "fund_by_month.png").write_bytes(charts[0])
        (final / "gains.png").write_bytes(charts[1])
    if "html" in kinds:
        from rich.console import Console
        parts = [fund_table(summary, "funds, old and new"), by_dimension(summary, "month", "by settlement month"),
                 by_dimension(summary, "medins_lv", "by hospital level"), by_dimension(summary, "region", "by region"),
                 by_dimension(summary, "insutype", "by scheme")]
        r = ratios(summary, funding)
        text = io.StringIO()
        console = Console(file=text, width=120, record=True)

        class _O:
            pass
        o = _O()
        o.summary, o.histogram, o.rows = summary, hist, int(totals(summary)["visits"]) if summary.num_rows else 0
        print_summary(console, o, plan, funding)
        imgs = ""
        if charts:
            imgs = "".join(f'<img alt="{a}" src="data:image/png;base64,{base64.b64encode(c).decode()}">'
                           for a, c in zip(("fund spending by month", "persons by gain"), charts))
        else:
            imgs = "<p>(charts need matplotlib: pip install medsettle[report])</p>"
        warnings = "".join(f"<p class=warn>warning: {html.escape(w)}</p>" for w in r.get("surplus", {}).get("warnings", []))
        doc = ("<!doctype html><meta charset=utf-8><title>medsettle re-settlement</title>"
               "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}.warn{color:#a60;font-weight:bold}</style>"
               f"<h1>Re-settlement: {html.escape('old results' if plan.old is None else plan.old.label())} &rarr; "
               f"{html.escape(plan.new.label())}</h1>{warnings}{imgs}"
               + "".join(_html_table(t) for t in parts)
               + f"<h2>all figures</h2><pre>{html.escape(console.export_text())}</pre>")
        (final / "report.html").write_text(doc, encoding="utf-8")
