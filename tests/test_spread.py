"""Repeated runs and their spread: runtime settings, repeat expansion, aggregation, derived tolerances."""
import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from oats import runtime
from reproduce.expected import Expected, Ordering, Rule, Spread, Tolerance, load_expected, robust_orderings
from reproduce.gather import aggregate, check_orderings, collect, plot, to_markdown
from reproduce.record_expected import build
from reproduce.store import RunStore
from reproduce.tables import REPO, Repeat, TableConfigError, TableSpec, compose_run, expand, run_identity

PPL, ACC = "wikitext2/token_perplexity", "piqa_local/acc_norm"


# ------------------------------------------------------------------ runtime settings

@pytest.mark.parametrize("rt, match", [
    ({"threads": 0}, "runtime.threads=0"),
    ({"threads": "2"}, "runtime.threads='2'"),
    ({"cpu_capability": "sse9"}, "runtime.cpu_capability='sse9'.*allowed: default, avx2, avx512"),
    ({"mkl_cbwr": "FAST"}, "runtime.mkl_cbwr='FAST'"),
    ({"cores": 2}, "unknown key.*cores"),
])
def test_bad_runtime_settings_name_the_value(rt, match):
    with pytest.raises(runtime.RuntimeSettingError, match=match):
        runtime.settings(rt)


def test_runtime_environment_and_labels():
    rt = runtime.settings({"threads": 1, "cpu_capability": "default", "mkl_cbwr": "COMPATIBLE,STRICT"})
    env = runtime.environment(rt)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env["ATEN_CPU_CAPABILITY"] == "default" and env["MKL_CBWR"] == "COMPATIBLE,STRICT"
    assert runtime.label(rt) == "threads=1 cpu_capability=default mkl_cbwr=COMPATIBLE,STRICT"
    assert runtime.settings({"threads": None}) == {} and not runtime.needs_new_process({})
    described = runtime.describe()
    assert described["cpu"] and described["threads"] >= 1 and described["cpu_capability"]


def test_an_isa_this_cpu_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(runtime, "supported_capabilities", lambda: ("default",))
    with pytest.raises(runtime.RuntimeSettingError, match="avx2.*not supported by this CPU.*supports: default"):
        runtime.settings({"cpu_capability": "avx2"})


# ------------------------------------------------------------------ repeat expansion

def small_spec(**kw) -> TableSpec:
    return TableSpec(name="t", title="T", kind="table", base=["model=tiny-random-llama", "data=smoke", "eval=smoke"],
                     rows={"Dense": ["method=dense"], "Wanda": ["method=wanda"]},
                     cols={"50%": ["compression=0.5"]}, metrics=[PPL], **kw)


def test_repeat_expands_each_cell_over_seeds_and_runtimes():
    single = expand(small_spec())
    repeat = Repeat.from_config({"seeds": 2, "runtimes": [{}, {"threads": 1, "cpu_capability": "default"}]})
    runs = expand(small_spec(), repeat=repeat)
    wanda = [r for r in runs if r.row == "Wanda"]
    assert [r.rep for r in wanda] == ["", "threads=1 cpu_capability=default", "seed=43",
                                      "seed=43 threads=1 cpu_capability=default"]
    assert len({r.run_id for r in wanda}) == 4
    assert wanda[0].run_id == next(r.run_id for r in single if r.row == "Wanda")  # the plain run is reused
    assert wanda[3].config["data"]["seed"] == 43 and wanda[3].config["runtime"]["cpu_capability"] == "default"
    assert "runtime.threads=1" in wanda[1].overrides and "data.seed=43" in wanda[2].overrides
    dense = [r for r in runs if r.row == "Dense"]  # the dense model ignores calibration: one run per runtime
    assert len(dense) == 2


def test_a_machine_default_runtime_keeps_the_run_identity():
    cfg = compose_run(["method=wanda"])
    assert cfg["runtime"] == {"threads": None, "cpu_capability": None, "mkl_cbwr": None, "layer_workers": None}
    without = {k: v for k, v in cfg.items() if k != "runtime"}
    assert run_identity(cfg) == run_identity(without)
    one = {**cfg, "runtime": {**cfg["runtime"], "threads": 1}}
    assert run_identity(one) != run_identity(cfg)
    # layer_workers came later: left automatic, a pinned run keeps the identity it had before the key existed
    before = {**cfg, "runtime": {"threads": 1, "cpu_capability": None, "mkl_cbwr": None}}
    assert run_identity(one) == run_identity(before)
    assert run_identity({**one, "runtime": {**one["runtime"], "layer_workers": 2}}) != run_identity(one)


