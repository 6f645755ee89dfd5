"""Unit tests of the Cython kernels (kernel._itemize, kernel._chain) on hand-built tables.

The tables are built here with numpy from kernel.layout, not by the policy compiler, so these tests
pin the kernel to docs/design.md alone. Cases are SETTLEMENT.md section 8 (amounts in fen) and the
section 7 identities over a randomized run.
"""
import numpy as np
import pytest

from kernel import layout
from kernel._chain import settle, settle_one
from kernel._itemize import itemize, itemize_one

K = layout.as_constants()
N_RULE, N_DIS, N_ACC, N_ITEM, N_OUT = K["N_RULE"], K["N_DIS"], K["N_ACC"], K["N_ITEM"], K["N_OUT"]
BAND_MAX, BAND_UNUSED, DENY = K["BAND_MAX"], K["BAND_UNUSED"], K["DENY"]
SETTLE, PRESETTLE = K["MODE_SETTLE"], K["MODE_PRESETTLE"]
OUT = {name: i for i, name in enumerate(layout.OUT_COLS)}

# Category bits and injury causes of the sample packs (bit i = pack.categories[i]).
RETIRED, CIVIL_SERVANT, LOW_INCOME, FIVE_GUARANTEE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
CAUSE_NONE, CAUSE_TRAFFIC, CAUSE_PENDING = 0, 1, 9

YUAN = 100


def rule_row(**cols):
    """One rules row: every column 0 but the 'no cap / full deductible' defaults, then cols by name."""
    row = np.zeros(N_RULE, np.int64)
    defaults = dict(R_COVERED=1, R_DED_NTH_1=10000, R_DED_NTH_2=10000, R_DED_NTH_3=10000,
                    R_BANDSET=-1, R_CAP=-1, R_OB_CAP=-1, R_MI_CAP=-1, R_CVL_CAP=-1, R_MAF_CAP=-1)
    for name, value in {**defaults, **cols}.items():
        row[K[name]] = value
    return row


def dis_row(**cols):
    row = np.zeros(N_DIS, np.int64)
    for name, value in cols.items():
        row[K[name]] = value
    return row


def band_row(*pairs):
    """A bandset from (lower edge fen, rate bp) pairs."""
    row = np.full(2 * BAND_MAX, 0, np.int64)
    row[0::2] = BAND_UNUSED
    for k, (edge, rate) in enumerate(pairs):
        row[2 * k], row[2 * k + 1] = edge, rate
    return row


class Tables:
    """rules, diseases (n_groups per rule) and bands, from named rows."""

    def __init__(self, rules, groups, bands):
        # rules: {name: rule row}; groups: {name: {rule name: disease row}}; bands: [band rows]
        self.rule_index = {name: i for i, name in enumerate(rules)}
        self.group_index = {"none": 0}
        for name in groups:
            self.group_index[name] = len(self.group_index)
        self.n_groups = len(self.group_index)
        self.rules = np.array(list(rules.values()), np.int64)
        self.diseases = np.zeros((len(rules) * self.n_groups, N_DIS), np.int64)
        for gname, by_rule in groups.items():
            for rname, row in by_rule.items():
                self.diseases[self.rule_index[rname] * self.n_groups + self.group_index[gname]] = row
        self.bands = np.array(bands, np.int64).reshape(-1, 2 * BAND_MAX)


def visits(tables, rows):
    """Column arrays from visit dicts: rule, item (medfee/fulamt/.../inscp/ess), and the rest."""
    n = len(rows)
    item = np.zeros((N_ITEM, n), np.int64)
    cols = dict(rule=np.zeros(n, np.int32), group=np.zeros(n, np.int16), cats=np.zeros(n, np.int16),
                cause=np.zeros(n, np.int8), out_area=np.zeros(n, np.int8),
                referral=np.zeros(n, np.int8), bed_days=np.zeros(n, np.int32),
                acct_used=np.zeros(n, np.int8), acc_slot=np.zeros(n, np.int32),
                psn_slot=np.zeros(n, np.int32))
    for i, r in enumerate(rows):
        inscp = r.get("inscp", 0)
        fulamt, overlmt, pre = r.get("fulamt", 0), r.get("overlmt", 0), r.get("preselfpay", 0)
        item[:, i] = [fulamt + overlmt + pre + inscp, fulamt, overlmt, pre, inscp, r.get("ess", 0)]
        cols["rule"][i] = tables.rule_index[r["rule"]]
        cols["group"][i] = tables.group_index[r.get("group", "none")]
        for name in ("cats", "cause", "out_area", "referral", "bed_days", "acct_used", "acc_slot",
                     "psn_slot"):
            cols[name][i] = r.get(name, 0)
    return item, cols


def run(tables, rows, acc=None, balance=None, mode=SETTLE):
    item, c = visits(tables, rows)
    n = len(rows)
    acc = np.zeros((4, N_ACC), np.int64) if acc is None else acc
    balance = np.zeros(4, np.int64) if balance is None else balance
    out = np.full((N_OUT, n), -999, np.int64)
    status = np.full(n, -1, np.int8)
    flags = np.full(n, -1, np.int32)
    settle(tables.rules, tables.diseases, tables.bands, tables.n_groups, item, c["rule"], c["group"],
           c["cats"], c["cause"], c["out_area"], c["referral"], c["bed_days"], c["acct_used"],
           c["acc_slot"], c["psn_slot"], acc, balance, mode, out, status, flags)
    return out, status, flags, acc, balance


def col(out, name, i=None):
    return out[OUT[name]] if i is None else int(out[OUT[name], i])


def has(flags, i, name):
    return bool(flags[i] >> K[name] & 1)


# The sample rural-scheme pack of SETTLEMENT.md section 8.
RURAL_CAP = max(50_000, 6 * 8_896) * YUAN                  # 53,376.00
MI_BANDS = band_row((0, 5000), (30_000 * YUAN, 6000), (100_000 * YUAN, 7000))
OUTPATIENT_BANDS = band_row((0, 0), (50 * YUAN, 5000), (450 * YUAN, 0))


