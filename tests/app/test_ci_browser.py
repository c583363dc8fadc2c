""".ci/browser.sh (sourced by .ci/run) installs Debian's chromium only when it is missing.

apt-get, id and chromium are stand-ins on PATH here: nothing is installed or downloaded.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "browser.sh"


def _fake_bin(tmp_path: Path, *, fail_installs: int) -> Path:
    """apt-get that logs its arguments, fails the first ``fail_installs`` installs, then
    'installs' a fake chromium; id that says root."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    chromium = tmp_path / "chromium"
    (bin_dir / "apt-get").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{tmp_path}/apt.log"\n'
        'if [ "$1" = "install" ]; then\n'
        f'  n=$(grep -c "^install" "{tmp_path}/apt.log")\n'
        f'  if [ "$n" -le {fail_installs} ]; then exit 100; fi\n'
        f'  printf "#!/bin/sh\\necho Chromium 1.2.3 fake\\n" > "{chromium}"\n'
        f'  chmod +x "{chromium}"\n'
        "fi\n"
    )
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def _source(tmp_path: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
               DSSM_CHROMIUM=str(tmp_path / "chromium"))
    # Sourced like .ci/run does; the caller's shell must keep running whatever happens.
    return subprocess.run(
        ["bash", "-c", f'source "{SCRIPT}"; echo "rc=$? skip=$PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"'],
        env=env, capture_output=True, text=True, timeout=60, check=True)


def _apt_log(tmp_path: Path) -> list[str]:
    log = tmp_path / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("fail_installs,expected_calls", [
    (0, ["install -y chromium"]),
    (1, ["install -y chromium", "update", "install -y chromium"]),   # stale package lists
])
def test_installs_chromium_with_apt_when_missing(tmp_path, fail_installs, expected_calls) -> None:
    out = _source(tmp_path, _fake_bin(tmp_path, fail_installs=fail_installs))
    assert _apt_log(tmp_path) == expected_calls
    assert out.stdout.splitlines()[-2:] == ["browser: Chromium 1.2.3 fake", "rc=0 skip=1"]


def test_does_nothing_when_chromium_is_there(tmp_path) -> None:
    bin_dir = _fake_bin(tmp_path, fail_installs=0)
    chromium = tmp_path / "chromium"
    chromium.write_text("#!/bin/sh\necho Chromium 9 present\n")
    chromium.chmod(0o755)
    out = _source(tmp_path, bin_dir)
    assert _apt_log(tmp_path) == []
    assert out.stdout.splitlines() == ["browser: Chromium 9 present", "rc=0 skip=1"]


def test_reports_failure_without_killing_the_caller(tmp_path) -> None:
    out = _source(tmp_path, _fake_bin(tmp_path, fail_installs=99))
    assert _apt_log(tmp_path) == ["install -y chromium", "update", "install -y chromium"]
    assert out.stdout.splitlines()[-1] == "rc=1 skip=1"
    assert "browser: could not install chromium" in out.stderr