@pytest.mark.parametrize("cfg, match", [
    ({"seeds": 0}, "repeat.seeds=0"),
    ({"runtimes": "fast"}, "repeat.runtimes='fast'"),
    ({"runtimes": [{"threads": -1}]}, "runtime.threads=-1"),
])
def test_bad_repeat_settings_name_the_value(cfg, match):
    with pytest.raises(ValueError, match=match):
        Repeat.from_config(cfg)


def test_repeating_seeds_needs_a_data_seed():
    with pytest.raises(TableConfigError, match="needs an integer data.seed"):
        expand(small_spec(), ["data.seed=null"], Repeat(seeds=2))


# ------------------------------------------------------------------ aggregation and checks

def per_run_frame(values: dict[tuple[str, str, str], list[float]], stderr: float | None = None) -> pd.DataFrame:
    lines = []
    for (row, col, metric), vals in values.items():
        for i, v in enumerate(vals):
            lines.append({"row": row, "col": col, "rep": f"r{i}", "metric": metric, "value": v,
                          "stderr": stderr if metric == ACC else None, "run_id": f"{row}{col}{i}", "cpu": "x"})
    return pd.DataFrame(lines)


def test_aggregate_reports_mean_std_min_max_and_stderr(tmp_path):
    spec = TableSpec(name="t", title="T", kind="figure", base=[], rows={"A": [], "B": []}, cols={"50%": []},
                     metrics=[PPL, ACC])
    per_run = per_run_frame({("A", "50%", PPL): [10.0, 11.0, 12.0], ("B", "50%", PPL): [20.0],
                             ("A", "50%", ACC): [0.6, 0.62], ("B", "50%", ACC): [0.5]}, stderr=0.024)
    df = aggregate(spec, per_run, Expected({}, {}))
    a = df[(df.row == "A") & (df.metric == PPL)].iloc[0]
    assert (a.value, a["std"], a["min"], a["max"], a.n) == (11.0, 1.0, 10.0, 12.0, 3)
    b = df[(df.row == "B") & (df.metric == ACC)].iloc[0]
    assert b.n == 1 and math.isnan(b["std"]) and b["stderr"] == pytest.approx(0.024)
    md = to_markdown(spec, df)
    assert "11.0000 ±1.0000 [10.0000–12.0000]" in md and "0.5000 (se 0.024)" in md
    pngs = plot(spec, df, tmp_path)  # with error bars
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_rule_derives_tolerance_and_marks_unstable_cells():
    rule = Rule(3.0, {PPL: Tolerance(rel=0.005), ACC: Tolerance(abs=0.005)}, {PPL: Tolerance(rel=0.05)})
    tol, unstable = rule.derive(PPL, 100.0, Spread(1.0, 99.0, 101.0, 8))  # 3 std = 3% > floor
    assert tol.rel == pytest.approx(0.03) and not unstable
    tol, unstable = rule.derive(PPL, 100.0, Spread(0.0, 100.0, 100.0, 8))  # deterministic: the floor
    assert tol.rel == pytest.approx(0.005) and not unstable
    tol, unstable = rule.derive(PPL, 100.0, Spread(4.0, 94.0, 106.0, 8))  # 12% > the 5% max: unstable
    assert unstable
    tol, _ = rule.derive(ACC, 0.6, Spread(0.01, 0.59, 0.61, 8))
    assert tol.abs == pytest.approx(0.03)
    assert rule.derive(PPL, 0.0, Spread(0.0, 0.0, 0.0, 2))[0].rel == pytest.approx(0.005)