def rural(level_ratio, ded, mi_cap=250_000 * YUAN):
    return rule_row(R_COUNTS_ADMISSION=1, R_EXCLUDED_CAUSES=1 << CAUSE_TRAFFIC,
                    R_PENDING_CAUSES=1 << CAUSE_PENDING, R_DED_AMOUNT=ded * YUAN,
                    R_DED_WAIVED_CATS=LOW_INCOME | FIVE_GUARANTEE, R_BASE_RATIO=level_ratio,
                    R_CAP=RURAL_CAP, R_MI_FORM=1, R_MI_TRIGGER=0, R_MI_THRESHOLD=10_000 * YUAN,
                    R_MI_BASE=0, R_MI_BANDSET=0, R_MI_CAP=mi_cap,
                    R_MAF_CATS=LOW_INCOME | FIVE_GUARANTEE, R_MAF_RATIO=5000,
                    R_MAF_CAP=30_000 * YUAN)


@pytest.fixture(scope="module")
def pack():
    rules = {
        "county": rural(8500, 300),
        "city": rural(6500, 800),
        "city_from_aug": rural(6500, 800, mi_cap=-1),       # the version from 1 August: no MI cap
        "resident_outpatient": rule_row(R_POOL=1, R_BANDSET=1, R_BAND_ORIGIN=1),
        "employee_l3": rule_row(R_COUNTS_ADMISSION=1, R_PENDING_CAUSES=1 << CAUSE_PENDING,
                                R_DED_AMOUNT=1_000 * YUAN, R_BASE_RATIO=8500, R_CAT_DELTA_0=500,
                                R_CAP=120_000 * YUAN, R_OB_RATIO=9000, R_OB_CAP=200_000 * YUAN,
                                R_ACCT=1),
    }
    floor70 = dis_row(D_FLOOR=7000)
    groups = {
        "I21": {"city": floor70, "city_from_aug": floor70},
        "C34": {"city": floor70, "city_from_aug": floor70},
        "K35": {"county": dis_row(D_QUOTA_MODE=1, D_QUOTA_AMOUNT=6_000 * YUAN, D_QUOTA_RATIO=8500)},
        "F20": {"county": dis_row(D_QUOTA_MODE=2, D_QUOTA_AMOUNT=150 * YUAN, D_QUOTA_RATIO=9000)},
    }
    return Tables(rules, groups, [MI_BANDS, OUTPATIENT_BANDS])


def check_identities(out):
    T, F, O, P, I = (col(out, c) for c in ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay",
                                           "preselfpay_amt", "inscp_scp_amt"))
    funds = sum(col(out, c) for c in ("hifp_pay", "hifob_pay", "hifmi_pay", "cvlserv_pay",
                                      "hifes_pay", "maf_pay", "oth_pay"))
    assert (T == F + O + P + I).all()
    assert (col(out, "fund_pay_sumamt") == funds).all()
    assert (T == col(out, "fund_pay_sumamt") + col(out, "psn_part_amt") + col(out, "hosp_part_amt")).all()
    assert (col(out, "psn_part_amt") == col(out, "acct_pay") + col(out, "psn_cash_pay")).all()
    for name in layout.OUT_COLS:
        floor = -1 if name.endswith("_lmt") else 0
        assert (out[OUT[name]] >= floor).all(), name
    assert (col(out, "pool_prop_selfpay") <= 10000).all()
    assert (col(out, "act_pay_dedc") <= I).all()
    for pay, lmt in (("hifp_pay", "hifp_lmt"), ("hifob_pay", "hifob_lmt"), ("hifmi_pay", "hifmi_lmt"),
                     ("cvlserv_pay", "cvlserv_lmt"), ("maf_pay", "maf_lmt")):
        limited = col(out, lmt) >= 0
        assert (col(out, pay)[limited] <= col(out, lmt)[limited]).all(), pay


# ---------------------------------------------------------------- itemize (step 1)

def test_itemize_example_a_lines():
    # catalogue: 0 class A drug, 1 class B drug (10% pre-pay), 2 service with ceiling 3,000, 3 class C,
    # 4 class A service
    cat_class = np.array([0, 1, 0, 2, 0], np.int8)
    cat_prepay = np.array([0, 1000, 0, 0, 0], np.int64)
    cat_ceiling = np.array([0, 0, 3_000 * YUAN, 0, 0], np.int64)
    cat_essential = np.zeros(5, np.int8)
    code = np.array([0, 1, 2, 3, 4], np.int32)
    qty = np.ones(5, np.int64)
    price = np.array([20_000, 10_000, 3_500, 5_000, 21_500], np.int64) * YUAN
    out = np.full((N_ITEM, 1), -1, np.int64)
    itemize(np.array([0, 5], np.int64), code, qty, price, qty * price, cat_class, cat_prepay,
            cat_ceiling, cat_essential, out)
    assert out[:, 0].tolist() == [60_000 * YUAN, 5_000 * YUAN, 500 * YUAN, 1_000 * YUAN,
                                  53_500 * YUAN, 0]


def test_itemize_quantities_unknown_codes_essential_and_empty_visits():
    cat_class = np.array([1, 0, 2], np.int8)
    cat_prepay = np.array([1500, 0, 0], np.int64)
    cat_ceiling = np.array([900, 0, 0], np.int64)
    cat_essential = np.array([1, 1, 0], np.int8)
    code = np.array([0, -1, 1, 2], np.int32)
    qty = np.array([3, 2, 5, 1], np.int64)
    price = np.array([1000, 777, 333, 50], np.int64)
    offsets = np.array([0, 0, 2, 4], np.int64)          # visit 0 has no lines
    out = np.full((N_ITEM, 3), -1, np.int64)
    itemize(offsets, code, qty, price, qty * price, cat_class, cat_prepay, cat_ceiling,
            cat_essential, out)
    assert out[:, 0].tolist() == [0] * N_ITEM
    # visit 1: class B 3 x 10.00 over ceiling 9.00: overlmt 3.00, allowed 27.00, pre rh(2700*1500)=405;
    # unknown code 2 x 7.77 self-paid
    assert out[:, 1].tolist() == [3000 + 1554, 1554, 300, 405, 2700 - 405, 2700 - 405]
    # visit 2: class A essential 5 x 3.33, class C 0.50
    assert out[:, 2].tolist() == [1665 + 50, 50, 0, 0, 1665, 1665]


