"""benchmarks/gpu_session.sh and readme_table.sh, the next GPU session's one
call, run here with stand-ins for python3 and nvidia-smi that log what they are
asked to run: which settings each run gets, the fall-back to main's when a GPU
test fails under the chosen ones only, and what comes back in $OUT."""

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = r"""#!/usr/bin/env bash
# A stand-in for python3: logs its arguments; prints what the scripts look for, as
# pytest prints it (FAILED lines only where -r asks for them: f).
echo "$*" >> "$FAKE_LOG"
args=("$@")
report_failures=
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --out|--json) echo "{}" > "${args[i+1]}" ;;
        -r*f*) report_failures=1 ;;
    esac
done
failed() {      # failed TEST...: pytest -q's end for these failures among 100 tests
    local t
    echo "=========================== short test summary info ============================"
    if [ -n "$report_failures" ]; then
        for t in "$@"; do echo "FAILED $t - AssertionError"; done
    fi
    echo "$# failed, 100 passed in 9.00s"
    exit 1
}
case "$*" in
    *choose_settings.py*)
        for ((i = 0; i < ${#args[@]}; i++)); do
            [ "${args[i]}" = --out ] && printf "%s" "$FAKE_CHOICE" > "${args[i+1]}"
        done
        echo "chosen settings: $FAKE_CHOICE" ;;
    *with_settings.py*pytest*)
        case "$FAKE_CHOSEN_TESTS" in
            fail) failed "tests/test_trainer.py::test_one[tf32]" "tests/test_trainer.py::test_two" ;;
            second-stream) failed "tests/test_trainer.py::test_updates_on_a_second_stream[adam]" ;;
            crash) echo "tests/test_kernels.py ....F"; exit 139 ;;
            *) echo "102 passed in 9.00s" ;;
        esac ;;
    "-m pytest"*)                      # the rerun of the failed tests under main's
        ids=()
        for a in "$@"; do [[ "$a" == *::* ]] && ids+=("$a"); done
        case "$FAKE_MAIN_TESTS" in
            fail) failed "${ids[@]}" ;;
            some) failed "${ids[-1]}" ;;
            hang) echo "tests/test_trainer.py .."; exit 124 ;;
        esac
        echo "2 passed in 1.00s" ;;
    *"gpubp bench"*)
        if [ -n "$FAKE_SESSION_OUT" ] && [[ "$*" == *h100-large-tf32.json* ]]; then
            for _ in $(seq 50); do      # the bundle made while this runs
                if tar -tzf "$FAKE_SESSION_OUT/session.tar.gz" 2>/dev/null | grep -q tests_gpu.log
                then echo "bundled while the bench ran" >> "$FAKE_LOG"; break; fi
                sleep 0.2
            done
        fi
        echo "bench ran" ;;
    *overlap_probe.py*) echo "probe ran" ;;
esac
exit 0
"""


@pytest.fixture
def session(tmp_path):
    if shutil.which("bash") is None or shutil.which("tar") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash, tar and timeout")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'NVIDIA H100 80GB HBM3, 580, 81559 MiB'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)

    def run(choice, chosen_tests="pass", main_tests="pass", bundle_every=None):
        log, out = tmp_path / "log.txt", tmp_path / "out"
        log.write_text("")
        work = tmp_path / f"work{len(list(tmp_path.glob('work*')))}"
        if out.exists():
            shutil.rmtree(out)
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "FAKE_LOG": str(log), "FAKE_CHOICE": choice, "OUT": str(out), "WORK": str(work),
               "FAKE_CHOSEN_TESTS": chosen_tests, "FAKE_MAIN_TESTS": main_tests}
        if bundle_every is not None:
            env.update(BUNDLE_EVERY=str(bundle_every), FAKE_SESSION_OUT=str(out))
        done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        with tarfile.open(out / "session.tar.gz") as tar:
            names = {Path(n).as_posix().lstrip("./") for n in tar.getnames()}
            gpu = tar.extractfile("./table/gpu.txt").read().decode()
        return log.read_text().splitlines(), sorted(p.name for p in out.iterdir()), names, gpu

    return run


