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
# A stand-in for python3: logs its arguments; prints what the scripts look for.
echo "$*" >> "$FAKE_LOG"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --out|--json) echo "{}" > "${args[i+1]}" ;;
    esac
done
case "$*" in
    *choose_settings.py*)
        for ((i = 0; i < ${#args[@]}; i++)); do
            [ "${args[i]}" = --out ] && printf "%s" "$FAKE_CHOICE" > "${args[i+1]}"
        done
        echo "chosen settings: $FAKE_CHOICE" ;;
    *with_settings.py*pytest*)
        if [ -n "$FAKE_FAIL_CHOSEN" ]; then
            echo "FAILED tests/test_trainer.py::test_one[tf32] - AssertionError"
            echo "FAILED tests/test_trainer.py::test_two - AssertionError"
            echo "2 failed, 100 passed in 9.00s"
        else
            echo "102 passed in 9.00s"
        fi ;;
    "-m pytest"*)
        if [ -n "$FAKE_FAIL_MAIN" ]; then echo "2 failed in 1.00s"; else echo "2 passed in 1.00s"; fi ;;
    *"gpubp bench"*) echo "bench ran" ;;
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

    def run(choice, fail_chosen=False, fail_main=False):
        log, out = tmp_path / "log.txt", tmp_path / "out"
        log.write_text("")
        work = tmp_path / f"work{len(list(tmp_path.glob('work*')))}"
        if out.exists():
            shutil.rmtree(out)
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "FAKE_LOG": str(log), "FAKE_CHOICE": choice, "OUT": str(out), "WORK": str(work),
               "FAKE_FAIL_CHOSEN": "1" if fail_chosen else "", "FAKE_FAIL_MAIN": "1" if fail_main else ""}
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


def test_the_chosen_settings_reach_every_run(session):
    settings = "_BESIDE_SMS.tf32=16,_BACKWARD_BESIDE=1"
    log, files, bundled, gpu = session(settings)
    assert log[0].startswith("benchmarks/choose_settings.py --out ")
    benches = _runs(log, "gpubp bench")
    assert len(benches) == 5                        # the table, TF32 large, 2 profiles, kernels
    assert all(line.startswith(f"benchmarks/with_settings.py {settings} gpubp bench") for line in benches)
    tests = _runs(log, "pytest")
    assert len(tests) == 1 and tests[0].startswith(f"benchmarks/with_settings.py {settings} pytest")
    assert "-k not emulated" in tests[0] and "tests/test_graphs.py" in tests[0]
    assert _runs(log, "benchmarks/overlap_probe.py --precision tf32 --reserve 8,16,32")
    assert f"settings: {settings}" in gpu
    assert len(files) <= 8 and "session.tar.gz" in files and "choice.txt" in files
    assert {"choice.txt", "settings.txt", "choice.json", "table/h100.json", "table/tests_gpu.log",
            "table/profile.txt", "probe.txt"} <= bundled


def test_main_settings_when_none_is_chosen(session):
    log, _, _, gpu = session("")
    assert all(line.startswith("-m gpubp bench") for line in _runs(log, "gpubp bench"))
    assert _runs(log, "pytest")[0].startswith("-m pytest")
    assert "settings: main's" in gpu


def test_tests_failing_only_under_the_chosen_settings_send_the_runs_back_to_mains(session):
    settings = "_BESIDE_SMS.tf32=8"
    log, _, _, gpu = session(settings, fail_chosen=True)
    again = [line for line in _runs(log, "pytest") if line.startswith("-m pytest")]
    assert len(again) == 1
    assert again[0].endswith("tests/test_trainer.py::test_one[tf32] tests/test_trainer.py::test_two")
    assert all(line.startswith("-m gpubp bench") for line in _runs(log, "gpubp bench"))
    assert "everything after runs with main's settings" in gpu


def test_tests_failing_under_main_too_keep_the_chosen_settings(session):
    settings = "_BESIDE_SMS.tf32=8"
    log, _, _, gpu = session(settings, fail_chosen=True, fail_main=True)
    assert all(line.startswith(f"benchmarks/with_settings.py {settings} gpubp bench")
               for line in _runs(log, "gpubp bench"))
    assert "main's settings" not in gpu
