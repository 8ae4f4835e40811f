"""Smoke test of benchmarks/persona.py on the built-in tiny model: collect through a real teacher server, one seed of
the paper's protocol (validation-chosen and last checkpoints, both methods), the merge over seeds."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil

import pytest
from conftest import REPO
from hypothesis import given
from hypothesis import strategies as st


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("persona_benchmark", REPO / "benchmarks" / "persona.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BENCHMARK = _load_benchmark()


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    data = tmp_path_factory.mktemp("persona-data")
    persona = data / "persona.md"
    persona.write_text("Talk like a pirate.")
    _load_benchmark().main(["collect", "--model", "builtin:tiny-llama", "--data-dir", str(data), "--persona-file",
                            str(persona), "--train-prompts", "8", "--val-prompts", "4", "--val-samples", "2",
                            "--test-prompts", "2", "--test-samples", "2", "--max-new-tokens", "6"])  # fmt: skip
    return data


def test_collect_writes_the_teacher_answers_of_each_split(collected):
    benchmark = _load_benchmark()
    assert len(benchmark.load_split(collected, "train")) == 8
    val, test = benchmark.load_split(collected, "val"), benchmark.load_split(collected, "test")
    assert len(val) == 8 and {r["sample"] for r in val} == {0, 1}  # 4 prompts x 2 samples
    assert len(test) == 8 and {r["sample"] for r in test} == {0, 1}  # 2 sets x 2 prompts x 2 samples
    assert benchmark.answers_per_prompt(val) == benchmark.answers_per_prompt(test) == 2
    # each sample is asked with a seed of its own: not copies of one answer
    answers = {(r["id"], r["sample"]): r["response"] for r in test}
    assert any(answers[(i, 0)] != answers[(i, 1)] for i, _ in answers)
    assert (collected / "persona.txt").read_text() == "Talk like a pirate."


def test_one_seed_then_merge(collected, tmp_path):
    benchmark = _load_benchmark()
    out = tmp_path / "out"
    common = ["--model", "builtin:tiny-llama", "--data-dir", str(collected), "--max-new-tokens", "6",
              "--style-regex", "e", "--discriminator", "first:2", "--seqkd-batch", "4", "--prompts-per-step", "2",
              "--generations", "2", "--seqkd-epochs", "2", "--gad-epochs", "1", "--eval-every", "2",
              "--c2st-splits", "2", "--d-only-steps", "1", "--set", "gad.discriminator_updates=2"]  # fmt: skip
    # two seeds side by side, each in a process of its own with one thread
    written = benchmark.main(["run", "--seeds", "0", "1", "--jobs", "2", "--out-dir", str(out), *common])
    # the diagnosis and a GAD variant added to the seed later, by a run of their own (the warmup rerun)
    benchmark.main(["run", "--seeds", "0", "--out-dir", str(out), *common, "--methods", "gad", "oracle_rl",
                    "--gad-name", "gad_top", "--disc-top-layers", "1"])  # fmt: skip
    later = "seed0-gad_top+oracle_rl.json"
    assert sorted(p.name for p in out.glob("*.json")) == [later, "seed0.json", "seed1.json"]
    saved = json.loads((out / "seed0.json").read_text())
    assert saved == written[0] and "persona.py run" in saved["command"] and saved["environment"]["versions"]["torch"]
    assert saved["command"].endswith("--seeds 0 --jobs 1 --threads 1") and saved["environment"]["torch_threads"] == 1
    seqkd, gad = saved["methods"]["seqkd"], saved["methods"]["gad"]
    # as many student answers as the teacher has, on validation and on the test set
    assert saved["eval_samples"] == 2 and saved["data"]["test"] == {**saved["data"]["test"], "answers": 8, "prompts": 4}
    assert {p["n"] for p in seqkd["validation"] + gad["validation"]} == {8} and seqkd["last"]["n"] == 8
    assert seqkd["steps"] == {"seqkd": 4}  # 2 epochs of 8 prompts at 4 a step
    assert gad["steps"] == {"warmup": 4, "gad": 4}  # 1 warmup epoch + 1 adversarial epoch, 2 prompts a step
    assert [p["step"] for p in seqkd["validation"]] == [2, 4]
    assert [p["stage"] for p in gad["validation"]] == ["warmup", "warmup", "gad", "gad"]
    assert [p["step"] for p in gad["validation"]] == [2, 4, 6, 8]  # GAD's steps continue across its two stages
    assert set(saved["methods"]) == {"seqkd", "gad"}
    oracle_file = json.loads((out / later).read_text())
    assert set(oracle_file["methods"]) == {"gad_top", "oracle_rl"} and "oracle_rl --gad-name" in oracle_file["command"]
    assert oracle_file["methods"]["gad_top"]["steps"] == gad["steps"]
    oracle = oracle_file["methods"]["oracle_rl"]  # the diagnosis: GAD's warmup, then RL on the persona check
    assert oracle["steps"] == {"warmup": 4, "oracle_rl": 4}
    assert [p["stage"] for p in oracle["validation"]] == ["warmup", "warmup", "oracle_rl", "oracle_rl"]
    assert oracle["validation"][:2] == gad["validation"][:2]  # the same warmup, rerun with the same seed
    assert oracle["chosen_step"] is None or oracle["chosen_step"] > 4  # chosen among its own RL steps
    for entry in (seqkd, gad, oracle):
        for which in ("last", "chosen"):
            if entry[which] is None:  # nothing passed the length guard: chosen is None, and so is its step
                assert which == "chosen" and entry["chosen_step"] is None
                continue
            metrics = entry[which]
            assert 0 <= metrics["c2st"] <= 100 and 0 <= metrics["style_pass"] <= 100
            assert 0 <= metrics["degenerate"] <= 100 and 0 <= metrics["distinct_2"] <= 1
    assert any("d_acc" in row for row in gad["curves"])
    # the persona rate of every training step's samples, for GAD as for the oracle whose reward it is
    assert all(0 <= row["style_match"] <= 1 for row in gad["curves"] + oracle["curves"] if "d_acc" in row)
    steps = [row["step"] for row in gad["curves"]]
    assert steps == sorted(steps) and steps[-1] == 8  # stepped like the validation curve, across both stages
    # d_acc_val is measured on the validation prompts as often as the students are validated
    assert [row["step"] for row in gad["curves"] if "d_acc_val" in row] == [2, 4, 6, 8]
    warmup_end = [row for row in gad["curves"] if "d_acc_val" in row and row["stage"] == "warmup"][-1]
    assert merged_d_val(benchmark, out / "seed0.json") == warmup_end["d_acc_val"]
    page = (out / "seed0.html").read_text()
    assert "Persona benchmark, seed 0" in page and 'alt="Validation C2ST' in page

    seed_files = [str(out / name) for name in ("seed0.json", later, "seed1.json")]
    merged = benchmark.main(["merge", *seed_files, "--out", str(tmp_path / "m.json")])
    assert merged["seeds"] == [0, 1] and set(merged["goals"]) == {
        "c2st_points_closer_to_50", "style_at_least_seqkd", "no_more_degenerate", "d_acc_val_after_warmup",
    }  # fmt: skip
    chosen = [(s["methods"]["gad"]["chosen"], s["methods"]["seqkd"]["chosen"]) for s in (saved, written[1])]
    expected = [abs(b["c2st"] - 50) - abs(g["c2st"] - 50) for g, b in chosen if g and b]
    assert merged["paired"]["c2st_points_closer"]["per_seed"] == pytest.approx(expected)
    assert merged["paired"]["paired_seeds"] == [
        s["seed"] for s in (saved, written[1]) if s["methods"]["gad"]["chosen"] and s["methods"]["seqkd"]["chosen"]
    ]
    last = [(s["methods"]["gad"]["last"], s["methods"]["seqkd"]["last"]) for s in (saved, written[1])]
    assert set(merged["paired_last"]) == {"gad", "gad_top", "oracle_rl"}
    assert merged["paired_last"]["gad"]["degenerate"]["per_seed"] == pytest.approx(
        [g["degenerate"] - b["degenerate"] for g, b in last]
    )
    assert all(isinstance(g["met"], bool) for g in merged["goals"].values())
    diagnosis = merged["diagnosis_oracle_rl"]  # seed 0's files joined; seed 1 has no oracle run
    assert set(diagnosis) == {"paired_seeds", "c2st_points_closer", "style_pass", "degenerate",
                             "warmup_c2st_max_difference"}  # fmt: skip
    assert diagnosis["paired_seeds"] == ([0] if oracle["chosen"] and seqkd["chosen"] else [])
    assert diagnosis["warmup_c2st_max_difference"] == {"0": 0.0}
    assert [p["methods"] for p in merged["per_seed"][0]["parts"]] == [["gad", "seqkd"], ["gad_top", "oracle_rl"]]
    assert [k for k in merged["table"] if k.endswith("/last")] == ["seqkd/last", "gad/last", "gad_top/last",
                                                                   "oracle_rl/last"]  # fmt: skip
    variant = merged["variants"]["gad_top"]  # paired with seed 0's SeqKD, beside GAD, judged by the same goals
    assert set(variant["goals"]) == set(merged["goals"])
    assert variant["goals"]["d_acc_val_after_warmup"]["value"] == variant["d_acc_val_after_warmup"]
    assert variant["goals"]["style_at_least_seqkd"]["value"] == variant["style_pass"]
    top = oracle_file["methods"]["gad_top"]
    top_warmup_end = [row["d_acc_val"] for row in top["curves"] if "d_acc_val" in row and row["stage"] == "warmup"]
    assert variant["d_acc_val_after_warmup"] == top_warmup_end[-1]
    if top["chosen"] and seqkd["chosen"]:
        assert variant["style_pass"]["per_seed"] == [top["chosen"]["style_pass"] - seqkd["chosen"]["style_pass"]]
    assert variant["seeds"] == [0]  # seed 1 has no gad_top
    if top["chosen"] and gad["chosen"]:  # and what its settings change: paired with GAD itself
        assert variant["against_gad"]["degenerate"]["per_seed"] == [top["chosen"]["degenerate"] -
                                                                    gad["chosen"]["degenerate"]]  # fmt: skip
    with pytest.raises(SystemExit, match="seed 0 already has"):  # one file per method and seed
        benchmark.merge([out / "seed0.json", out / "seed0.json"])
    other_data = tmp_path / "seed2.json"  # a seed measured on other teacher answers is never merged
    other_data.write_text(json.dumps({**written[1], "seed": 2, "data": {**saved["data"], "test": {"answers": 120}}}))
    with pytest.raises(SystemExit, match="different teacher answers"):
        benchmark.merge([out / "seed0.json", other_data])


def test_a_variant_reuses_the_warmup_of_gad(collected, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    common = ["--seeds", "0", "--model", "builtin:tiny-llama", "--data-dir", str(collected), "--max-new-tokens", "6",
              "--style-regex", "e", "--discriminator", "first:2", "--prompts-per-step", "2", "--generations", "2",
              "--gad-epochs", "1", "--eval-every", "2", "--c2st-splits", "2", "--d-only-steps", "1",
              "--out-dir", str(out), "--workdir", str(work), "--methods", "gad"]  # fmt: skip
    gad = _BENCHMARK.main(["run", *common])[0]["methods"]["gad"]
    kept = [work / "seed0" / folder / "model.safetensors" for folder in ("warmup/student", "gad/student", "gad-best")]
    trained = [path.stat().st_mtime_ns for path in kept]
    variant = _BENCHMARK.main(["run", *common, "--gad-name", "gad_fast", "--gad-lr", "1e-3", "--reuse-warmup"])
    fast = variant[0]["methods"]["gad_fast"]
    assert (work / "seed0" / "gad_fast" / "student" / "model.safetensors").exists()
    # the warmup is not trained again; the variant and the diagnosis leave gad's models as they were
    _BENCHMARK.main(["run", *common[:-1], "oracle_rl", "--reuse-warmup"])
    assert [path.stat().st_mtime_ns for path in kept] == trained
    assert fast["steps"] == gad["steps"] == {"warmup": 4, "gad": 4}
    # validated from the warmup's end (the same student, sampled with the same seed), then its own steps
    assert [p["step"] for p in fast["validation"]] == [4, 6, 8] and fast["validation"][0] == gad["validation"][1]
    assert [row["step"] for row in fast["curves"] if row["stage"] == "warmup"] == [1, 2, 3, 4]
    assert fast["curves"][:4] == gad["curves"][:4]
    with pytest.raises(SystemExit, match="other settings \\(d_only_steps\\)"):
        _BENCHMARK.main(["run", *common, "--gad-name", "gad_fast", "--d-only-steps", "2", "--reuse-warmup"])
    with pytest.raises(SystemExit, match="no finished warmup"):
        _BENCHMARK.main(["run", *common, "--workdir", str(tmp_path / "empty"), "--reuse-warmup"])


def test_the_warmup_difference_pairs_validation_points_by_step():
    def points(*pairs):
        return {"validation": [{"stage": "warmup", "step": step, "c2st": c2st} for step, c2st in pairs] +
                              [{"stage": "gad", "step": 99, "c2st": 0.0}]}  # fmt: skip

    rerun = {"methods": {"gad": points((2, 60.0), (4, 70.0)), "oracle_rl": points((2, 61.0), (4, 67.0))}}
    assert _BENCHMARK.warmup_difference(rerun) == 3.0
    reused = {"methods": {"gad": points((2, 60.0), (4, 70.0)), "oracle_rl": points((4, 70.0))}}  # its last step only
    assert _BENCHMARK.warmup_difference(reused) == 0.0


def test_reuse_warmup_needs_a_workdir_and_no_seqkd(capsys):
    for extra in ([], ["--workdir", "w", "--methods", "seqkd", "gad"]):
        with pytest.raises(SystemExit):
            _BENCHMARK.parse_args(["run", "--reuse-warmup", *extra])
        assert "--reuse-warmup needs --workdir" in capsys.readouterr().err


def test_the_discriminator_validation_file_has_one_answer_per_prompt(collected, tmp_path):
    out = tmp_path / "d-val.jsonl"
    assert _BENCHMARK.first_answers(collected / "val.jsonl", out, None) == 4
    assert [r["sample"] for r in _BENCHMARK.load_split(tmp_path, "d-val")] == [0, 0, 0, 0]
    assert _BENCHMARK.first_answers(collected / "val.jsonl", out, 3) == 3


def test_a_failed_seed_process_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"seed\(s\) \[0, 1\] failed"):
        _load_benchmark().main(["run", "--seeds", "0", "1", "--jobs", "2", "--model", "builtin:tiny-llama",
                                "--data-dir", str(tmp_path / "missing"), "--out-dir", str(tmp_path)])  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["seqkd", "oracle_rl", "GAD", "gad-student", ""])
def test_a_gad_name_that_would_clash_is_refused(name, capsys):
    with pytest.raises(SystemExit):
        _BENCHMARK.parse_args(["run", "--gad-name", name])
    assert "--gad-name" in capsys.readouterr().err


def merged_d_val(benchmark, seed_file) -> float:
    """The d_acc_val goal's measured value for one seed: its last measurement in warmup."""
    return benchmark.merge([seed_file])["goals"]["d_acc_val_after_warmup"]["value"]