def _runs(log, what):
    """The logged runs with ``what`` among their words (not inside a path)."""
    return [line for line in log if f" {what} " in f" {line} "]


TRIAL = "_OUTPUT_FUSED=1,_FIRST_SLABS=4"


def _table_benches(log):
    """The benchmark runs of the table phase: all but the profile under the trial settings."""
    return [line for line in _runs(log, "gpubp bench")
            if not line.startswith(f"benchmarks/with_settings.py {TRIAL} ")]


def _trial_profiles(log):
    return [line for line in _runs(log, "gpubp bench")
            if line.startswith(f"benchmarks/with_settings.py {TRIAL} gpubp bench --profile ")]


def test_the_chosen_settings_reach_every_run(session):
    settings = "_BESIDE_SMS.tf32=16,_BACKWARD_BESIDE=1"
    log, files, bundled, gpu = session(settings)
    assert log[0].startswith("benchmarks/choose_settings.py --out ")
    benches = _table_benches(log)
    assert len(benches) == 5                        # the table, TF32 large, 2 profiles, kernels
    assert len(_trial_profiles(log)) == 1 and "--precision tf32" in _trial_profiles(log)[0]
    assert all(line.startswith(f"benchmarks/with_settings.py {settings} gpubp bench") for line in benches)
    tests = _runs(log, "pytest")
    assert len(tests) == 1 and tests[0].startswith(f"benchmarks/with_settings.py {settings} pytest")
    assert "-k not emulated" in tests[0] and "tests/test_graphs.py" in tests[0]
    assert _runs(log, "benchmarks/overlap_probe.py --precision tf32 --reserve 8,16,32")
    assert f"settings: {settings}" in gpu
    assert len(files) <= 8 and "session.tar.gz" in files and "choice.txt" in files
    assert {"choice.txt", "settings.txt", "choice.json", "table/h100.json", "table/tests_gpu.log",
            "table/profile.txt", "profile-trial.txt", "probe.txt"} <= bundled


def test_no_profile_under_the_trial_settings_where_the_table_ran_with_them(session):
    log, _, bundled, gpu = session(TRIAL)
    assert gpu.splitlines()[-1] == f"the table runs with: {TRIAL}"
    benches = _runs(log, "gpubp bench")             # the table's five, none after them
    assert len(benches) == 5
    assert all(line.startswith(f"benchmarks/with_settings.py {TRIAL} ") for line in benches)
    assert "profile-trial.txt" not in bundled


def test_main_settings_when_none_is_chosen(session):
    log, _, _, gpu = session("")
    assert all(line.startswith("-m gpubp bench") for line in _table_benches(log))
    assert _runs(log, "pytest")[0].startswith("-m pytest")
    assert "settings: main's" in gpu


def test_tests_failing_only_under_the_chosen_settings_send_the_runs_back_to_mains(session):
    settings = "_BESIDE_SMS.tf32=8"
    log, _, _, gpu = session(settings, chosen_tests="fail")
    again = [line for line in _runs(log, "pytest") if line.startswith("-m pytest")]
    assert len(again) == 1
    assert again[0].endswith("tests/test_trainer.py::test_one[tf32] tests/test_trainer.py::test_two")
    assert all(line.startswith("-m gpubp bench") for line in _table_benches(log))
    assert "everything after runs with main's settings" in gpu
    assert gpu.splitlines()[-1] == "the table runs with: main's"


def test_tests_failing_under_main_too_keep_the_chosen_settings(session):
    settings = "_BESIDE_SMS.tf32=8"
    log, _, _, gpu = session(settings, chosen_tests="fail", main_tests="fail")
    assert all(line.startswith(f"benchmarks/with_settings.py {settings} gpubp bench")
               for line in _table_benches(log))
    assert "main's settings" not in gpu


