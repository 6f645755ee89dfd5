"""The `medsettle` command.

    medsettle settle                      # sample pack, sample catalogue, synthetic visits
    medsettle settle VISITS.parquet --lines LINES.parquet --out results.parquet [--detail detail.parquet]
                     [--pack P] [--catalogue C] [--chunk-rows N]
    medsettle explain VISITS.parquet MDTRT_ID [--lines LINES.parquet]
    medsettle policy check PACK.toml ...

Other parts register their own commands here: resettle and synth (kernel.resettle, kernel.region),
serve, call and loadtest (server.cli), demo (server.demo).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from .chunks import DEFAULT_CHUNK_ROWS

console = Console(stderr=False)
err = Console(stderr=True)


class _Visits(ProgressColumn):
    """Visits settled of the total, and per second so far."""

    def render(self, task):
        if task.total is None:
            return Text("")
        elapsed = task.elapsed or 0
        rate = f", {task.completed / elapsed:,.0f} visits/s" if elapsed > 0 and task.completed else ""
        return Text(f"{int(task.completed):,}/{int(task.total):,} visits{rate}", style="progress.data.speed")


def _phases(total):
    """A progress bar of counted steps (re-settlement passes, region counties)."""
    return Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=err)


def _progress():
    return Progress(TextColumn("{task.description}"), BarColumn(), _Visits(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err)


def _settler(args):
    from .api import Settler
    return Settler.from_files(args.pack, args.catalogue)


def cmd_settle(args) -> int:
    settler = _settler(args)
    out = Path(args.out)
    if args.chunk_rows < 1:
        err.print(f"[red]error:[/red] --chunk-rows must be at least 1, got {args.chunk_rows}")
        return 2
    with _progress() as progress:
        task = progress.add_task("reading", total=None)

        def advance(done, total, what):
            progress.update(task, completed=done, total=total, description=what)

        if args.visits is None:
            from .synth import synth_visits
            progress.update(task, description=f"synthesizing {args.demo_visits:,} visits")
            visits, lines = synth_visits(settler.pack, settler.catalogue, args.demo_visits, seed=args.seed)
        else:
            visits, lines = args.visits, args.lines
        t0 = time.perf_counter()
        result = settler.settle_file(visits, out, lines, mode=args.mode, detail_path=args.detail,
                                     chunk_rows=args.chunk_rows, progress=advance)
        elapsed = time.perf_counter() - t0
    where = f"{out}" + (f" and {args.detail}" if args.detail else "")
    print_summary(result.visits, result.totals, result.statuses,
                  f"{result.visits:,} visits settled in {elapsed:.2f} s -> {where}")
    return 0


def summary_table(table, title):
    """print_summary of a table of results (settle_table's)."""
    import pyarrow.compute as pc
    from .layout import OUT_COLS
    totals = {name: int(pc.sum(table.column(name)).as_py() or 0) for name in OUT_COLS}
    counts = table.group_by("status").aggregate([("mdtrt_id", "count")]).to_pylist()
    print_summary(table.num_rows, totals, {str(r["status"]): r["mdtrt_id_count"] for r in counts}, title)


def print_summary(visits: int, totals: dict, statuses: dict, title: str):
    """Visits, total cost, totals per fund, patient share and the actual compensation ratio
    (实际补偿比: all funds / total cost, rounded down to 0.01%), then visits by status."""
    from .api import fen, pct
    cost = totals["medfee_sumamt"]
    t = Table(title=title, title_justify="left")
    t.add_column("item")
    t.add_column("yuan", justify="right")
    t.add_column("share of cost", justify="right")
    t.add_row("visits", f"{visits:,}", "")
    t.add_row("total cost (medfee_sumamt)", fen(cost), "100%")
    for label, name in [("basic pooled fund (hifp_pay)", "hifp_pay"),
                        ("large-amount subsidy (hifob_pay)", "hifob_pay"),
                        ("serious illness (hifmi_pay)", "hifmi_pay"),
                        ("civil-servant subsidy (cvlserv_pay)", "cvlserv_pay"),
                        ("medical assistance (maf_pay)", "maf_pay"),
                        ("all funds (fund_pay_sumamt)", "fund_pay_sumamt"),
                        ("patient (psn_part_amt)", "psn_part_amt"),
                        ("  of which personal account", "acct_pay"),
                        ("  of which cash", "psn_cash_pay"),
                        ("hospital (hosp_part_amt)", "hosp_part_amt")]:
        v = totals[name]
        t.add_row(label, fen(v), pct(v * 10000 // cost) if cost else "")
    t.add_row("actual compensation ratio (实际补偿比)", "",
              pct(totals["fund_pay_sumamt"] * 10000 // cost) if cost else "")
    console.print(t)
    s = Table(title="visits by status", title_justify="left")
    s.add_column("status")
    s.add_column("visits", justify="right")
    for status, count in sorted(statuses.items(), key=lambda kv: -kv[1]):
        s.add_row(status, f"{count:,}")
    console.print(s)


def cmd_explain(args) -> int:
    from .api import fen, limit_text, pct, read_table
    from .layout import OUT_COLS
    settler = _settler(args)
    visits = read_table(args.visits)
    lines = read_table(args.lines) if args.lines else None
    row, trace = settler.explain(visits, lines, args.mdtrt_id)
    console.print(f"[bold]Visit {row['mdtrt_id']}[/bold] of person {row['psn_no']}: status {row['status']}"
                  + (f" ({row['reason']})" if row["reason"] else "") + f", policy {row['policy_version']}")
    console.print("\n[bold]Steps, in the order the chain applies them[/bold]")
    for k, step in enumerate(trace, 1):
        console.print(f"{k:>2}. {step}", markup=False)     # the words hold brackets: [0.00, 30,000.00)
    t = Table(title="Result (kernel)", title_justify="left")
    t.add_column("field")
    t.add_column("value", justify="right")
    for name in OUT_COLS:
        value = row[name]
        t.add_row(name, pct(value) if name == "pool_prop_selfpay" else
                  limit_text(value) if name.endswith("_lmt") else fen(value))
    console.print(t)
    f = Table(title="Funds (setldetail)", title_justify="left")
    for c in ("fund", "worked on (inscp_scp_amt)", "limit left before (crt_payb_lmt_amt)", "paid (fund_payamt)"):
        f.add_column(c, justify="left" if c == "fund" else "right")
    for d in row["setldetail"]:
        f.add_row(d["fund_pay_type"], fen(d["inscp_scp_amt"]), limit_text(d["crt_payb_lmt_amt"]),
                  fen(d["fund_payamt"]))
    console.print(f)
    for d in row["setldetail"]:
        console.print(f"{d['fund_pay_type']}: {d['setl_proc_info']}", markup=False)
    return 0


def cmd_policy_check(args) -> int:
    """Validate and compile each pack, or each draft over its base pack (as resettle reads it)."""
    import msgspec
    from .compile import compile_pack
    from .policy import is_draft
    from .resettle import load_policy
    status = 0
    for path in args.packs:
        try:
            pack = load_policy(path)
            compiled = compile_pack(pack)
        except ValueError as e:
            err.print(f"[red]error[/red] {e}")
            status = 2
            continue
        raw = msgspec.toml.decode(Path(path).read_bytes())   # read once more: is it a draft, of what
        draft_ids = set()
        if is_draft(raw):
            draft_ids = {(s.get("code"), v.get("id")) for s in raw.get("schemes", []) for v in s.get("versions", [])}
            title = f"{path}: draft {pack.name} over base pack {raw['base']} is valid (region {pack.region})"
        else:
            title = f"{path}: pack {pack.name} (region {pack.region}) is valid"
        t = Table(title=title, title_justify="left",
                  caption="governing date (picks the version): "
                  + "; ".join(f"{s.code} by {s.governing_date}" for s in pack.schemes),
                  caption_justify="left")
        for c in ("scheme", "version", "in force", "med types") + (("source",) if draft_ids else ()):
            t.add_column(c, overflow="fold")
        for scheme in pack.schemes:
            for v in scheme.versions:
                row = [scheme.code, v.id, f"{v.effective_from} to {v.effective_to or 'open'}",
                       ", ".join(v.med_types)]
                if draft_ids:
                    row.append("draft" if (scheme.code, v.id) in draft_ids else "base")
                t.add_row(*row)
        console.print(t)
        console.print(f"compiled: {compiled.rules.shape[0]} rule rows, {compiled.diseases.shape[0]} disease rows, "
                      f"{compiled.bands.shape[0]} band sets")
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medsettle", description="Settle medical-insurance visits, to the fen.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--pack", help="policy pack TOML, or a draft over its base (default: the shipped sample rural pack)")
        sp.add_argument("--catalogue", help="catalogue CSV/Parquet (default: the shipped sample)")

    s = sub.add_parser("settle", help="settle a file of visits (no file: a synthetic demo)")
    s.add_argument("visits", nargs="?", help="visits Parquet/CSV; omitted: synthetic visits")
    s.add_argument("--lines", help="line items Parquet/CSV (else the visits carry precomputed amounts)")
    s.add_argument("--out", default="out/results.parquet", help="results Parquet (default %(default)s)")
    s.add_argument("--detail", help="also write the setldetail rows (one per fund of each visit) to this Parquet")
    s.add_argument("--mode", choices=["settle", "presettle"], default="settle")
    s.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS,
                   help="visits settled at a time (memory; the results do not depend on it) (default %(default)s)")
    s.add_argument("--demo-visits", type=int, default=200_000, help="synthetic visits when no file is given")
    s.add_argument("--seed", type=int, default=1)
    common(s)
    s.set_defaults(func=cmd_settle)

    e = sub.add_parser("explain", help="the step trace of one visit")
    e.add_argument("visits")
    e.add_argument("mdtrt_id")
    e.add_argument("--lines")
    common(e)
    e.set_defaults(func=cmd_explain)

    pol = sub.add_parser("policy", help="policy packs")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    chk = psub.add_parser("check", help="validate and compile packs, or drafts over their base pack")
    chk.add_argument("packs", nargs="+")
    chk.set_defaults(func=cmd_policy_check)

    # commands of other parts register themselves: re-settlement, the server and client, the demo
    import importlib
    for module in ("kernel.resettle", "server.cli", "server.demo"):
        try:
            plugin = importlib.import_module(module)
        except ImportError as e:
            if e.name and not e.name.startswith(module.split(".")[0]):
                raise
            continue
        plugin.add_subcommands(sub)
    return p


def main(argv=None) -> int:
    from .errors import InputError
    from .policy import PolicyError
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (InputError, PolicyError) as e:
        err.print(f"[red]error:[/red] {e}")
        return 2
    except OSError as e:                # a missing or unreadable file, a directory given for a file
        from rich.markup import escape
        err.print(f"[red]error:[/red] {escape(str(e))}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
