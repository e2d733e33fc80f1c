"""Every table/figure config composes and validates; grid expansion, identity, gathering and checking."""
import json
import re

import pytest
import yaml

from oats.hydra_configs import method_nodes
from oats.registry import discover, parameters
from oats.config import RunConfig
from reproduce.expected import Expected, Tolerance, load_expected
from reproduce.gather import gather, metric_values, plot, to_markdown
from reproduce.store import RunStore
from reproduce.tables import (CONF_DIR, TableConfigError, TableSpec, applicable, compose_run, expand,
                              forwarded_overrides, list_tables, run_identity)
from table_runs import run_table, table_spec


def test_the_paper_tables_and_figures_are_listed():
    tables = set(list_tables())
    for model in ("llama3", "llama3_70b", "phi3_mini", "phi3_medium"):
        assert {f"{model}_{c}" for c in (30, 40, 50, 60)} <= tables
    assert {"fig1_rank_ratio", "fig1_iterations", "fig2_nm", "vit_accuracy", "cpu_speed", "ablation_dscale",
            "ablation_threshold", "rollout", "smollm2_ci", "smoke"} <= tables


def test_a_main_llm_table_states_only_its_own_settings():
    """Rows and layout come from conf/table/_llm*.yaml; a table file names its model, column, title."""
    for name in (t for t in list_tables() if re.fullmatch(r"(llama3|llama3_70b|phi3_mini|phi3_medium)_\d+", t)):
        own = yaml.safe_load((CONF_DIR / "table" / f"{name}.yaml").read_text())
        assert set(own) == {"defaults", "name", "title", "model", "cols", "expected"}, name
        spec = table_spec(name)
        assert spec.base == [f"model={own['model']}", "data=c4", "eval=paper"]
        assert list(spec.rows)[:4] == ["Dense", "SparseGPT", "Wanda", "DSnoT"] and len(spec.rows) in (5, 6)


@pytest.mark.parametrize("name", list_tables())
def test_every_table_composes_and_validates(name):
    spec = table_spec(name)
    runs = expand(spec)
    assert runs, name
    for run in runs:
        RunConfig.parse(run.config)
    if spec.expected:
        load_expected(spec.expected)  # exists and is well formed


def test_method_configs_follow_from_the_registry():
    """method=NAME composes every registered method with its defaults; _any has every parameter;
    a model config's method_params set per-model defaults that an explicit override still beats."""
    for name in discover():
        cfg = compose_run([f"method={name}"])["method"]
        assert cfg == {"name": name, **parameters(name)}, name
    any_keys = set(method_nodes()["_any"]) - {"name"}
    assert any_keys == {p for name in discover() for p in parameters(name)}
    per_model = compose_run(["method=oats", "+model.method_params.oats.rank_ratio=0.25"])
    assert per_model["method"]["rank_ratio"] == 0.25
    explicit = compose_run(["method=oats", "+model.method_params.oats.rank_ratio=0.25", "method.rank_ratio=0.5"])
    assert explicit["method"]["rank_ratio"] == 0.5
    with pytest.raises(Exception, match="nosuch"):
        compose_run(["method=nosuch"])


def test_run_identity_is_a_hash_of_the_resolved_config():
    a = compose_run(["method=wanda", "compression=0.5"])
    b = compose_run(["compression=0.5", "method=wanda", "progress=false", "device=cpu"])
    c = compose_run(["method=wanda", "compression=0.6"])
    assert run_identity(a) == run_identity(b) != run_identity(c)
    # the dense reference does not depend on compression settings
    d1 = compose_run(["method=dense", "compression=0.5"])
    d2 = compose_run(["method=dense", "compression=null", "nm='2:4'"])
    assert run_identity(d1) == run_identity(d2)


def test_oats_rank_ratio_defaults_to_the_models_and_stays_out_of_the_identity_as_method_params():
    phi3 = compose_run(["model=phi3-mini", "method=oats"])
    assert phi3["method"]["rank_ratio"] == phi3["model"]["method_params"]["oats"]["rank_ratio"] == 0.25
    assert compose_run(["model=smollm2-135m", "method=oats"])["method"]["rank_ratio"] == 0.3  # no method_params
    assert compose_run(["model=phi3-mini", "method=oats", "method.rank_ratio=0.5"])["method"]["rank_ratio"] == 0.5
    without = {**phi3, "model": {k: v for k, v in phi3["model"].items() if k != "method_params"}}
    assert run_identity(phi3) == run_identity(without)


