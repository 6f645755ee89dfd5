"""A synthetic rural-scheme region calibrated to SOURCE-FIGURES.md (a Yunnan prefecture, about 2013).

Built on kernel.synth (which draws valid visits for a pack) and beside it: this module chooses the
region's shape and writes it county by county, so memory stays bounded at any size.

- 9 counties/districts, about 1.62 million enrollees (97.55% enrolment), by county population; every
  enrollee in persons.parquet, with or without a visit;
- about 2.54 compensated person-times per enrollee a year (benefit coverage 254.28%);
- the synth's township / county / city mix of institutions, each county with its own township and
  county hospitals, city hospitals shared by the prefecture;
- inpatient stays averaging about 9,000 yuan (Qujing 2018: 9,036 a stay);
- inpatient share of visits set so a compensation averages about 124.5 yuan (4.1126 million
  person-times, 512 million yuan), and in-scope shares so the actual inpatient compensation ratio
  under the sample rural pack is near 64.27% (with line items or precomputed amounts);
- a few very-high-cost stays (assumed), past the serious-illness cap;
- funding 400 yuan per enrollee-year (region.json: income for the surplus ratios).

Deterministic for a seed: chunk j of county k is drawn from the seed sequence (seed, k, j). Drawn
in chunks of persons, so memory stays bounded for tens of millions of visits with lines.

    medsettle synth --visits 100000 --out out/region           # line items (default)
    medsettle synth --visits 10000000 --amounts precomputed --out out/region10m
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PREFECTURE = "530300"
# (code, name, share of enrollees): 9 counties/districts; shares assumed from typical populations
COUNTIES = [("530302", "district A", 0.17), ("530321", "county B", 0.10), ("530322", "county C", 0.10),
            ("530323", "county D", 0.12), ("530324", "county E", 0.09), ("530325", "county F", 0.14),
            ("530326", "county G", 0.14), ("530381", "county H", 0.09), ("530382", "county I", 0.05)]
ENROLLEES = 1_620_000                  # about 1.62 million over 9 counties (derived in the source)
COMPENSATIONS_PER_ENROLLEE = 2.5428    # benefit coverage 254.28%: person-times compensated / enrollees
# Share of visits a fund pays something for under the sample rural pack (measured on the calibrated
# region, both amount modes: the rest are outpatient visits past the outpatient pool's cap, excluded
# injury causes, ...). Visits per enrollee = compensations per enrollee / this share.
COMPENSATED_SHARE = 0.92
FUNDING_PER_ENROLLEE_FEN = 400_00      # 340 subsidy + 60 personal
# The synth draws about 11.4% admissions; the source's 124.5 yuan a compensation implies far fewer:
# keep this share of the drawn admissions (calibrated once against the sample rural pack).
INPATIENT_KEEP = 0.12
# Calibration of the actual inpatient compensation ratio to about 64.27% under the sample rural pack,
# per amount mode (the synth alone gives about 66.8% with precomputed amounts, 59.5% with lines):
# precomputed: this part of an admission's in-scope amount moves to class C;
INSCOPE_TO_SELFPAY = 0.03
# lines: this share of an admission's class C lines is billed under a class A code (same quantity, price).
CLASS_C_LINES_TO_A = 0.33
# Very-high-cost patients (assumed: the source gives no count): about 1 enrollee in 20,000 a year has one
# city-hospital stay for a cancer with 450,000-700,000 yuan in policy scope (example C1: 600,000), which
# takes the serious-illness layer past its 250,000 cap: a cap change shows on them. The stay's in-scope
# items are scaled up to that; its self-paid items stay as drawn.
HIGH_COST_PER_ENROLLEE = 1 / 20_000
HIGH_COST_FEN = (450_000_00, 700_000_00)
HIGH_COST_DIAGNOSES = ["C34.901", "C16.901", "C18.901", "C20.x01", "C15.901", "C50.901"]
TOWNSHIPS_PER_COUNTY, COUNTY_HOSPITALS, CITY_HOSPITALS = 12, 2, 6
# Persons drawn at a time: a chunk's visits (about 140,000) and lines are in memory, not the county's.
PERSONS_PER_CHUNK = 50_000


def region_sizes(n_visits: int | None = None, enrollees: int | None = None) -> tuple[int, int]:
    """(visits, enrollees): the source's region by default; one given, the other follows the ratio."""
    per_enrollee = COMPENSATIONS_PER_ENROLLEE / COMPENSATED_SHARE
    if n_visits is None and enrollees is None:
        enrollees = ENROLLEES
    if n_visits is None:
        n_visits = round(enrollees * per_enrollee)
    if enrollees is None:
        enrollees = max(1, round(n_visits / per_enrollee))
    return int(n_visits), int(enrollees)