def test_itemize_rounds_prepay_half_up_and_accepts_read_only_inputs():
    code = np.array([0, 0], np.int32)
    qty = np.array([1, 1], np.int64)
    price = np.array([5, 15], np.int64)                    # 5 * 1000 bp = 0.5 -> 1; 15 -> 1.5 -> 2
    arrays = [np.array([0, 1, 2], np.int64), code, qty, price, qty * price, np.array([1], np.int8),
              np.array([1000], np.int64), np.array([0], np.int64), np.array([0], np.int8)]
    for a in arrays:
        a.setflags(write=False)
    out = np.zeros((N_ITEM, 2), np.int64)
    itemize(*arrays, out)
    assert out[K["I_PRESELFPAY"]].tolist() == [1, 2]
    assert out[K["I_INSCP"]].tolist() == [4, 13]


def test_itemize_random_matches_line_by_line_definition():
    rng = np.random.default_rng(7)
    k, m, n = 50, 5000, 700
    cat_class = rng.integers(0, 3, k).astype(np.int8)
    cat_prepay = rng.integers(0, 3000, k)
    cat_ceiling = np.where(rng.random(k) < 0.4, rng.integers(1, 5000, k), 0)
    cat_essential = (rng.random(k) < 0.3).astype(np.int8)
    code = rng.integers(-1, k, m).astype(np.int32)
    qty = rng.integers(1, 20, m)
    price = rng.integers(1, 8000, m)
    offsets = np.sort(np.concatenate([[0, m], rng.integers(0, m, n - 1)])).astype(np.int64)
    out = np.zeros((N_ITEM, n), np.int64)
    itemize(offsets, code, qty, price, qty * price, cat_class, cat_prepay, cat_ceiling,
            cat_essential, out)
    expect = np.zeros((N_ITEM, n), np.int64)
    for i in range(n):
        for j in range(offsets[i], offsets[i + 1]):
            c, q, p = code[j], int(qty[j]), int(price[j])
            a = q * p
            expect[0, i] += a
            if c < 0 or cat_class[c] == 2:
                expect[1, i] += a
                continue
            allowed = a
            if cat_ceiling[c] > 0 and p > cat_ceiling[c]:
                expect[2, i] += (p - int(cat_ceiling[c])) * q
                allowed = int(cat_ceiling[c]) * q
            pre = (allowed * int(cat_prepay[c]) + 5000) // 10000 if cat_class[c] == 1 else 0
            expect[3, i] += pre
            expect[4, i] += allowed - pre
            if cat_essential[c]:
                expect[5, i] += allowed - pre
    assert (out == expect).all()
    assert (out[0] == out[1] + out[2] + out[3] + out[4]).all()


def test_itemize_shape_errors():
    z8, z32, z64 = np.zeros(2, np.int8), np.zeros(2, np.int32), np.zeros(2, np.int64)
    good = [np.array([0, 2], np.int64), z32, z64, z64, z64, z8, z64, z64, z8]
    itemize(*good, np.zeros((N_ITEM, 1), np.int64))
    with pytest.raises(ValueError, match="out"):
        itemize(*good, np.zeros((N_ITEM, 2), np.int64))
    with pytest.raises(ValueError, match="line columns"):
        itemize(*good[:2], np.zeros(3, np.int64), *good[3:], np.zeros((N_ITEM, 1), np.int64))
    with pytest.raises(ValueError, match="catalogue"):
        itemize(*good[:6], np.zeros(1, np.int64), *good[7:], np.zeros((N_ITEM, 1), np.int64))
    with pytest.raises(ValueError, match="line_offsets"):
        itemize(np.array([0, 3], np.int64), *good[1:], np.zeros((N_ITEM, 1), np.int64))


def test_itemize_one_is_itemize_of_one_visit():
    """The real-time path's entry (Python lists in, a list out) gives each visit's column of
    itemize() over the same lines: random catalogues, unknown codes, empty visits, no catalogue."""
    rng = np.random.default_rng(11)
    for k in (0, 1, 40):
        cat_class = rng.integers(0, 3, k).astype(np.int8)
        cat_prepay = rng.integers(0, 3000, k)
        cat_ceiling = np.where(rng.random(k) < 0.4, rng.integers(1, 5000, k), 0)
        cat_essential = (rng.random(k) < 0.3).astype(np.int8)
        for _ in range(200):
            m = int(rng.integers(0, 12))
            code = rng.integers(-1, k, m).astype(np.int32) if k else np.full(m, -1, np.int32)
            qty, price = rng.integers(0, 20, m), rng.integers(0, 8000, m)
            out = np.zeros((N_ITEM, 1), np.int64)
            itemize(np.array([0, m], np.int64), code, qty, price, qty * price, cat_class, cat_prepay,
                    cat_ceiling, cat_essential, out)
            one = itemize_one(code.tolist(), qty.tolist(), price.tolist(), (qty * price).tolist(),
                              cat_class, cat_prepay, cat_ceiling, cat_essential)
            assert one == out[:, 0].tolist()
    cat = (np.zeros(2, np.int8), np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int8))
    with pytest.raises(ValueError, match="line columns"):
        itemize_one([0, 1], [1], [1, 1], [1, 1], *cat)
    with pytest.raises(ValueError, match="catalogue"):
        itemize_one([0], [1], [1], [1], cat[0], np.zeros(3, np.int64), *cat[2:])
    with pytest.raises(ValueError, match="code: line 2 is 2"):
        itemize_one([0, 2], [1, 1], [1, 1], [1, 1], *cat)


# ---------------------------------------------------------------- settle (steps 2-11)