def test_spread_derived_expected_values_check_pass_fail_and_unstable(tmp_path):
    runs = per_run_frame({("SparseGPT", "2:4", PPL): [122.0, 122.4, 121.8, 122.1],
                          ("Wanda", "2:4", PPL): [200.0, 198.0, 201.0, 199.5],
                          ("OATS", "2:4", PPL): [136.0, 146.0, 150.0, 140.0],
                          ("Magnitude", "2:4", PPL): [1764.0, 1764.0, 1764.0, 1764.0]})
    rule = Rule(3.0, {PPL: Tolerance(rel=0.005)}, {PPL: Tolerance(rel=0.05)})
    doc = build(runs, rule, "test runs", ["r0", "r1", "r2", "r3"])
    orderings = {(o["lower"], o["higher"]) for o in doc["orderings"]}
    # a chain, without the implied SparseGPT < Wanda; OATS's wide spread still orders it
    assert orderings == {("SparseGPT", "OATS"), ("OATS", "Wanda"), ("Wanda", "Magnitude")}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(doc))
    expected = load_expected("t", tmp_path)
    spec = TableSpec(name="t", title="T", kind="table", base=[],
                     rows={r: [] for r in ("Magnitude", "Wanda", "SparseGPT", "OATS")}, cols={"2:4": []}, metrics=[PPL])
    now = per_run_frame({("SparseGPT", "2:4", PPL): [122.6], ("Wanda", "2:4", PPL): [215.0],
                         ("OATS", "2:4", PPL): [170.0], ("Magnitude", "2:4", PPL): [1760.0]})
    df = aggregate(spec, now, expected)
    status = dict(zip(df.row, df.status))
    assert status == {"Magnitude": "pass", "Wanda": "fail", "SparseGPT": "pass", "OATS": "unstable"}
    checked = check_orderings(expected, df)
    assert set(checked.status) == {"pass"}
    swapped = per_run_frame({("SparseGPT", "2:4", PPL): [122.0], ("Wanda", "2:4", PPL): [200.0],
                             ("OATS", "2:4", PPL): [210.0], ("Magnitude", "2:4", PPL): [1760.0]})
    bad = check_orderings(expected, aggregate(spec, swapped, expected))
    assert list(bad[bad.status == "fail"].lower) == ["OATS"]
    md = to_markdown(spec, df, checked)
    assert "unstable 1" in md and "OATS (170.00) < Wanda (215.00) ✓" in md


def test_recorded_tolerances_cover_every_recorded_run():
    runs = per_run_frame({("A", "c", PPL): [10.0, 10.3, 9.9, 10.05, 10.2, 9.8, 10.1, 10.0]})
    rule = Rule(3.0, {PPL: Tolerance(rel=0.0001)})
    doc = build(runs, rule, "src", [])
    cell = doc["cells"][0]
    tol, _ = rule.derive(PPL, cell["value"], Spread(**cell["spread"]))
    assert all(tol.check(v, cell["value"])[0] for v in runs.value)


def test_expected_file_rule_is_validated(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"source": "s", "rule": {"k": -1, "floor": {PPL: {"rel": 0.01}}},
                                                     "cells": []}))
    with pytest.raises(ValueError, match="rule.k=-1"):
        load_expected("a", tmp_path)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"source": "s", "rule": {"k": 3, "floor": {PPL: {"pct": 1}}},
                                                     "cells": []}))
    with pytest.raises(ValueError, match="rule.floor"):
        load_expected("b", tmp_path)


def test_collect_reads_every_repetition(tmp_path):
    spec = small_spec()
    runs = expand(spec, repeat=Repeat(runtimes=({}, {"threads": 1})))
    for i, run in enumerate(runs):
        out = RunStore(tmp_path).folder(run.run_id)
        out.mkdir(parents=True)
        (out / "result.json").write_text(json.dumps({"metrics": [{"task": "wikitext2", "metric": "token_perplexity",
                                                                  "value": 10.0 + i}], "runtime": {"cpu": "TestCPU"}}))
    per_run = collect(spec, runs, tmp_path)
    assert len(per_run) == 4 and set(per_run.cpu) == {"TestCPU"} and set(per_run.rep) == {"", "threads=1"}
    df = aggregate(spec, per_run, Expected({}, {}))
    assert list(df.n) == [2, 2]


# ------------------------------------------------------------------ a run in its own runtime