def test_user_overrides_reach_only_the_runs_that_have_the_key():
    spec = table_spec("smoke")
    extra = forwarded_overrides(["table=smoke", "launcher=slurm", "method.rank_ratio=0.2", "data.nsamples=8"])
    assert extra == ["method.rank_ratio=0.2", "data.nsamples=8"]
    runs = {(r.row, r.col): r for r in expand(spec, extra)}
    assert runs[("OATS", "50%")].config["method"]["rank_ratio"] == 0.2
    assert "rank_ratio" not in runs[("Wanda", "50%")].config["method"]
    assert all(r.config["data"]["nsamples"] == 8 for r in runs.values())
    assert applicable(["method.blocksize=64", "+x=1", "model=smollm2-135m"], {"method": {"name": "wanda"}}) == [
        "+x=1", "model=smollm2-135m"]


@pytest.mark.parametrize("override,match", [
    ("compression=1.5", r"compression=1.5 is outside"),
    ("method.rank_ratio=-0.1", r"rank_ratio=-0.1"),
    ("data.nsamples=0", r"data.nsamples=0"),
    ("data.style=random", r"data.style='random'; allowed: windows, concat"),
    ("model.dtype=int8", r"model.dtype='int8'"),
    ("method.iterations=0", r"iterations=0"),
    ("eval.perplexity.max_windows=-2", r"max_windows=-2"),
    ("eval.perplexity.blockwise=maybe", r"blockwise='maybe' must be true or false"),
])
def test_out_of_range_values_fail_naming_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        RunConfig.parse(compose_run(["method=oats", override]))


def test_typos_fail_at_composition():
    with pytest.raises(Exception, match="rank_ration"):
        compose_run(["method=oats", "method.rank_ration=0.2"])
    with pytest.raises(TableConfigError, match="not 'row\\|col'"):
        TableSpec.from_config({"name": "t", "rows": {"a": []}, "cols": {"b": []}, "metrics": ["m"],
                               "cells": {"a|c": []}})
    with pytest.raises(TableConfigError, match="unknown key"):
        TableSpec.from_config({"name": "t", "rows": {"a": []}, "cols": {"b": []}, "metrics": ["m"], "colz": 1})


def fake_result(ppl: float, acc: float) -> dict:
    return {"metrics": [{"task": "wikitext2", "metric": "token_perplexity", "value": ppl},
                        {"task": "piqa_local", "metric": "acc_norm", "value": acc}],
            "compression": {"compression": 0.5}, "timings": {"compress_s": 1.0}}


def test_gather_checks_cells_against_expected(tmp_path):
    spec = TableSpec(name="t", title="T", kind="figure", base=[], rows={"Wanda": ["method=wanda"], "OATS": ["method=oats"]},
                     cols={"50%": ["compression=0.5"], "60%": ["compression=0.6"]},
                     metrics=["wikitext2/token_perplexity", "piqa_local/acc_norm"])
    runs = expand(spec)
    values = {("Wanda", "50%"): (20.0, 0.60), ("OATS", "50%"): (18.0, 0.62), ("Wanda", "60%"): (40.0, 0.55)}
    for run in runs:
        if (run.row, run.col) in values:
            out = RunStore(tmp_path).folder(run.run_id)
            out.mkdir(parents=True)
            (out / "result.json").write_text(json.dumps(fake_result(*values[(run.row, run.col)])))
    expected = Expected(
        tolerances={"wikitext2/token_perplexity": Tolerance(rel=0.05), "piqa_local/acc_norm": Tolerance(abs=0.01)},
        cells={("Wanda", "50%", "wikitext2/token_perplexity"): (20.5, "ref"),
               ("OATS", "50%", "wikitext2/token_perplexity"): (15.0, "ref"),
               ("OATS", "50%", "piqa_local/acc_norm"): (0.615, "ref")})
    df = gather(spec, runs, tmp_path, expected)
    status = {(r.row, r.col, r.metric): r.status for r in df.itertuples()}
    assert status[("Wanda", "50%", "wikitext2/token_perplexity")] == "pass"
    assert status[("OATS", "50%", "wikitext2/token_perplexity")] == "fail"
    assert status[("OATS", "50%", "piqa_local/acc_norm")] == "pass"
    assert status[("Wanda", "60%", "piqa_local/acc_norm")] == "unchecked"
    assert status[("OATS", "60%", "piqa_local/acc_norm")] == "missing"
    md = to_markdown(spec, df)
    assert "✗ (+20.0%)" in md and "cells: pass 2, fail 1, unstable 0, unchecked 3, missing 2" in md
    pngs = plot(spec, df, tmp_path / "fig")
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_expected_values_need_a_source_and_a_tolerance(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"tolerances": {"m": {"rel": 0.1}},
                                                     "cells": [{"row": "r", "col": "c", "metric": "m", "value": 1.0}]}))
    with pytest.raises(ValueError, match="no source"):
        load_expected("a", tmp_path)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"cells": [{"row": "r", "col": "c", "metric": "m", "value": 1.0,
                                                                 "source": "x"}]}))
    with pytest.raises(ValueError, match="no tolerance"):
        load_expected("b", tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"tolerances": {"m": {"rel": 0.1}},
                                                     "cells": [{"row": "r", "col": "c", "metric": "m", "value": None}]}))
    assert load_expected("c", tmp_path).cells == {}  # a cell with no sourced value stays unchecked