def test_examples_a_and_b_share_the_accumulator_row(pack):
    rows = [
        dict(rule="county", fulamt=5_000 * YUAN, overlmt=500 * YUAN, preselfpay=1_000 * YUAN,
             inscp=53_500 * YUAN),
        dict(rule="city", group="I21", inscp=80_000 * YUAN),
    ]
    out, status, flags, acc, _ = run(pack, rows)
    assert status.tolist() == [0, 0]
    # A
    assert col(out, "act_pay_dedc", 0) == 300 * YUAN
    assert col(out, "hifp_pay", 0) == 45_220 * YUAN
    assert col(out, "pool_prop_selfpay", 0) == 8500
    assert col(out, "hifmi_pay", 0) == 4_140 * YUAN
    assert col(out, "fund_pay_sumamt", 0) == 49_360 * YUAN
    assert col(out, "psn_part_amt", 0) == 10_640 * YUAN
    assert col(out, "hifp_lmt", 0) == RURAL_CAP
    assert col(out, "hifmi_lmt", 0) == 250_000 * YUAN
    assert has(flags, 0, "F_MI_TRIGGERED") and not has(flags, 0, "F_HIFP_CAPPED")
    # B: floor 70% over the city's 65%, basic capped at what A left
    assert col(out, "act_pay_dedc", 1) == 800 * YUAN
    assert col(out, "pool_prop_selfpay", 1) == 7000
    assert col(out, "hifp_lmt", 1) == 8_156 * YUAN
    assert col(out, "hifp_pay", 1) == 8_156 * YUAN
    assert col(out, "hifmi_pay", 1) == 4_010_640
    assert col(out, "psn_part_amt", 1) == 3_173_760
    assert has(flags, 1, "F_FLOOR") and has(flags, 1, "F_HIFP_CAPPED")
    assert acc[0, K["A_HIFP_INP"]] == RURAL_CAP
    assert acc[0, K["A_ADMISSIONS"]] == 2
    assert acc[0, K["A_DED_PAID_INP"]] == 1_100 * YUAN and acc[0, K["A_DED_PAID_OUT"]] == 0
    assert acc[0, K["A_HIFMI"]] == 414_000 + 4_010_640
    assert acc[0, K["A_ELIG_INP"]] == (53_200 + 79_200) * YUAN
    check_identities(out)


def test_example_c_serious_illness_cap_abolished_from_august(pack):
    rows = [dict(rule="city", group="C34", inscp=600_000 * YUAN),
            dict(rule="city", group="C34", inscp=20_000 * YUAN),
            dict(rule="city_from_aug", group="C34", inscp=20_000 * YUAN)]
    out, status, flags, acc, _ = run(pack, rows)
    assert col(out, "hifp_pay").tolist() == [RURAL_CAP, 0, 0]
    assert col(out, "hifmi_pay").tolist() == [250_000 * YUAN, 0, 10_000 * YUAN]
    assert col(out, "psn_part_amt").tolist() == [296_624 * YUAN, 20_000 * YUAN, 10_000 * YUAN]
    assert col(out, "hifmi_lmt").tolist() == [250_000 * YUAN, 0, -1]
    assert has(flags, 0, "F_MI_CAPPED") and has(flags, 1, "F_MI_CAPPED")
    # without the cap C1 would have had the full bands
    out2, *_ = run(pack, [dict(rule="city_from_aug", group="C34", inscp=600_000 * YUAN)])
    assert col(out2, "hifmi_pay", 0) == 36_963_680
    check_identities(out)


def test_example_d_outpatient_pool_year_origin(pack):
    rows = [dict(rule="resident_outpatient", inscp=y * YUAN) for y in (30, 100, 400, 80)]
    out, status, flags, acc, _ = run(pack, rows)
    assert col(out, "hifp_pay").tolist() == [0, 40 * YUAN, 160 * YUAN, 0]
    assert col(out, "act_pay_dedc").tolist() == [0, 0, 0, 0]
    assert all(has(flags, i, "F_BANDED") for i in range(4))
    # the outpatient pool is its own accumulator; no admissions counted
    assert acc[0, K["A_ELIG_OUT"]] == 610 * YUAN and acc[0, K["A_HIFP_OUT"]] == 200 * YUAN
    assert acc[0, K["A_ELIG_INP"]] == 0 and acc[0, K["A_HIFP_INP"]] == 0
    assert acc[0, K["A_ADMISSIONS"]] == 0
    assert col(out, "hifp_lmt").tolist() == [-1] * 4
    check_identities(out)


def test_example_e_retired_employee_large_amount_and_account(pack):
    rows = [dict(rule="employee_l3", cats=RETIRED, inscp=150_000 * YUAN, acct_used=1)]
    balance = np.array([2_000 * YUAN, 0, 0, 0], np.int64)
    out, status, flags, acc, balance = run(pack, rows, balance=balance)
    assert col(out, "pool_prop_selfpay", 0) == 9000
    assert col(out, "hifp_pay", 0) == 120_000 * YUAN
    assert col(out, "hifob_pay", 0) == 14_100 * YUAN
    assert col(out, "psn_part_amt", 0) == 15_900 * YUAN
    assert col(out, "acct_pay", 0) == 2_000 * YUAN
    assert col(out, "psn_cash_pay", 0) == 13_900 * YUAN
    assert col(out, "balc", 0) == 0 and balance[0] == 0
    assert col(out, "hifob_lmt", 0) == 200_000 * YUAN
    assert acc[0, K["A_HIFOB"]] == 14_100 * YUAN
    for f in ("F_HIFP_CAPPED", "F_HIFOB", "F_ACCT"):
        assert has(flags, 0, f), f
    assert not has(flags, 0, "F_HIFOB_CAPPED")
    check_identities(out)


def test_example_f_low_income_waiver_and_assistance(pack):
    out, status, flags, acc, _ = run(pack, [dict(rule="county", cats=LOW_INCOME, inscp=20_000 * YUAN)])
    assert col(out, "act_pay_dedc", 0) == 0 and has(flags, 0, "F_DED_WAIVED")
    assert col(out, "hifp_pay", 0) == 17_000 * YUAN
    assert col(out, "hifmi_pay", 0) == 1_500 * YUAN
    assert col(out, "maf_pay", 0) == 750 * YUAN
    assert col(out, "psn_part_amt", 0) == 750 * YUAN
    assert col(out, "maf_lmt", 0) == 30_000 * YUAN
    assert acc[0, K["A_MAF"]] == 750 * YUAN
    check_identities(out)