def _split(total: int, shares) -> list[int]:
    raw = np.array(shares, dtype=np.float64) / max(sum(shares), 1e-300) * total
    out = np.floor(raw).astype(np.int64)
    out[np.argsort(raw - out)[::-1][: total - out.sum()]] += 1
    return out.tolist()


def _prefix(arr: pa.Array, prefix: str) -> pa.Array:
    return pc.binary_join_element_wise(pa.array([prefix] * len(arr), pa.string()), arr, "")


def institutions(pack=None) -> pa.Table:
    """The region's institutions: code, level, county, kind."""
    rows = []
    for code, _, _ in COUNTIES:
        rows += [(f"H{code}1{i:03d}", "1", code, "township hospital (乡镇卫生院)") for i in range(TOWNSHIPS_PER_COUNTY)]
        rows += [(f"H{code}2{i:03d}", "2", code, "county hospital (县级医院)") for i in range(COUNTY_HOSPITALS)]
    rows += [(f"H{PREFECTURE}3{i:03d}", "3", PREFECTURE, "city hospital (市级医院)") for i in range(CITY_HOSPITALS)]
    return pa.table({"fixmedins_code": [r[0] for r in rows], "medins_lv": [r[1] for r in rows],
                     "admdvs": [r[2] for r in rows], "kind": [r[3] for r in rows]})


def _chunk_seed(seed: int, county: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, county, chunk]).generate_state(1)[0])


def _thinned(inp: np.ndarray, n_visits: int, rng) -> np.ndarray:
    """Rows kept: INPATIENT_KEEP of the admissions and every other visit, then as many as drawn in
    excess dropped at random (not the last ones: the year keeps its December)."""
    keep = np.flatnonzero(~inp | (rng.random(len(inp)) < INPATIENT_KEEP))
    if len(keep) < n_visits:
        raise RuntimeError(f"drew {len(keep)} visits for {n_visits}: widen the margin of chunk_visits")
    return np.delete(keep, rng.choice(len(keep), len(keep) - n_visits, replace=False))


def _high_cost_rows(cols: dict, inp: np.ndarray, strata: list, rng) -> np.ndarray:
    """Admissions of distinct persons with no injury cause, one in each stratum (lo, hi) of the year
    (fractions of the chunk's admissions in settlement-time order): the very-high-cost stays."""
    psn = np.asarray(cols["psn_no"].combine_chunks().dictionary_encode().indices)
    cause = cols["inj_cause"].combine_chunks()
    plain = inp & ~np.asarray(pc.fill_null(pc.not_equal(cause, "none"), False), dtype=bool)
    rows = np.flatnonzero(plain)
    _, first = np.unique(psn[rows], return_index=True)
    rows = np.sort(rows[first])                       # settlement-time order
    picked = []
    for lo, hi in strata:
        a, b = int(lo * len(rows)), int(hi * len(rows))
        if b > a:
            picked.append(rows[a + int(rng.random() * (b - a))])
    return np.array(sorted(picked), dtype=np.int64)


def high_cost_strata(n_high: int, seed: int) -> list:
    """The parts of the year of the region's very-high-cost stays: the year cut in n_high equal parts,
    in an order drawn from the seed (given to counties and chunks in turn), so the stays spread over
    the year at any count (two or more: one falls before August, when the cap was abolished)."""
    order = np.random.default_rng(np.random.SeedSequence([seed, 11])).permutation(n_high)
    return [(k / n_high, (k + 1) / n_high) for k in order.tolist()]