def test_a_run_with_a_runtime_runs_in_a_process_that_honours_it(tmp_path):
    """The launcher starts the run in a new process with the runtime's environment; the result
    records what torch actually used."""
    from reproduce.execute import execute
    from reproduce.store import RunStore

    spec = small_spec()
    run = expand(spec, repeat=Repeat(runtimes=({"threads": 1, "cpu_capability": "default"},)))[1]
    assert run.row == "Wanda"
    out = RunStore(tmp_path).prepare(run)
    result = execute({**run.config, "progress": False}, out)
    assert result["runtime"]["cpu_capability"] == "default" and result["runtime"]["threads"] == 1
    assert json.loads((out / "result.json").read_text())["metrics"]


def test_oats_factors_do_not_depend_on_the_kernel_isa():
    """The seeded first basis of the subspace solver is drawn the same way under every ATEN_CPU_CAPABILITY,
    so one layer gets bit-identical factors (one thread; MKL does not change with torch's ISA)."""
    isas = [i for i in ("default", "avx2", "avx512") if i in runtime.supported_capabilities()]
    if len(isas) < 2:
        pytest.skip(f"this CPU runs only {isas}")
    code = ("import hashlib, torch; from reproduce.layer_regression import synthetic_layer; "
            "from oats.budget import layer_budget; from oats.methods.oats import oats_decompose; "
            "W, X = synthetic_layer(96, 160); d = X.square().mean(0).sqrt(); "
            "dec = oats_decompose(W, d, layer_budget(96, 160, 0.5, 0.3), 10, 'subspace'); "
            "print(hashlib.sha256(dec.sparse.numpy().tobytes() + dec.U.contiguous().numpy().tobytes()).hexdigest())")
    hashes = set()
    for isa in isas:
        env = {**runtime.environment({"threads": 1, "cpu_capability": isa}), "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        hashes.add(proc.stdout.strip())
    assert len(hashes) == 1, hashes


def test_repeated_tables_list_every_run(tmp_path):
    from reproduce.gather import write_table

    spec = TableSpec(name="t", title="T", kind="table", base=[], rows={"A": []}, cols={"50%": []}, metrics=[PPL])
    per_run = per_run_frame({("A", "50%", PPL): [10.0, 11.0]})
    write_table(spec, aggregate(spec, per_run, Expected({}, {})), tmp_path, per_run, stem="t-machines")
    md = (tmp_path / "t-machines.runs.md").read_text()
    assert "| A @ 50%" in md and "r0" in md and "r1" in md and "11.0000" in md
    assert (tmp_path / "t-machines.runs.csv").exists()


def test_check_spread_holds_each_perturbation_against_the_reference_and_left_out(tmp_path):
    """reproduce/check_spread.py: a perturbation whose run leaves the reference fails; leave-one-out rebuilds
    the reference without it (a wide cell stays unchecked either way)."""
    from reproduce.check_spread import check_rep, leave_out

    values = {("Wanda", "2:4", PPL): [200.0, 199.0, 201.0, 230.0],
              ("SparseGPT", "2:4", PPL): [122.0, 122.4, 121.8, 122.1]}
    runs = per_run_frame(values)
    rule = Rule(3.0, {PPL: Tolerance(rel=0.005)}, {PPL: Tolerance(rel=0.30)})
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(build(runs, rule, "test runs", [])))
    expected = load_expected("t", tmp_path)
    by_rep = {rep: grp for rep, grp in runs.groupby("rep")}
    assert [check_rep(g, expected)[:3] for g in by_rep.values()] == [(2, 0, 0)] * 4  # all recorded runs pass
    held_out = leave_out(runs, "r3", expected)  # without the 230: Wanda's tolerance is narrow
    passed, failed, unstable, failures = check_rep(by_rep["r3"], held_out)
    assert (passed, failed, unstable) == (1, 1, 0) and failures[0].startswith("Wanda|2:4|token_perplexity 230")
    assert check_rep(by_rep["r0"], leave_out(runs, "r0", expected))[1] == 0