def test_examples_h_and_i_quota_modes(pack):
    rows = [dict(rule="county", group="K35", inscp=7_200 * YUAN, acc_slot=0),
            dict(rule="county", group="K35", inscp=5_000 * YUAN, acc_slot=1),
            dict(rule="county", group="F20", inscp=5_400 * YUAN, bed_days=30, acc_slot=2)]
    out, status, flags, acc, _ = run(pack, rows)
    assert col(out, "hifp_pay").tolist() == [5_100 * YUAN, 4_250 * YUAN, 4_050 * YUAN]
    assert col(out, "psn_part_amt").tolist() == [900 * YUAN, 750 * YUAN, 450 * YUAN]
    assert col(out, "hosp_part_amt").tolist() == [1_200 * YUAN, 0, 900 * YUAN]
    assert col(out, "act_pay_dedc").tolist() == [0, 0, 0]
    assert col(out, "pool_prop_selfpay").tolist() == [8500, 8500, 9000]
    assert has(flags, 0, "F_QUOTA") and has(flags, 2, "F_BEDDAY")
    # quota visits count against the basic fund's cap and as admissions
    assert acc[0, K["A_HIFP_INP"]] == 5_100 * YUAN and acc[0, K["A_ELIG_INP"]] == 6_000 * YUAN
    assert acc[:3, K["A_ADMISSIONS"]].tolist() == [1, 1, 1]
    check_identities(out)


def test_excluded_cause_self_pays_and_touches_no_accumulator(pack):
    acc = np.zeros((4, N_ACC), np.int64)
    acc[0, K["A_HIFP_INP"]] = 1234
    before = acc.copy()
    out, status, flags, acc, _ = run(pack, [dict(rule="county", cause=CAUSE_TRAFFIC,
                                                 inscp=20_000 * YUAN, fulamt=100)], acc=acc)
    assert status[0] == K["S_EXCLUDED"]
    assert col(out, "fund_pay_sumamt", 0) == 0 and col(out, "act_pay_dedc", 0) == 0
    assert col(out, "psn_part_amt", 0) == 20_000 * YUAN + 100
    assert col(out, "hosp_part_amt", 0) == 0
    assert (acc == before).all()
    check_identities(out)


def test_excluded_cause_may_still_pay_from_the_account(pack):
    pk = pack.rules.copy()
    pk[pack.rule_index["employee_l3"], K["R_EXCLUDED_CAUSES"]] = 1 << CAUSE_TRAFFIC
    tables = Tables.__new__(Tables)
    tables.__dict__.update(pack.__dict__, rules=pk)
    balance = np.array([500, 0, 0, 0], np.int64)
    out, status, flags, acc, balance = run(
        tables, [dict(rule="employee_l3", cause=CAUSE_TRAFFIC, inscp=2_000, acct_used=1)],
        balance=balance)
    assert status[0] == K["S_EXCLUDED"]
    assert col(out, "acct_pay", 0) == 500 and col(out, "psn_cash_pay", 0) == 1_500
    assert balance[0] == 0 and not acc.any()


def test_not_covered(pack):
    pk = pack.rules.copy()
    pk[pack.rule_index["county"], K["R_COVERED"]] = 0
    tables = Tables.__new__(Tables)
    tables.__dict__.update(pack.__dict__, rules=pk)
    out, status, flags, acc, _ = run(tables, [dict(rule="county", inscp=20_000 * YUAN)])
    assert status[0] == K["S_NOT_COVERED"]
    assert col(out, "fund_pay_sumamt", 0) == 0 and col(out, "psn_part_amt", 0) == 20_000 * YUAN
    assert not acc.any()


def test_pending_cause_refused_in_settle_provisional_in_presettle(pack):
    rows = [dict(rule="employee_l3", cause=CAUSE_PENDING, inscp=150_000 * YUAN, acct_used=1),
            dict(rule="employee_l3", inscp=10_000 * YUAN, acct_used=1)]
    acc = np.zeros((4, N_ACC), np.int64)
    acc[0, K["A_HIFP_INP"]] = 5_000 * YUAN
    balance = np.array([2_000 * YUAN, 0, 0, 0], np.int64)
    out, status, flags, acc1, bal1 = run(pack, rows, acc=acc.copy(), balance=balance.copy(), mode=SETTLE)
    assert status.tolist() == [K["S_REFUSED"], K["S_OK"]]
    assert col(out, "fund_pay_sumamt", 0) == 0 and col(out, "acct_pay", 0) == 0
    assert col(out, "psn_part_amt", 0) == col(out, "psn_cash_pay", 0) == 150_000 * YUAN
    assert col(out, "balc", 0) == 2_000 * YUAN
    # the second visit sees the accumulators as if the refused one never happened
    _, _, _, acc_alone, bal_alone = run(pack, rows[1:], acc=acc.copy(), balance=balance.copy())
    assert (acc1 == acc_alone).all() and (bal1 == bal_alone).all()
    check_identities(out)

    out, status, flags, acc2, bal2 = run(pack, rows, acc=acc.copy(), balance=balance.copy(),
                                         mode=PRESETTLE)
    assert status.tolist() == [K["S_PROVISIONAL"], K["S_OK"]]
    # computed as if the cause were none: 90% of 149,000 within the cap left (115,000)
    assert col(out, "hifp_pay", 0) == 115_000 * YUAN
    assert col(out, "acct_pay", 0) == 2_000 * YUAN
    assert acc2[0, K["A_HIFP_INP"]] == 120_000 * YUAN
    check_identities(out)


def test_deductible_nth_admission_once_a_year_and_essential_order():
    rules = {"r": rule_row(R_COUNTS_ADMISSION=1, R_DED_AMOUNT=1000, R_DED_NTH_1=10000,
                           R_DED_NTH_2=5000, R_DED_NTH_3=0, R_BASE_RATIO=5000, R_ESS_UPLIFT=1500),
             "annual": rule_row(R_DED_KIND=1, R_DED_AMOUNT=1000, R_BASE_RATIO=5000)}
    groups = {"psych": {"r": dis_row(D_DED_ONCE_A_YEAR=1)}}     # the group's bit: 1
    t = Tables(rules, groups, [])
    out, status, flags, acc, _ = run(t, [dict(rule="r", inscp=3000, ess=2500)] * 4
                                     + [dict(rule="r", group="psych", inscp=3000, acc_slot=1)] * 2
                                     + [dict(rule="annual", inscp=600, acc_slot=2)] * 2)
    assert col(out, "act_pay_dedc").tolist() == [1000, 500, 0, 0, 1000, 0, 600, 400]
    assert [has(flags, i, "F_DED_NTH") for i in range(4)] == [False, True, True, True]
    assert has(flags, 5, "F_DED_ONCE")
    # visit 0: deductible 1000 takes the 500 non-essential first, then 500 essential:
    # elig_non 0, elig_ess 2000 at 65% = 1300
    assert col(out, "hifp_pay", 0) == 1300 and has(flags, 0, "F_ESS_UPLIFT")
    # visit 1: ded 500 all non-essential: 0 * 50% + 2500 * 65% = 1625
    assert col(out, "hifp_pay", 1) == 1625
    assert acc[1, K["A_DED_ONCE"]] == 1 and acc[0, K["A_ADMISSIONS"]] == 4
    check_identities(out)