def chunk_visits(pack, catalogue, county: int, chunk: int, n_visits: int, n_persons: int, high_strata: list,
                 seed: int, amounts="lines", first_visit: int = 0, first_person: int = 0):
    """(visits, lines or None, visit numbers used) of one chunk of a county's persons, calibrated, with
    a very-high-cost stay in each of high_strata; psn_no and mdtrt_id carry the county code."""
    from . import synth
    code = COUNTIES[county][0]
    rng = np.random.default_rng(np.random.SeedSequence([seed, county, chunk, 7]))
    # draw more than needed, then keep INPATIENT_KEEP of the admissions
    inpatient_codes = [m.code for m in pack.med_types if m.admission]
    drawn = int(np.ceil(n_visits / (1 - 0.114 * (1 - INPATIENT_KEEP)) * 1.02)) + 20
    args = dict(seed=_chunk_seed(seed, county, chunk), n_persons=n_persons, schemes=["rural"],
                first_visit=first_visit, first_person=first_person)
    if amounts == "lines":
        visits, lines = synth.synth_visits(pack, catalogue, drawn, **args)
    else:
        visits, lines = synth.synth_precomputed(pack, drawn, **args), None
    inp = np.asarray(pc.is_in(visits.column("med_type"), pa.array(inpatient_codes)), dtype=bool)
    idx = _thinned(inp, n_visits, rng)
    visits = visits.take(pa.array(idx))
    inp = inp[idx]
    n = visits.num_rows
    cols = {name: visits.column(name) for name in visits.column_names}
    high = _high_cost_rows(cols, inp, high_strata, rng)
    target = rng.integers(*HIGH_COST_FEN, len(high))
    lv = np.array(cols["medins_lv"].combine_chunks().cast(pa.int32()).fill_null(1))
    lv[high] = 3
    cols["medins_lv"] = pa.array(["0", "1", "2", "3"]).take(pa.array(lv))
    diagnosis = np.full(n, -1)
    diagnosis[high] = rng.integers(0, len(HIGH_COST_DIAGNOSES), len(high))
    cols["dise_codg"] = pc.coalesce(pa.array(HIGH_COST_DIAGNOSES).take(pa.array(diagnosis, mask=diagnosis < 0)),
                                    cols["dise_codg"].combine_chunks())
    if amounts == "lines":
        lines = _calibrated_lines(lines, cols, inp, high, target, catalogue, rng)
    else:
        _calibrate_precomputed(cols, inp, high, target)
    old_ids = cols["mdtrt_id"]
    cols["mdtrt_id"] = _prefix(old_ids.combine_chunks(), code)
    cols["psn_no"] = _prefix(cols["psn_no"].combine_chunks(), code)
    cols["insu_admdvs"] = pa.array([code] * n, pa.string())
    k = rng.integers(0, 1 << 30, n)
    inst = np.where(lv == 1, k % TOWNSHIPS_PER_COUNTY, np.where(lv == 2, k % COUNTY_HOSPITALS, k % CITY_HOSPITALS))
    cols["fixmedins_code"] = _inst_codes(code, lv, inst)
    visits = pa.table(cols, schema=visits.schema)
    if lines is not None:
        lines = lines.set_column(0, "mdtrt_id", _prefix(lines.column("mdtrt_id").combine_chunks(), code))
    return visits, lines, drawn


def county_visits(pack, catalogue, county: int, n_visits: int, n_persons: int, seed: int, amounts="lines"):
    """(visits, lines or None) of one county drawn in one piece, calibrated, without very-high-cost stays
    (server/loadtest.py draws its visits so)."""
    visits, lines, _ = chunk_visits(pack, catalogue, county, 0, n_visits, n_persons, [], seed, amounts)
    return visits, lines


def _calibrate_precomputed(cols: dict, inp: np.ndarray, high: np.ndarray, target: np.ndarray) -> None:
    """INSCOPE_TO_SELFPAY of each admission's in-scope amount to class C; the high-cost stays' in-scope
    parts (and class B pre-pay) scaled to their target in scope (medfee_sumamt: the sum of the parts)."""
    parts = ["fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt"]
    a = {c: np.asarray(cols[c]).copy() for c in parts + ["inscp_essential_amt"]}
    move = np.where(inp, (a["inscp_scp_amt"] * INSCOPE_TO_SELFPAY).astype(np.int64), 0)
    a["inscp_scp_amt"] -= move
    a["fulamt_ownpay_amt"] += move
    factor = target / np.maximum(a["inscp_scp_amt"][high], 1)
    for c in ("preselfpay_amt", "inscp_scp_amt", "inscp_essential_amt"):
        a[c][high] = np.rint(a[c][high] * factor).astype(np.int64)
    a["inscp_essential_amt"] = np.minimum(a["inscp_essential_amt"], a["inscp_scp_amt"])
    for c, v in a.items():
        cols[c] = pa.array(v)
    cols["medfee_sumamt"] = pa.array(sum(a[c] for c in parts))


