"""Chapter 15's sweeps run setups in separate processes and merge their files: the merges keep every row once,
in the setups' order, and a setup run again replaces its rows (no model is trained here)."""
import json
import shutil
import sys

import pytest

from tools import sweep_ch15_dpo as dpo
from tools import sweep_ch15_rl as rl
from tools.results_csv import read_results, write_results


@pytest.fixture
def committed(tmp_path, monkeypatch):
    """Copies of the committed chapter 15 preference files, which the sweep module then reads and writes."""
    paths = {}
    for name in ("OUT", "STEPS_OUT", "ANSWERS_OUT"):
        paths[name] = tmp_path / getattr(dpo, name).name
        shutil.copy(getattr(dpo, name), paths[name])
        monkeypatch.setattr(dpo, name, paths[name])
    return paths


def part(folder, setup, rename=None):
    """A worker's folder holding ``setup``'s committed rows, steps and answers (as ``rename``, if given)."""
    folder.mkdir()
    new = rename or setup
    rows = [{**r, "setup": new} for r in read_results(dpo.OUT) if r["setup"] == setup]
    steps = [{**r, "setup": new} for r in read_results(dpo.STEPS_OUT) if r["setup"] == setup]
    write_results(folder / dpo.OUT.name, dpo.COMMAND, dpo.FIELDS, rows)
    write_results(folder / dpo.STEPS_OUT.name, dpo.COMMAND, dpo.STEP_FIELDS, steps)
    lines = [json.loads(line) for line in dpo.ANSWERS_OUT.read_text().splitlines()]
    (folder / dpo.ANSWERS_OUT.name).write_text(json.dumps({new: [line[setup] for line in lines]}))
    return folder, len(rows), len(steps)


def test_adding_a_setup_again_leaves_the_files_byte_for_byte(committed, tmp_path):
    before = {k: p.read_bytes() for k, p in committed.items()}
    folder, _, _ = part(tmp_path / "again", "DPO r=8")
    dpo.combine([folder], print, add=True)
    assert {k: p.read_bytes() for k, p in committed.items()} == before


def test_an_added_setup_takes_its_place_in_the_setups_order(committed, tmp_path, monkeypatch):
    old, old_steps = read_results(committed["OUT"]), read_results(committed["STEPS_OUT"])
    setups = list(dict.fromkeys(r["setup"] for r in old))
    new = "DPO r=2"  # a setup no file has, between SFT r=8 and DPO r=8
    names = list(dpo.SETUPS)
    names.insert(names.index("SFT r=8") + 1, new)
    monkeypatch.setattr(dpo, "SETUPS", {name: dpo.SETUPS.get(name, ("dpo", 2)) for name in names})
    folder, n_rows, n_steps = part(tmp_path / "new", "DPO r=8", rename=new)
    dpo.combine([folder], print, add=True)
    rows = read_results(committed["OUT"])
    assert len(rows) == len(old) + n_rows and rows[:2] == old[:2]  # the start rows stay first
    order = [s for s in dpo.SETUPS if s in setups or s == new]
    assert list(dict.fromkeys(r["setup"] for r in rows)) == ["start", *order]
    steps = read_results(committed["STEPS_OUT"])
    assert len(steps) == len(old_steps) + n_steps and sum(r["setup"] == new for r in steps) == n_steps
    lines = [json.loads(line) for line in committed["ANSWERS_OUT"].read_text().splitlines()]
    assert list(lines[0]) == ["prompt", "start", *order] and all(line[new] == line["DPO r=8"] for line in lines)


def test_sft_dpo_reads_sfts_chosen_rate_and_refuses_a_file_without_one(committed):
    rows = read_results(committed["OUT"])
    assert dpo.chosen_rate("SFT r=8") == float(next(r["lr"] for r in rows if r["setup"] == "SFT r=8"
                                                    and r["chosen"] == "1"))
    write_results(committed["OUT"], dpo.COMMAND, dpo.FIELDS, [r for r in rows if r["setup"] != "SFT r=8"])
    with pytest.raises(ValueError, match="no single chosen rate for 'SFT r=8'.*--only 'SFT r=8'"):
        dpo.chosen_rate("SFT r=8")


def test_rl_combine_takes_the_first_files_start_rows_and_each_setup_once(tmp_path, monkeypatch):
    def rows(setup, lr):
        return [{"setup": setup, "trainable": 1, "lr": lr, "seed": 0, "step": 1, "reward": "0.5",
                 "informative": "1.000", "split": "train", "val_accuracy": "", "test_accuracy": "", "chosen": 1}]
    start = [{"setup": "start", "trainable": 0, "lr": "", "seed": "", "step": 0, "reward": "", "informative": "",
              "split": "validation", "val_accuracy": "82.5", "test_accuracy": "", "chosen": ""}]
    a, b, out = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "out.csv"
    write_results(a, rl.COMMAND, rl.FIELDS, start + rows("full", "5e-05") + rows("LoRA r=8", "0.001"))
    write_results(b, rl.COMMAND, rl.FIELDS, [{**start[0], "val_accuracy": "0"}] + rows("LoRA r=1", "0.0005")
                  + rows("LoRA r=8", "0.002"))
    monkeypatch.setattr(sys, "argv", ["sweep_ch15_rl", "--combine", str(a), str(b), "--out", str(out)])
    assert rl.main() == 0
    got = read_results(out)
    assert [(r["setup"], r["lr"], r["val_accuracy"]) for r in got] == [
        ("start", "", "82.5"), ("LoRA r=1", "0.0005", ""), ("LoRA r=8", "0.001", ""), ("full", "5e-05", "")]