def test_ratio_adjustments_override_deny_and_cap_clamp():
    rules = {"r": rule_row(R_BASE_RATIO=8000, R_CAT_DELTA_0=500, R_CAT_DELTA_3=1000,
                           R_OA_FILED_DELTA=-1000, R_OA_UNFILED_DELTA=DENY, R_REFERRAL_REQUIRED=1,
                           R_NO_REFERRAL_DELTA=-2000, R_GM_RATIO=9000)}
    groups = {"uremia": {"r": dis_row(D_OVERRIDE=9000, D_FLOOR=7000)}}
    t = Tables(rules, groups, [])
    rows = [dict(rule="r", cats=1 | 8, referral=1, inscp=10000),                # 80+5+10 = 95%
            dict(rule="r", out_area=1, inscp=10000),                             # 80-10-20 = 50%
            dict(rule="r", group="uremia", out_area=1, inscp=10000),             # override 90%
            dict(rule="r", out_area=2, referral=1, inscp=10000),                 # denied
            dict(rule="r", cats=1 | 8, referral=1, inscp=10000, fulamt=90000)]   # GM top-up
    out, status, flags, acc, _ = run(t, rows)
    assert col(out, "pool_prop_selfpay").tolist() == [9500, 5000, 9000, 0, 9500]
    assert has(flags, 1, "F_OUT_AREA") and has(flags, 1, "F_NO_REFERRAL")
    assert has(flags, 2, "F_OVERRIDE") and not has(flags, 2, "F_FLOOR")
    assert has(flags, 3, "F_DENIED") and col(out, "hifp_pay", 3) == 0
    # guaranteed minimum: 90% of 10000 but at most T - hosp_part; denied visits get no top-up
    assert col(out, "hifp_pay", 0) == 9500 and has(flags, 0, "F_GM_TOPUP") is False
    assert not has(flags, 3, "F_GM_TOPUP")
    assert col(out, "hifp_pay", 4) == 90000 and has(flags, 4, "F_GM_TOPUP")
    check_identities(out)


def test_civil_servant_and_effective_ratio_and_annual_trigger():
    rules = {
        "cvl": rule_row(R_BASE_RATIO=8000, R_CVL_CATS=CIVIL_SERVANT, R_CVL_RATIO=5000, R_CVL_CAP=300),
        "eff": rule_row(R_BASE_RATIO=5000, R_MI_FORM=2, R_MI_THRESHOLD=1000, R_MI_EFF_RATIO=8000,
                        R_MI_EFF_CATS=LOW_INCOME, R_MI_EFF_CAT_RATIO=9000),
        "annual": rule_row(R_BASE_RATIO=5000, R_MI_FORM=1, R_MI_TRIGGER=1, R_MI_THRESHOLD=1000,
                           R_MI_BANDSET=0),
    }
    t = Tables(rules, {}, [band_row((0, 5000), (1000, 8000))])
    rows = [dict(rule="cvl", cats=CIVIL_SERVANT, inscp=1000, acc_slot=0),   # 200 left, 100 paid
            dict(rule="cvl", cats=CIVIL_SERVANT, inscp=3000, acc_slot=0),   # 600 left: 300, cap 200
            dict(rule="eff", inscp=2000, fulamt=2000, acc_slot=1),          # A = 3000 > 1000
            dict(rule="eff", cats=LOW_INCOME, inscp=2000, fulamt=2000, acc_slot=2),
            dict(rule="annual", inscp=1600, acc_slot=3),                    # base 800: below 1000
            dict(rule="annual", inscp=1600, acc_slot=3)]                    # [0, 600) above: 50%
    out, status, flags, acc, _ = run(t, rows)
    assert col(out, "cvlserv_pay").tolist()[:2] == [100, 200]
    assert has(flags, 1, "F_CVL_CAPPED") and col(out, "cvlserv_lmt", 1) == 200
    assert col(out, "hifmi_pay", 2) == 3200 - 1000 and has(flags, 2, "F_MI_EFFECTIVE")
    assert col(out, "hifmi_pay", 3) == 3600 - 1000
    assert col(out, "hifmi_pay").tolist()[4:] == [0, 300]
    assert acc[3, K["A_MI_BASE"]] == 1600
    check_identities(out)


def test_settle_shape_errors_and_read_only_inputs(pack):
    item, c = visits(pack, [dict(rule="county", inscp=100)])
    args = [pack.rules, pack.diseases, pack.bands, pack.n_groups, item, c["rule"], c["group"],
            c["cats"], c["cause"], c["out_area"], c["referral"], c["bed_days"], c["acct_used"],
            c["acc_slot"], c["psn_slot"]]
    for a in args:
        if isinstance(a, np.ndarray):
            a.setflags(write=False)
    acc, bal = np.zeros((1, N_ACC), np.int64), np.zeros(1, np.int64)
    out, st, fl = np.zeros((N_OUT, 1), np.int64), np.zeros(1, np.int8), np.zeros(1, np.int32)
    settle(*args, acc, bal, SETTLE, out, st, fl)
    assert col(out, "medfee_sumamt", 0) == 100
    with pytest.raises(ValueError, match="out"):
        settle(*args, acc, bal, SETTLE, np.zeros((N_OUT - 1, 1), np.int64), st, fl)
    with pytest.raises(ValueError, match="status"):
        settle(*args, acc, bal, SETTLE, out, np.zeros(2, np.int8), fl)
    with pytest.raises(ValueError, match="diseases"):
        settle(*args[:3], pack.n_groups + 1, *args[4:], acc, bal, SETTLE, out, st, fl)
    with pytest.raises(ValueError, match="mode"):
        settle(*args, acc, bal, 7, out, st, fl)
    with pytest.raises(ValueError):                       # wrong dtype
        settle(*args[:5], c["rule"].astype(np.int64), *args[6:], acc, bal, SETTLE, out, st, fl)
    settle(*args[:4], np.zeros((N_ITEM, 0), np.int64), *(a[:0] for a in args[5:]), acc, bal, SETTLE,
           np.zeros((N_OUT, 0), np.int64), st[:0], fl[:0])