def _calibrated_lines(lines: pa.Table, cols: dict, inp: np.ndarray, high: np.ndarray, target: np.ndarray,
                      catalogue, rng) -> pa.Table:
    """The kept visits' lines: CLASS_C_LINES_TO_A of the admissions' class C lines under a class A
    code (no ceiling); the quantities of the high-cost stays' class A and B lines scaled so those lines
    put their target in scope; each visit's medfee_sumamt set to the sum of its lines."""
    visit = np.asarray(pc.index_in(lines.column("mdtrt_id"), value_set=cols["mdtrt_id"].combine_chunks())
                       .fill_null(-1), dtype=np.int64)
    lines = lines.filter(pa.array(visit >= 0))
    visit = visit[visit >= 0]
    code = catalogue.lookup(lines.column("hilist_code")).astype(np.int64)
    class_a = np.flatnonzero((catalogue.cls == 0) & (catalogue.ceiling == 0))
    recode = inp[visit] & (catalogue.cls[code] == 2) & (rng.random(len(code)) < CLASS_C_LINES_TO_A)
    code[recode] = class_a[rng.integers(0, len(class_a), int(recode.sum()))]
    cnt, pric = np.asarray(lines.column("cnt")).copy(), np.asarray(lines.column("pric"))
    is_high = np.zeros(len(inp), bool)
    is_high[high] = True
    in_scope = catalogue.cls[code] < 2
    # what a line puts in scope: its amount less the class B pre-pay share
    line_scope = np.where(in_scope, cnt * pric * (10_000 - catalogue.prepay[code]) // 10_000, 0)
    factor = np.zeros(len(inp))
    factor[high] = target / np.maximum(_sum_by(visit, line_scope, len(inp))[high], 1)
    scaled = is_high[visit] & in_scope
    cnt[scaled] = np.maximum(np.rint(cnt[scaled] * factor[visit[scaled]]), 1).astype(np.int64)
    amount = cnt * pric
    cols["medfee_sumamt"] = pa.array(_sum_by(visit, amount, len(inp)))
    return lines.set_column(2, "hilist_code", catalogue.codes.take(pa.array(code))) \
        .set_column(3, "cnt", pa.array(cnt)).set_column(5, "det_item_fee_sumamt", pa.array(amount))


def _sum_by(group: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Exact int64 sums of values by group 0..n-1."""
    out = np.zeros(n, np.int64)
    np.add.at(out, group, values)
    return out


def _inst_codes(county, lv, inst):
    labels = [f"H{county}1{i:03d}" for i in range(TOWNSHIPS_PER_COUNTY)] + \
             [f"H{county}2{i:03d}" for i in range(COUNTY_HOSPITALS)] + \
             [f"H{PREFECTURE}3{i:03d}" for i in range(CITY_HOSPITALS)]
    base = np.where(lv == 1, 0, np.where(lv == 2, TOWNSHIPS_PER_COUNTY, TOWNSHIPS_PER_COUNTY + COUNTY_HOSPITALS))
    return pa.array(labels, pa.string()).take(pa.array(base + inst))


def chunk_persons(pack, county: int, chunk: int, n_persons: int, seed: int, first_person: int) -> pa.Table:
    """Every enrollee of the chunk (with a visit or not), as chunk_visits draws them: psn_no, county
    (insu_admdvs), scheme, categories, birth date."""
    from .synth import synth_persons
    code = COUNTIES[county][0]
    p = synth_persons(pack, n_persons, seed=_chunk_seed(seed, county, chunk), schemes=["rural"],
                      first_person=first_person)
    return pa.table({"psn_no": _prefix(p.column("psn_no"), code),
                     "insu_admdvs": pa.array([code] * p.num_rows, pa.string()),
                     "insutype": p.column("insutype"), "psn_cats": p.column("psn_cats"), "brdy": p.column("brdy")})


def _category_counts(persons: pa.Table, counts: dict) -> None:
    """Add the persons of each category (a person in two counts in both; "none": no category)."""
    for v in pc.value_counts(persons.column("psn_cats").fill_null("")).to_pylist():
        for name in (v["values"].split(",") if v["values"] else ["none"]):
            counts[name] = counts.get(name, 0) + v["counts"]


def write_region(pack, catalogue, out_dir, n_visits: int | None = None, enrollees: int | None = None,
                 seed: int = 1, amounts: str = "lines", row_group_size: int = 500_000, progress=None) -> dict:
    """visits.parquet (+ lines.parquet), persons.parquet (every enrollee), institutions.parquet and
    region.json in out_dir. Drawn in chunks of at most PERSONS_PER_CHUNK persons: memory is a chunk's."""
    from .api import PartialParquet
    n_visits, enrollees = region_sizes(n_visits, enrollees)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shares = [c[2] for c in COUNTIES]
    visits_per, persons_per = _split(n_visits, shares), _split(enrollees, shares)
    n_high = round(enrollees * HIGH_COST_PER_ENROLLEE)
    high_per, strata = _split(n_high, shares), high_cost_strata(n_high, seed)
    outputs, counties, by_category = {}, [], {}

    def write(name, table):
        if name not in outputs:
            outputs[name] = PartialParquet(out / f"{name}.parquet", row_group_size)
        outputs[name].write(table)

    try:
        for k, (code, name, _) in enumerate(COUNTIES):
            n_chunks = max(1, -(-persons_per[k] // PERSONS_PER_CHUNK))
            persons_in = _split(persons_per[k], [1] * n_chunks)
            visits_in, high_in = _split(visits_per[k], persons_in), _split(high_per[k], persons_in)
            first_visit = first_person = 0
            county_categories = {}
            for j in range(n_chunks):
                if persons_in[j] == 0:
                    continue
                chunk_strata, strata = strata[:high_in[j]], strata[high_in[j]:]
                v, lines, drawn = chunk_visits(pack, catalogue, k, j, visits_in[j], persons_in[j], chunk_strata, seed,
                                               amounts, first_visit, first_person)
                write("visits", v)
                if lines is not None:
                    write("lines", lines)
                persons = chunk_persons(pack, k, j, persons_in[j], seed, first_person)
                write("persons", persons)
                _category_counts(persons, county_categories)
                first_visit += drawn
                first_person += persons_in[j]
                del v, lines, persons
            counties.append({"code": code, "name": name, "enrollees": persons_per[k], "visits": visits_per[k],
                             "enrollees_by_category": county_categories})
            for c, n in county_categories.items():
                by_category[c] = by_category.get(c, 0) + n
            if progress:
                progress()
    except BaseException:
        for o in outputs.values():         # nothing half-written is left
            o.discard()
        raise
    for o in outputs.values():
        o.commit()
    pq.write_table(institutions(), out / "institutions.parquet")
    meta = {"prefecture": PREFECTURE, "counties": counties, "enrollees": enrollees,
            "enrollees_by_category": by_category, "visits": n_visits, "seed": seed, "amounts": amounts,
            "fund_income_yuan": enrollees * FUNDING_PER_ENROLLEE_FEN // 100}
    (out / "region.json").write_text(json.dumps(meta, indent=1))
    return meta


def add_subcommands(sub) -> None:
    s = sub.add_parser("synth", help="write a synthetic region calibrated to SOURCE-FIGURES.md")
    s.add_argument("--visits", type=int, help="visits (default: the source region's, about 4.1 million)")
    s.add_argument("--enrollees", type=int, help="enrollees (default: visits / 2.54, or 1.62 million)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--amounts", choices=["lines", "precomputed"], default="lines",
                   help="line items, or visit-level step-1 amounts (large files) (default %(default)s)")
    s.add_argument("--out", default="out/synth")
    s.add_argument("--pack", help="policy pack TOML (default: the shipped sample rural pack)")
    s.add_argument("--catalogue", help="catalogue CSV/Parquet (default: the shipped sample)")
    s.set_defaults(func=cmd_synth)


def cmd_synth(args) -> int:
    from .api import Settler
    from .cli import _phases, console
    settler = Settler.from_files(args.pack, args.catalogue)
    with _phases(len(COUNTIES)) as progress:
        task = progress.add_task("synthesizing the region, county by county", total=len(COUNTIES))
        meta = write_region(settler.pack, settler.catalogue, args.out, args.visits, args.enrollees, args.seed,
                            args.amounts, progress=lambda: progress.update(task, advance=1))
    console.print(f"{meta['visits']:,} visits of {meta['enrollees']:,} enrollees in {len(COUNTIES)} counties "
                  f"written to {args.out}/ (fund income {meta['fund_income_yuan']:,} yuan: --fund-income)")
    return 0
