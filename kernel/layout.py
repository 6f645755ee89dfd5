"""Layout of the compiled policy tables, the accumulators and the kernel's outputs.

This file is the single source of truth shared by the policy compiler (``kernel/compile.py``) and
the Cython kernel (``pyx/``): ``setup.py`` turns it into ``pyx/layout.pxi`` (``cdef enum``
constants) at build time, so a column index is written in one place only. It must stay plain
Python with no imports from the package, because ``setup.py`` executes it before anything is built.

Every table is int64. Money is fen, ratios are basis points (bp, 1/10000), "none" is -1 where noted.
See docs/design.md for what each column means in the chain.
"""

# One row per (policy version, med_type, level): rule = (version * n_med_types + med_type) * n_levels + level.
RULE_COLS = [
    "R_COVERED",            # 1 if the version settles this med_type at all, else every fund pays 0
    "R_POOL",               # basic-fund accumulator: 0 inpatient pool, 1 outpatient pool (门诊统筹)
    "R_COUNTS_ADMISSION",   # 1 if a visit of this med_type is an admission (counts for nth-admission)
    "R_EXCLUDED_CAUSES",    # bitmask over injury-cause indices: whole visit self-paid (step 2)
    "R_PENDING_CAUSES",     # bitmask over injury-cause indices: refused by Settle, provisional in PreSettle
    # step 4, deductible (起付线)
    "R_DED_KIND",           # 0 per admission, 1 annual
    "R_DED_AMOUNT",         # fen
    "R_DED_NTH_1",          # bp of R_DED_AMOUNT charged on the 1st admission of the year
    "R_DED_NTH_2",          # ... on the 2nd
    "R_DED_NTH_3",          # ... on the 3rd and later
    "R_DED_WAIVED_CATS",    # bitmask over categories whose deductible is waived
    # step 5, basic pooled fund (统筹基金)
    "R_BASE_RATIO",         # bp; ignored when R_BANDSET >= 0
    "R_CAT_DELTA_0",        # bp added to the ratio when category bit 0 is set (e.g. retired +500)
    "R_CAT_DELTA_1",
    "R_CAT_DELTA_2",
    "R_CAT_DELTA_3",
    "R_CAT_DELTA_4",
    "R_CAT_DELTA_5",
    "R_CAT_DELTA_6",
    "R_CAT_DELTA_7",
    "R_ESS_UPLIFT",         # bp added on the essential-drug part of the eligible amount (never with bands)
    "R_OA_FILED_DELTA",     # bp added when treated out of area with filing; DENY = fund pays 0
    "R_OA_UNFILED_DELTA",   # bp added when treated out of area without filing; DENY = fund pays 0
    "R_REFERRAL_REQUIRED",  # 1 if this level needs a referral
    "R_NO_REFERRAL_DELTA",  # bp added when a required referral is missing; DENY = fund pays 0
    "R_BANDSET",            # row of BANDS giving rates by amount, or -1
    "R_BAND_ORIGIN",        # 0 bands measured on this visit's eligible amount, 1 on the year's cumulative
    "R_CAP",                # basic annual cap of the pool in fen, -1 none
    # step 6, large-amount subsidy (大额医疗补助)
    "R_OB_RATIO",           # bp, 0 = layer off
    "R_OB_CAP",             # fen, -1 none
    # step 7, serious-illness layer (大病保险)
    "R_MI_FORM",            # 0 off, 1 bands, 2 effective ratio
    "R_MI_TRIGGER",         # 0 per admission (medfee_sumamt > threshold), 1 annual (cumulative base > threshold)
    "R_MI_THRESHOLD",       # fen
    "R_MI_BASE",            # 0 in-scope self-pay after steps 5-6, 1 all self-pay after steps 5-6
    "R_MI_BANDSET",         # row of BANDS (form 1)
    "R_MI_CAP",             # fen, -1 none
    "R_MI_EFF_RATIO",       # bp of medfee_sumamt all funds reach (form 2)
    "R_MI_EFF_CATS",        # bitmask of categories using R_MI_EFF_CAT_RATIO instead
    "R_MI_EFF_CAT_RATIO",   # bp
    # step 8, civil-servant subsidy (公务员医疗补助)
    "R_CVL_CATS",           # bitmask of categories eligible, 0 = layer off
    "R_CVL_RATIO",          # bp
    "R_CVL_CAP",            # fen, -1 none
    # step 9, medical assistance (医疗救助)
    "R_MAF_CATS",           # bitmask of categories eligible, 0 = layer off
    "R_MAF_RATIO",          # bp
    "R_MAF_DED",            # fen, per visit
    "R_MAF_CAP",            # fen, -1 none
    # step 10, guaranteed minimum (兜底)
    "R_GM_RATIO",           # bp of medfee_sumamt all funds pay at least, 0 = off
    # step 11, personal account (个人账户)
    "R_ACCT",               # 1 if the scheme has personal accounts
]

# One row per (rule, disease group): row = rule * n_groups + group; group 0 is "no group".
DISEASE_COLS = [
    "D_FLOOR",              # bp, the ratio is not below this (0 = none)
    "D_OVERRIDE",           # bp, the ratio is exactly this (0 = none); wins over the floor
    "D_DED_ONCE_A_YEAR",    # the group's bit in A_DED_ONCE (0 = none): one deductible a year in this group
    "D_QUOTA_MODE",         # 0 fee-for-item, 1 single-disease quota (单病种定额), 2 per bed-day (按床日)
    "D_QUOTA_AMOUNT",       # fen: the quota (mode 1) or the daily rate (mode 2)
    "D_QUOTA_RATIO",        # bp, 0 = use the ratio of step 5
    "D_QUOTA_DED",          # fen deductible in quota mode (0 unless the pack sets one)
]