def random_tables(rng, n_rules=12, n_groups=4, n_bandsets=3):
    rules = np.zeros((n_rules, N_RULE), np.int64)
    R = {name: i for i, name in enumerate(layout.RULE_COLS)}
    pick = lambda *xs: xs[rng.integers(len(xs))]
    for r in rules:
        r[R["R_COVERED"]] = rng.random() < 0.95
        r[R["R_POOL"]] = rng.integers(2)
        r[R["R_COUNTS_ADMISSION"]] = rng.integers(2)
        r[R["R_EXCLUDED_CAUSES"]] = 0b0110
        r[R["R_PENDING_CAUSES"]] = 0b1000
        r[R["R_DED_KIND"]] = rng.integers(2)
        r[R["R_DED_AMOUNT"]] = rng.integers(0, 200_000)
        for k in (1, 2, 3):
            r[R[f"R_DED_NTH_{k}"]] = pick(10000, 5000, 0)
        r[R["R_DED_WAIVED_CATS"]] = rng.integers(0, 16)
        r[R["R_BASE_RATIO"]] = rng.integers(3000, 10001)
        for k in range(8):
            r[R[f"R_CAT_DELTA_{k}"]] = pick(0, 500, -300)
        r[R["R_ESS_UPLIFT"]] = pick(0, 1500)
        r[R["R_OA_FILED_DELTA"]] = pick(0, -1000, DENY)
        r[R["R_OA_UNFILED_DELTA"]] = pick(-2000, DENY)
        r[R["R_REFERRAL_REQUIRED"]] = rng.integers(2)
        r[R["R_NO_REFERRAL_DELTA"]] = pick(-1000, DENY)
        r[R["R_BANDSET"]] = pick(-1, -1, rng.integers(n_bandsets))
        r[R["R_BAND_ORIGIN"]] = rng.integers(2)
        r[R["R_CAP"]] = pick(-1, rng.integers(100_000, 5_000_000))
        r[R["R_OB_RATIO"]] = pick(0, 9000)
        r[R["R_OB_CAP"]] = pick(-1, rng.integers(0, 3_000_000))
        r[R["R_MI_FORM"]] = rng.integers(3)
        r[R["R_MI_TRIGGER"]] = rng.integers(2)
        r[R["R_MI_THRESHOLD"]] = rng.integers(0, 1_000_000)
        r[R["R_MI_BASE"]] = rng.integers(2)
        r[R["R_MI_BANDSET"]] = rng.integers(n_bandsets)
        r[R["R_MI_CAP"]] = pick(-1, rng.integers(0, 3_000_000))
        r[R["R_MI_EFF_RATIO"]] = rng.integers(5000, 9500)
        r[R["R_MI_EFF_CATS"]] = rng.integers(0, 16)
        r[R["R_MI_EFF_CAT_RATIO"]] = rng.integers(5000, 10001)
        r[R["R_CVL_CATS"]] = rng.integers(0, 16)
        r[R["R_CVL_RATIO"]] = rng.integers(0, 10001)
        r[R["R_CVL_CAP"]] = pick(-1, rng.integers(0, 1_000_000))
        r[R["R_MAF_CATS"]] = rng.integers(0, 16)
        r[R["R_MAF_RATIO"]] = rng.integers(0, 10001)
        r[R["R_MAF_DED"]] = rng.integers(0, 50_000)
        r[R["R_MAF_CAP"]] = pick(-1, rng.integers(0, 1_000_000))
        r[R["R_GM_RATIO"]] = pick(0, 0, 3500)
        r[R["R_ACCT"]] = rng.integers(2)
    diseases = np.zeros((n_rules * n_groups, N_DIS), np.int64)
    D = {name: i for i, name in enumerate(layout.DISEASE_COLS)}
    for j, d in enumerate(diseases):
        if j % n_groups == 0:
            continue                                         # group 0 is "no group"
        d[D["D_FLOOR"]] = pick(0, 7000)
        d[D["D_OVERRIDE"]] = pick(0, 0, 9000)
        d[D["D_DED_ONCE_A_YEAR"]] = pick(0, 1, 4)             # no once-a-year rule, or the group's bit
        d[D["D_QUOTA_MODE"]] = pick(0, 0, 1, 2)
        d[D["D_QUOTA_AMOUNT"]] = rng.integers(1000, 800_000)
        d[D["D_QUOTA_RATIO"]] = pick(0, 8500)
        d[D["D_QUOTA_DED"]] = pick(0, 10_000)
    bands = np.array([band_row(*zip(np.concatenate([[0], np.sort(rng.choice(2_000_000, nb - 1,
                                                                             replace=False))]),
                                     rng.integers(0, 10001, nb)))
                      for nb in rng.integers(1, BAND_MAX + 1, n_bandsets)], np.int64)
    return rules, diseases, bands, n_groups