@pytest.mark.parametrize("main_tests,why", [
    ("some", "some fail under the chosen settings only"),
    ("hang", "the rerun under main's did not finish")])
def test_the_chosen_settings_stay_only_if_every_failure_is_mains_too(session, main_tests, why):
    """One of the two tests fails under main's as well (the other only under the chosen
    settings), or the rerun does not finish: the table runs with main's, and says why."""
    log, _, _, gpu = session("_BESIDE_SMS.tf32=8", chosen_tests="fail", main_tests=main_tests)
    assert all(line.startswith("-m gpubp bench") for line in _table_benches(log))
    assert f"{why}: everything after runs with main's settings" in gpu
    assert gpu.splitlines()[-1] == "the table runs with: main's"


def test_a_test_run_that_does_not_finish_sends_the_runs_back_to_mains(session):
    """A crash (here a segfault: no summary, exit status 139) says nothing for the
    settings: no rerun of failures, the table with main's settings, and why in gpu.txt."""
    log, _, _, gpu = session("_BESIDE_SMS.tf32=8", chosen_tests="crash")
    assert not [line for line in _runs(log, "pytest") if line.startswith("-m pytest")]
    assert all(line.startswith("-m gpubp bench") for line in _table_benches(log))
    assert "GPU tests: exit status 139" in gpu and "did not finish" in gpu
    assert gpu.splitlines()[-1] == "the table runs with: main's"


def test_updates_beside_failing_only_under_the_chosen_settings_leave_mains_as_they_are(session):
    log, _, _, gpu = session("_BESIDE_SMS.tf32=8", chosen_tests="second-stream")
    assert all(line.startswith("-m gpubp bench") for line in _table_benches(log))
    assert "run without them" not in gpu
    assert gpu.splitlines()[-1] == "the table runs with: main's"


def test_updates_beside_failing_under_main_too_are_turned_off_for_the_table(session):
    settings = "_BESIDE_SMS.tf32=8"
    log, _, _, gpu = session(settings, chosen_tests="second-stream", main_tests="fail")
    off = f"{settings},_OVERLAP_MIN_WEIGHTS=4611686018427387904"
    assert all(line.startswith(f"benchmarks/with_settings.py {off} gpubp bench")
               for line in _table_benches(log))
    assert "run without them" in gpu and gpu.splitlines()[-1] == f"the table runs with: {off}"


def test_what_was_made_is_bundled_while_the_runs_go_on(session):
    """A run cut short by the device tool still brings back what it made: the bundle is
    remade in the background (here every 0.2 s), not only after each phase."""
    log, files, _, _ = session("", bundle_every=0.2)
    assert "bundled while the bench ran" in log
    assert not [name for name in files if name.endswith(".part")]


def test_the_scripts_pytest_flags_name_each_failure_and_error(tmp_path):
    """readme_table.sh finds the failed tests in pytest's own report: real pytest, run
    with the script's flags on planted failures, prints the lines its grep reads."""
    import re
    import sys

    line = next(line for line in (ROOT / "benchmarks" / "readme_table.sh").read_text().splitlines()
                if line.startswith("TESTS=("))
    flags = line[len("TESTS=("):-1].split()
    shutil.copy(ROOT / "pyproject.toml", tmp_path)     # its addopts too, as in the repository
    (tmp_path / "test_planted.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('p', ['tf32', 'float32'])\n"
        "def test_fails(p):\n    assert p == 'float32'\n"
        "@pytest.fixture\ndef broken():\n    raise RuntimeError\n"
        "def test_errs(broken):\n    pass\n"
        "def test_passes():\n    pass\n")
    done = subprocess.run([sys.executable, "-m", "pytest", *flags, "test_planted.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    named = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.MULTILINE)
    assert sorted(named) == ["test_planted.py::test_errs", "test_planted.py::test_fails[tf32]"]
    assert re.search(r"^[0-9]+ [a-z].* in [0-9.]+s", done.stdout, flags=re.MULTILINE)