# Bands: row = bandset; BAND_MAX pairs (lower edge fen, rate bp); unused pairs have lower edge BAND_UNUSED.
BAND_MAX = 8
BAND_UNUSED = 2**62

DENY = -100000              # a ratio delta meaning "the basic fund pays nothing"

# Per (person, scheme, year) accumulators, one row per slot. A pool's column pair is _INP then _OUT:
# the kernel reads the visit's pool as A_*_INP + pool (R_POOL: 0 inpatient, 1 outpatient).
ACC_COLS = [
    "A_DED_PAID_INP",       # deductible paid this year, inpatient pool
    "A_DED_PAID_OUT",       # deductible paid this year, outpatient pool
    "A_ADMISSIONS",         # admissions this year
    "A_DED_ONCE",           # bitmask: once-a-year-deductible groups (D_DED_ONCE_A_YEAR) admitted this year
    "A_HIFP_INP",           # basic fund paid, inpatient pool
    "A_HIFP_OUT",           # basic fund paid, outpatient pool
    "A_ELIG_INP",           # eligible amount (in scope after deductible), inpatient pool
    "A_ELIG_OUT",           # eligible amount, outpatient pool
    "A_HIFOB",              # large-amount subsidy paid
    "A_MI_BASE",            # serious-illness base accumulated
    "A_HIFMI",              # serious-illness paid
    "A_CVL",                # civil-servant subsidy paid
    "A_MAF",                # medical assistance paid
]

for _name in ACC_COLS:           # the pool pairs the kernel indexes as A_*_INP + pool
    assert not _name.endswith("_INP") or ACC_COLS[ACC_COLS.index(_name) + 1] == _name[:-4] + "_OUT", _name
del _name

# Most disease groups a pack may mark deductible_once_a_year: each is a bit of A_DED_ONCE (int64).
MAX_ONCE_A_YEAR_GROUPS = 62

# Itemize output, one row each, shape (len(ITEM_COLS), n_visits).
ITEM_COLS = [
    "I_MEDFEE",             # medfee_sumamt
    "I_FULAMT",             # fulamt_ownpay_amt
    "I_OVERLMT",            # overlmt_selfpay
    "I_PRESELFPAY",         # preselfpay_amt
    "I_INSCP",              # inscp_scp_amt
    "I_INSCP_ESS",          # in-scope amount of essential drugs (part of I_INSCP)
]

# Chain output, one row each, shape (len(OUT_COLS), n_visits); names as on the national platform.
OUT_COLS = [
    "medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
    "act_pay_dedc", "hifp_pay", "pool_prop_selfpay", "cvlserv_pay", "hifes_pay", "hifmi_pay",
    "hifob_pay", "maf_pay", "oth_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay",
    "psn_cash_pay", "hosp_part_amt", "balc",
    # setldetail: remaining annual limit before this visit (crt_payb_lmt_amt), -1 = no cap
    "hifp_lmt", "hifob_lmt", "hifmi_lmt", "cvlserv_lmt", "maf_lmt",
]

# Per-visit status.
STATUS = {
    "OK": 0,
    "EXCLUDED": 1,          # excluded injury cause: settled, funds 0 (step 2)
    "PROVISIONAL": 2,       # pending cause under PreSettle: computed as if no cause, not committable
    "REFUSED": 3,           # pending cause under Settle: no fund pays, accumulators untouched
    "NOT_COVERED": 4,       # the version does not settle this med_type: funds 0
}

# Per-visit flags: what happened, for the trace (bit positions).
FLAGS = [
    "F_DED_WAIVED", "F_DED_NTH", "F_DED_ONCE", "F_ESS_UPLIFT", "F_FLOOR", "F_OVERRIDE",
    "F_OUT_AREA", "F_NO_REFERRAL", "F_DENIED", "F_BANDED", "F_QUOTA", "F_BEDDAY",
    "F_HIFP_CAPPED", "F_HIFOB", "F_HIFOB_CAPPED", "F_MI_TRIGGERED", "F_MI_CAPPED",
    "F_MI_EFFECTIVE", "F_CVL_CAPPED", "F_MAF_CAPPED", "F_GM_TOPUP", "F_ACCT",
]

# Settlement modes.
MODE_SETTLE = 0
MODE_PRESETTLE = 1


def as_constants():
    """Every name above -> int (column index, status code, flag bit, or constant)."""
    out = {}
    for cols in (RULE_COLS, DISEASE_COLS, ACC_COLS, ITEM_COLS):
        out.update({name: i for i, name in enumerate(cols)})
    out.update({"O_" + name.upper(): i for i, name in enumerate(OUT_COLS)})
    out.update({"S_" + k: v for k, v in STATUS.items()})
    out.update({name: i for i, name in enumerate(FLAGS)})
    out.update(N_RULE=len(RULE_COLS), N_DIS=len(DISEASE_COLS), N_ACC=len(ACC_COLS),
               N_ITEM=len(ITEM_COLS), N_OUT=len(OUT_COLS), BAND_MAX=BAND_MAX,
               BAND_UNUSED=BAND_UNUSED, DENY=DENY, MODE_SETTLE=MODE_SETTLE,
               MODE_PRESETTLE=MODE_PRESETTLE)
    return out


def pxi_text():
    """The Cython include generated from this file by setup.py."""
    consts = as_constants()
    small = {k: v for k, v in consts.items() if -2**31 <= v < 2**31}
    lines = ["# Generated from kernel/layout.py by setup.py; do not edit, do not commit.",
             "cdef enum:"]
    lines += [f"    {name} = {value}" for name, value in small.items()]
    lines += [f"cdef long long {name} = {value}" for name, value in consts.items() if name not in small]
    return "\n".join(lines) + "\n"