@given(st.text(alphabet="ahoy matey AHOYxz\n\t.!", max_size=30))
def test_style_regex_agrees_with_style_pass(text):
    from gad.metrics import style_pass

    benchmark = _BENCHMARK
    for starts, contains in (("Ahoy", "matey"), ("Ahoy", None), (None, "matey"), (None, None)):
        found = re.search(benchmark.style_regex(starts, contains), text) is not None
        assert found == style_pass(text, starts, contains), (starts, contains)


def test_noise_repeats_one_models_test_measurement(collected, tmp_path):
    from gad.models import resolve_model

    model = resolve_model("builtin:tiny-llama")
    result = _BENCHMARK.main(["noise", model, "--data-dir", str(collected), "--max-new-tokens", "6", "--repeats", "2",
                              "--out", str(tmp_path / "noise.json")])  # fmt: skip
    assert result["answers_per_side"] == 8 and len(result["c2st"]) == 2 and result["sd"] >= 0
    assert result["mean"] == pytest.approx(sum(result["c2st"]) / 2, abs=1e-3)
    assert json.loads((tmp_path / "noise.json").read_text())["c2st"] == result["c2st"]
    fewer = tmp_path / "data"  # validation with half the prompts: the val measurement must have half the answers
    shutil.copytree(collected, fewer)
    lines = (collected / "val.jsonl").read_text().splitlines()
    (fewer / "val.jsonl").write_text("".join(line + "\n" for line in lines[: len(lines) // 2]))
    val = _BENCHMARK.main(["noise", model, "--data-dir", str(fewer), "--max-new-tokens", "6", "--repeats", "1",
                           "--split", "val", "--out", str(tmp_path / "noise_val.json")])  # fmt: skip
    assert val["split"] == "val" and val["answers_per_side"] == len(lines) // 2 == result["answers_per_side"] // 2


def test_probe_splits_discriminator_scores_by_the_persona_check(collected, tmp_path):
    from gad.models import resolve_model
    from gad.training.discriminator import Discriminator

    run = tmp_path / "run"  # a stage folder: the tiny model as student, a discriminator drawn from it
    shutil.copytree(resolve_model("builtin:tiny-llama"), run / "student")
    Discriminator.from_pretrained(run / "student", seed=3).save_pretrained(run / "discriminator")

    def probe(regex: str) -> dict:
        argv = ["probe", str(run), "--data-dir", str(collected), "--max-new-tokens", "6", "--style-regex", regex,
                "--out", str(tmp_path / "probe.json")]  # fmt: skip
        return _BENCHMARK.main(argv)["runs"][str(run)]

    everything, nothing = probe("."), probe("^x{50}")
    teacher_rows = _BENCHMARK.load_split(collected, "val")
    disc = Discriminator.from_pretrained(run / "discriminator", max_length=512).eval()
    scores = disc.score([[{"role": "user", "content": r["prompt"]}] for r in teacher_rows],
                        [r["response"] for r in teacher_rows])  # fmt: skip
    assert everything["teacher"]["persona_rate"] == 100 and everything["teacher"]["score_plain"] is None
    assert everything["teacher"]["score_persona"] == pytest.approx(scores.mean().item(), abs=1e-3)
    assert nothing["teacher"]["score_plain"] == pytest.approx(everything["teacher"]["score_persona"], abs=1e-3)
    for sides in (everything, nothing):  # answered only one way: no prompt to compare within
        assert sides["student"]["within_prompt"] is None and sides["student"]["prompts_both_ways"] == 0
    assert json.loads((tmp_path / "probe.json").read_text())["runs"][str(run)]["student"] == nothing["student"]