def test_a_cell_may_carry_its_own_tolerance(tmp_path):
    cells = [{"row": "OATS", "col": "2:4", "metric": "m", "value": 100.0, "tolerance": {"rel": 0.1}},
             {"row": "Wanda", "col": "2:4", "metric": "m", "value": 100.0}]
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"source": "ref", "tolerances": {"m": {"rel": 0.03}},
                                                     "cells": cells}))
    exp = load_expected("a", tmp_path)
    assert exp.tolerance(("OATS", "2:4", "m")).check(107.0, 100.0)[0]
    assert not exp.tolerance(("Wanda", "2:4", "m")).check(107.0, 100.0)[0]
    cells[0]["tolerance"] = {"pct": 5}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"source": "ref", "tolerances": {"m": {"rel": 0.03}},
                                                     "cells": cells}))
    with pytest.raises(ValueError, match="tolerance of cell"):
        load_expected("b", tmp_path)


def test_metric_values_flattens_records():
    result = fake_result(20.0, 0.6)
    result["metrics"].append({"task": "zeroshot", "metric": "mean", "value": 0.55})
    values = metric_values(result)
    assert values == {"wikitext2/token_perplexity": 20.0, "piqa_local/acc_norm": 0.6, "zeroshot/mean": 0.55,
                      "model/compression": 0.5, "time/compress_s": 1.0}


def test_smoke_table_runs_gathers_checks_and_resumes(tmp_path):
    """reproduce/run.py end to end on the tiny random Llama: every cell checked, a second call reruns nothing."""
    runs = expand(table_spec("smoke"))
    distinct = len({r.run_id for r in runs})  # fewer than the cells: the Dense row's cells share one run

    def run(*extra):
        return run_table("smoke", tmp_path, "progress=false", "wandb.mode=disabled", *extra, timeout=600)

    first = run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    table = (tmp_path / "tables" / "smoke.csv").read_text()
    assert "fail" not in table and "missing" not in table
    listing = run("dry_run=true")
    assert listing.returncode == 0 and f"{distinct} done, 0 to run" in listing.stdout
    cells = [line for line in listing.stdout.splitlines() if " | " in line]
    assert len(cells) == len(runs) and all(" done " in line for line in cells)  # the shared Dense run too


def test_published_llama3_cells_are_sourced_and_listed():
    """Every cell of llama3_alps has a published expected value with its source; DSnoT is in every main table."""
    spec = table_spec("llama3_alps")
    expected = load_expected(spec.expected)
    cells = {(run.row, run.col, metric) for run in expand(spec) for metric in spec.metrics}
    assert cells == set(expected.cells) and len(cells) == 28
    assert all("ALPS" in source for _, source in expected.cells.values())
    assert expected.judge(("Wanda", "70%", "wikitext2/token_perplexity"))[0].rel == pytest.approx(3 * 3.1 / 116.8)
    for name in ("llama3_30", "llama3_60", "phi3_mini_50", "llama3_70b_40"):
        assert "DSnoT" in table_spec(name).rows


def test_runs_are_claimed_so_two_processes_can_share_a_table(tmp_path, monkeypatch):
    """A process skips a run another live process holds, or one finished since it planned; a claim whose
    process died on this host is taken over; a process releases only its own claims."""
    import os
    import socket
    import subprocess
    import sys

    import reproduce.launch as launch
    from reproduce.tables import Run

    store = RunStore(tmp_path)
    host, me = socket.gethostname(), f"{socket.gethostname()} {os.getpid()}"
    other = f"{host} {os.getppid()}"  # a live process that is not this one
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for run_id, holder in (("held", other), ("stale", f"{host} {dead.pid}")):
        store.claim_path(run_id).parent.mkdir(parents=True)
        store.claim_path(run_id).write_text(holder)
    assert store.claim("held") == other
    assert store.claim("stale") is None and store.claim_path("stale").read_text() == me
    store.release("stale")
    assert not store.claim_path("stale").exists()
    store.release("held")
    assert store.claim_path("held").read_text() == other  # not ours: left alone

    store.folder("finished").mkdir(parents=True)
    store.result_path("finished").write_text("{}")
    ran = []
    monkeypatch.setattr(launch, "execute", lambda config, out, wandb_cfg: ran.append(out.name))
    runs = [Run("r", c, (), {}, run_id) for c, run_id in (("a", "held"), ("b", "finished"), ("c", "free"))]
    assert launch.launch_local(runs, tmp_path) == []
    assert ran == ["free"] and not store.claim_path("free").exists()
    ran.clear()
    assert launch.launch_local(runs, tmp_path, rerun=True) == []  # rerun=true recomputes finished runs
    assert ran == ["finished", "free"]