def test_gather_only_runs_nothing(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "reproduce" / "run.py"), "table=smoke", "gather_only=true",
                           f"results_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'h'}", "wandb.mode=disabled"],
                          capture_output=True, text=True, timeout=300)
    assert "run(s) not done are left out" in proc.stdout, proc.stderr[-2000:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert (tmp_path / "tables" / "smoke.csv").exists()
    assert set(pd.read_csv(tmp_path / "tables" / "smoke.csv").status) == {"missing"}


def test_record_expected_supersede_replaces_the_rows_of_a_changed_method(tmp_path):
    """Rows re-run after a method changed replace that method's old runs; the other rows keep theirs."""
    cols = "row,col,rep,metric,value,stderr,run_id,cpu\n"
    old = tmp_path / "old.runs.csv"
    old.write_text(cols + "".join(f"{row},50%,r{i},{PPL},{v + i * 0.01},,{row}{i},X\n"
                                  for row, v in (("A", 10.0), ("B", 20.0)) for i in range(3)))
    new = tmp_path / "new.runs.csv"
    new.write_text(cols + "".join(f"B,50%,r{i},{PPL},{30.0 + i * 0.01},,B{i}new,X\n" for i in range(2)))
    out = tmp_path / "expected"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(REPO / "reproduce" / "record_expected.py"), "t", "--runs", str(old),
                           "--supersede", str(new), "--floor", f"{PPL}=rel:0.01", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = (out / "t.yaml").read_text()
    assert "rows of new.runs.csv replacing theirs" in text
    cells = {c["row"]: c for c in yaml.safe_load(text)["cells"]}
    assert cells["A"]["value"] == pytest.approx(10.01) and cells["A"]["spread"]["n"] == 3
    assert cells["B"]["value"] == pytest.approx(30.005) and cells["B"]["spread"]["n"] == 2


def test_check_spread_by_cpu_holds_out_a_whole_machine(tmp_path):
    """--by cpu: a reference recorded on one CPU's runtimes (tight: they agree) is rebuilt without the other
    CPU, whose runs it fails; --supersede replaces a changed method's rows as record_expected.py does."""
    cols = "row,col,rep,metric,value,stderr,run_id,cpu\n"
    runs = tmp_path / "t-machines.runs.csv"
    lines = [f"A,2:4,r{i},{PPL},{262.7 + 0.001 * i},,A{i},AMD\n" for i in range(3)]  # one CPU: the runtimes agree
    lines += [f"A,2:4,x{i},{PPL},{245.2 + 0.001 * i},,A{i}x,Intel\n" for i in range(2)]  # the other: 7% away
    lines += [f"B,2:4,r{i},{PPL},{500.0 + i},,B{i},AMD\n" for i in range(3)]  # an old method's rows...
    lines += [f"B,2:4,x{i},{PPL},{600.0 + i},,B{i}x,Intel\n" for i in range(2)]  # (would fail by CPU)
    runs.write_text(cols + "".join(lines))
    fresh = tmp_path / "b-new.runs.csv"  # ... replaced by its re-run, identical on both CPUs
    fresh.write_text(cols + "".join(f"B,2:4,{rep},{PPL},100.0,,B{rep}new,{cpu}\n"
                                    for rep, cpu in (("r0", "AMD"), ("r1", "AMD"), ("x0", "Intel"))))
    out = tmp_path / "expected"
    out.mkdir()
    rec = [sys.executable, str(REPO / "reproduce" / "record_expected.py"), "t", "--runs", str(runs), "--supersede",
           str(fresh), "--k", "3", "--floor", f"{PPL}=rel:0.01", "--max", f"{PPL}=rel:0.5", "--out", str(out)]
    assert subprocess.run(rec, cwd=REPO, capture_output=True, text=True).returncode == 0
    check = [sys.executable, str(REPO / "reproduce" / "check_spread.py"), "t", "--runs", str(runs), "--supersede",
             str(fresh), "--expected", str(out)]
    by_rep = subprocess.run(check, cwd=REPO, capture_output=True, text=True)
    assert by_rep.returncode == 0, by_rep.stdout + by_rep.stderr  # every runtime left out is covered by the others
    by_cpu = subprocess.run(check + ["--by", "cpu"], cwd=REPO, capture_output=True, text=True)
    assert by_cpu.returncode == 1, by_cpu.stdout + by_cpu.stderr
    fails = [ln for ln in by_cpu.stdout.splitlines() if "leave-one-out fail" in ln]
    assert len(fails) == 5 and all(ln.strip().startswith("leave-one-out fail: A|2:4") for ln in fails), by_cpu.stdout