@pytest.mark.parametrize("mode", [SETTLE, PRESETTLE])
def test_identities_and_caps_hold_on_a_randomized_run(mode):
    rng = np.random.default_rng(20240601 + mode)
    rules, diseases, bands, n_groups = random_tables(rng)
    n, n_slots, n_psn = 20_000, 300, 200
    item = np.zeros((N_ITEM, n), np.int64)
    item[1:5] = rng.integers(0, 2_000_000, (4, n)) * (rng.random((4, n)) < 0.7)
    item[5] = (item[4] * rng.random(n) * (rng.random(n) < 0.5)).astype(np.int64)
    item[0] = item[1:5].sum(axis=0)
    rule = rng.integers(0, len(rules), n).astype(np.int32)
    group = rng.integers(0, n_groups, n).astype(np.int16)
    cats = rng.integers(0, 1 << 8, n).astype(np.int16)
    cause = rng.choice([0, 0, 0, 0, 1, 2, 3], n).astype(np.int8)
    out_area = rng.choice([0, 0, 1, 2], n).astype(np.int8)
    referral = rng.integers(0, 2, n).astype(np.int8)
    bed_days = rng.integers(0, 60, n).astype(np.int32)
    acct_used = rng.integers(0, 2, n).astype(np.int8)
    acc_slot = np.sort(rng.integers(0, n_slots, n)).astype(np.int32)
    psn_slot = (acc_slot % n_psn).astype(np.int32)
    acc = np.zeros((n_slots, N_ACC), np.int64)
    balance = rng.integers(0, 500_000, n_psn)
    balance0 = balance.copy()
    out = np.full((N_OUT, n), -999, np.int64)
    status = np.full(n, -1, np.int8)
    flags = np.full(n, -1, np.int32)
    settle(rules, diseases, bands, n_groups, item, rule, group, cats, cause, out_area, referral,
           bed_days, acct_used, acc_slot, psn_slot, acc, balance, mode, out, status, flags)
    check_identities(out)
    assert (out[:5] == item[:5]).all()
    assert set(np.unique(status).tolist()) <= set(layout.STATUS.values())
    refused = status == K["S_REFUSED"]
    assert refused.any() == (mode == SETTLE)
    assert (col(out, "psn_cash_pay")[refused] == item[0][refused]).all()
    assert (col(out, "fund_pay_sumamt")[status == K["S_EXCLUDED"]] == 0).all()
    # the accumulators hold exactly what the settled visits paid, slot by slot
    settled = ~refused & np.isin(status, [K["S_OK"], K["S_PROVISIONAL"]])
    for name, column in (("A_HIFOB", "hifob_pay"), ("A_HIFMI", "hifmi_pay"), ("A_CVL", "cvlserv_pay"),
                         ("A_MAF", "maf_pay")):
        expect = np.bincount(acc_slot[settled], col(out, column)[settled], minlength=n_slots)
        assert (acc[:, K[name]] == expect).all(), name
    pool = rules[rule, K["R_POOL"]]
    for p, name, column in ((0, "A_HIFP_INP", "hifp_pay"), (1, "A_HIFP_OUT", "hifp_pay"),
                            (0, "A_DED_PAID_INP", "act_pay_dedc"), (1, "A_DED_PAID_OUT", "act_pay_dedc")):
        sel = settled & (pool == p)
        expect = np.bincount(acc_slot[sel], col(out, column)[sel], minlength=n_slots)
        assert (acc[:, K[name]] == expect).all(), name
    spent = np.bincount(psn_slot, col(out, "acct_pay"), minlength=n_psn)
    assert (balance == balance0 - spent).all()


@pytest.mark.parametrize("mode", [SETTLE, PRESETTLE])
def test_settle_one_is_settle_of_a_batch_of_one(mode):
    """The real-time entry (Python ints in and out) gives settle()'s result for each visit, carrying
    the person's totals and balance from visit to visit as settle() does in one batch."""
    rng = np.random.default_rng(7 + mode)
    rules, diseases, bands, n_groups = random_tables(rng)
    n = 400
    item = np.zeros((N_ITEM, n), np.int64)
    item[1:5] = rng.integers(0, 2_000_000, (4, n)) * (rng.random((4, n)) < 0.7)
    item[5] = (item[4] * rng.random(n) * (rng.random(n) < 0.5)).astype(np.int64)
    item[0] = item[1:5].sum(axis=0)
    cols = dict(rule=rng.integers(0, len(rules), n).astype(np.int32),
                group=rng.integers(0, n_groups, n).astype(np.int16),
                cats=rng.integers(0, 1 << 8, n).astype(np.int16),
                cause=rng.choice([0, 0, 0, 1, 2, 3], n).astype(np.int8),
                out_area=rng.choice([0, 0, 1, 2], n).astype(np.int8),
                referral=rng.integers(0, 2, n).astype(np.int8),
                bed_days=rng.integers(0, 60, n).astype(np.int32),
                acct_used=rng.integers(0, 2, n).astype(np.int8))
    zero = np.zeros(n, np.int32)                 # one person: every visit reads the last one's totals
    acc, balance = np.zeros((1, N_ACC), np.int64), np.array([3_000_000], np.int64)
    out, status, flags = np.zeros((N_OUT, n), np.int64), np.zeros(n, np.int8), np.zeros(n, np.int32)
    settle(rules, diseases, bands, n_groups, item, *cols.values(), zero, zero, acc, balance, mode, out,
           status, flags)
    one_acc, one_balance = [0] * N_ACC, 3_000_000
    for i in range(n):
        got = settle_one(rules, diseases, bands, n_groups, item[:, i].tolist(),
                         *(int(c[i]) for c in cols.values()), one_acc, one_balance, mode)
        assert got[0] == out[:, i].tolist() and (got[1], got[2]) == (status[i], flags[i]), i
        one_acc, one_balance = got[3], got[4]
    assert one_acc == acc[0].tolist() and one_balance == balance[0]
    assert (status == K["S_REFUSED"]).any() == (mode == SETTLE)    # the refusal path is in the run

    args = [rules, diseases, bands, n_groups, item[:, 0].tolist(), 0, 0, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="rule"):
        settle_one(*args[:5], len(rules), *args[6:], [0] * N_ACC, 0, mode)
    with pytest.raises(ValueError, match="group"):
        settle_one(*args[:6], n_groups, *args[7:], [0] * N_ACC, 0, mode)
    with pytest.raises(ValueError, match="item"):
        settle_one(*args[:4], [0] * (N_ITEM - 1), *args[5:], [0] * N_ACC, 0, mode)
    with pytest.raises(ValueError, match="acc"):
        settle_one(*args, [0] * (N_ACC + 1), 0, mode)
    with pytest.raises(ValueError, match="mode"):
        settle_one(*args, [0] * N_ACC, 0, 7)
