"""run_tool with real commands, and parsing of real SAS/XSPEC output text.

The SAS and XSPEC lines below are verbatim output quoted in public documents (sources in the
comments); they are not invented outputs of a tool run.
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from xmmcore.errors import ExternalToolError, ToolError, ToolNotFoundError
from xmmcore.sas_output import (
    parse_sas_messages,
    parse_sas_release,
    parse_sasversion,
    parse_task_version,
    parse_task_versions,
    parse_xspec_error_table,
    parse_xspec_flux,
    parse_xspec_messages,
    parse_xspec_version,
)
from xmmcore.tools import child_env, run_tool

# --------------------------------------------------------------------------------------- run_tool


def test_true_succeeds(tmp_path):
    run = run_tool(["true"], cwd=tmp_path, timeout_s=10)
    assert run.returncode == 0
    assert run.argv == ["true"]
    assert run.cwd == tmp_path
    assert run.duration_s < 5


def test_false_raises_with_exit_code(tmp_path):
    with pytest.raises(ExternalToolError) as info:
        run_tool(["false"], cwd=tmp_path, timeout_s=10)
    err = info.value
    assert err.returncode == 1
    assert err.argv == ["false"]
    assert "exit code: 1" in str(err)
    assert isinstance(err, ToolError)


def test_output_tail_and_log(tmp_path, caplog):
    log = logging.getLogger("test.tools")
    code = (
        "import sys\nfor i in range(100): print('line', i)\nprint('bad thing', file=sys.stderr)\nsys.exit(3)"
    )
    with caplog.at_level(logging.INFO, logger="test.tools"), pytest.raises(ExternalToolError) as info:
        run_tool(
            [sys.executable, "-c", code], cwd=tmp_path, timeout_s=30, log=log, log_path=tmp_path / "task.log"
        )
    assert info.value.returncode == 3
    assert "bad thing" in info.value.output_tail
    assert "line 99" in info.value.output_tail
    assert "line 0\n" not in info.value.output_tail + "\n"  # only the tail
    assert any("line 42" in r.getMessage() for r in caplog.records)
    text = (tmp_path / "task.log").read_text()
    assert "line 0" in text and "line 99" in text and "bad thing" in text


def test_cwd_is_used_and_created_without_chdir(tmp_path):
    before = os.getcwd()
    work = tmp_path / "a" / "b"
    run = run_tool([sys.executable, "-c", "import os; print(os.getcwd())"], cwd=work, timeout_s=30)
    assert Path(run.stdout.strip()) == work.resolve()
    assert os.getcwd() == before


def test_sas_error_line_with_exit_zero_is_a_failure(tmp_path):
    # The line format of XGA issue #129 (cifbuild on a truncated ODF summary file), printed by a
    # child that exits 0: SAS does not always set its exit status.
    line = (
        "** cifbuild: error (UnexpectedEOF), Unexpected EOF in line #1257 of ODF summary file "
        "`/data/0674491201/odf//2225_0674491201_SCX00000SUM.SAS'"
    )
    code = f"print({line!r}); raise SystemExit(0)"
    with pytest.raises(ExternalToolError) as info:
        run_tool([sys.executable, "-c", code], cwd=tmp_path, timeout_s=30)
    err = info.value
    assert err.returncode == 0
    assert err.reason.startswith("cifbuild: UnexpectedEOF: Unexpected EOF in line #1257")
    # the same line is accepted when the caller explicitly does not want SAS parsing
    run = run_tool([sys.executable, "-c", code], cwd=tmp_path, timeout_s=30, check_sas_errors=False)
    assert run.errors[0].code == "UnexpectedEOF"


def test_sas_warning_is_recorded_not_raised(tmp_path):
    code = "print('** odfingest: warning (NoValueAttribute), keyword not found'); print('done')"
    run = run_tool([sys.executable, "-c", code], cwd=tmp_path, timeout_s=30)
    assert [w.code for w in run.warnings] == ["NoValueAttribute"]
    assert run.to_dict()["warnings"][0]["task"] == "odfingest"


def test_missing_executable_says_how_to_point_to_it(tmp_path):
    with pytest.raises(ToolNotFoundError) as info:
        run_tool(
            ["evselect-does-not-exist"],
            cwd=tmp_path,
            timeout_s=5,
            missing_hint="set SAS_DIR or sas.sas_dir in the config",
        )
    msg = str(info.value)
    assert "evselect-does-not-exist" in msg and "sas.sas_dir" in msg
    assert info.value.exit_code == 2
    with pytest.raises(ToolNotFoundError):
        run_tool([str(tmp_path / "nope" / "tool")], cwd=tmp_path, timeout_s=5)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False


def test_timeout_kills_the_grandchild_too(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        print("spawned", child.pid, flush=True)
        time.sleep(120)
    """)
    start = time.monotonic()
    with pytest.raises(ExternalToolError) as info:
        run_tool([sys.executable, "-c", script], cwd=tmp_path, timeout_s=1.5, kill_grace_s=1.0)
    elapsed = time.monotonic() - start
    assert info.value.reason == "timeout"
    assert "spawned" in info.value.output_tail
    assert elapsed < 15
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(grandchild), "grandchild survived the timeout"


def test_timeout_kills_a_child_that_ignores_sigterm(tmp_path):
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('x', flush=True)\ntime.sleep(60)"
    start = time.monotonic()
    with pytest.raises(ExternalToolError) as info:
        run_tool([sys.executable, "-c", script], cwd=tmp_path, timeout_s=1.0, kill_grace_s=0.5)
    assert info.value.reason == "timeout"
    assert time.monotonic() - start < 10


def test_sleep_within_timeout(tmp_path):
    run = run_tool(["sleep", "0.2"], cwd=tmp_path, timeout_s=10)
    assert run.returncode == 0 and run.duration_s >= 0.2


def test_background_grandchild_does_not_hang_a_finished_tool(tmp_path):
    # The parent exits at once, leaving a child holding stdout open: run_tool must return promptly.
    script = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\nprint('bye')"
    )
    start = time.monotonic()
    run = run_tool([sys.executable, "-c", script], cwd=tmp_path, timeout_s=30)
    assert run.stdout.strip() == "bye"
    assert time.monotonic() - start < 10


def test_env_overrides_do_not_leak_between_threads(tmp_path):
    before = dict(os.environ)
    results: dict[str, str] = {}

    def task(name: str) -> None:
        code = "import os, time; time.sleep(0.3); print(os.environ.get('PFILES'), os.environ.get('SAS_CCF'))"
        run = run_tool(
            [sys.executable, "-c", code],
            cwd=tmp_path / name,
            timeout_s=30,
            env={"PFILES": f"/w/{name}/pfiles;/sas/config", "SAS_CCF": f"/w/{name}/ccf.cif"},
        )
        results[name] = run.stdout.strip()

    threads = [threading.Thread(target=task, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {
        "a": "/w/a/pfiles;/sas/config /w/a/ccf.cif",
        "b": "/w/b/pfiles;/sas/config /w/b/ccf.cif",
    }
    assert dict(os.environ) == before


def test_child_env_removes_and_sets():
    env = child_env({"A_NEW": "1", "HOME": None}, base={"HOME": "/h", "PATH": "/bin"})
    assert env == {"A_NEW": "1", "PATH": "/bin"}


def test_stdin_text(tmp_path):
    run = run_tool(
        [sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
        cwd=tmp_path,
        timeout_s=30,
        stdin_text="abc",
    )
    assert run.stdout.strip() == "ABC"


# ------------------------------------------------------------------------------ SAS output parsing

# sasversion output quoted in a public SciServer XMM-Newton notebook (SAS 22.1.0).
SASVERSION_22 = """\
sasversion:- Executing (routine): sasversion  -w 1 -V 2
sasversion:- XMM-Newton SAS release and build information:

SAS release: 22.1.0-a8f2c2afa-20250304
Compiled on: Tue Mar  4 07:29:35 UTC 2025
Compiled by: sasbuild@8b74f8fb7fa2
Platform   : Ubuntu22.04

SAS-related environment variables that are set:

SAS_DIR = /opt/xmmsas/xmmsas_22.1.0-a8f2c2afa-20250304
SAS_PATH = /opt/xmmsas/xmmsas_22.1.0-a8f2c2afa-20250304
SAS_CCFPATH = /home/idies/workspace/headata/FTP/caldb/data/xmm/ccf
"""

# Task banner lines: "sasversion (sasversion-1.3) [xmmsas_20190531_1155-18.0.0]" is quoted in the
# pxsas README (PyPI); the task-page header "espfilt (espfilt-2.7.1) [xmmsas_20190531_1155-18.0.0]"
# is in the SAS 18 documentation; the esky2det started/ended pair is from a public test suite.
BANNERS = """\
esky2det:- Executing (routine): esky2det -v
esky2det:- esky2det (esky2det-1.20) [22.1.0-a8f2c2afa-20250304] started: 2026-09-08T12:01:00.000
esky2det:- esky2det (esky2det-1.20) [22.1.0-a8f2c2afa-20250304] ended: 2026-09-08T12:01:00.000
"""
OLD_BANNER = (
    "espfilt:- espfilt (espfilt-2.7.1) [xmmsas_20190531_1155-18.0.0] started: 2019-06-02T10:00:00.000"
)


def test_parse_sasversion_22():
    info = parse_sasversion(SASVERSION_22)
    assert info["release"] == "22.1.0"
    assert info["build"] == "22.1.0-a8f2c2afa-20250304"
    assert info["platform"] == "Ubuntu22.04"
    assert info["SAS_DIR"] == "/opt/xmmsas/xmmsas_22.1.0-a8f2c2afa-20250304"
    assert info["SAS_CCFPATH"].endswith("/caldb/data/xmm/ccf")


def test_parse_task_banners():
    assert parse_task_versions(BANNERS) == {"esky2det": "esky2det-1.20"}
    assert parse_task_version(OLD_BANNER, "espfilt") == "espfilt-2.7.1"
    assert parse_task_version(OLD_BANNER, "evselect") is None
    assert parse_sas_release(OLD_BANNER) == "18.0.0"
    assert parse_sas_release(BANNERS) == "22.1.0"
    assert parse_sas_release("nothing here") is None


def test_parse_sas_messages_error_and_warning():
    text = 'evselect:- Executing (routine): evselect table=pn.fits expression=true -w 1 -V 2\n** cifbuild: error (UnexpectedEOF), Unexpected EOF in line #1257 of ODF summary file `/home/dt237/apollo_mnt/xmm_obs/data/0674491201/odf//2225_0674491201_SCX00000SUM.SAS\'\n** odfingest: warning (NoValueAttribute), attribute has no value\n#### Sometimes XMM/SAS will give warnings like "** odfingest: warning", most are OK.'
    msgs = parse_sas_messages(text)
    assert [(m.task, m.level, m.code) for m in msgs] == [
        ("cifbuild", "error", "UnexpectedEOF"),
        ("odfingest", "warning", "NoValueAttribute"),
    ]
    assert msgs[0].message.startswith("Unexpected EOF in line #1257 of ODF summary file")
    # the error code need not be on any list of known codes
    assert parse_sas_messages("** mytask: error (SomethingNew), oops")[0].code == "SomethingNew"


# ---------------------------------------------------------------------------- XSPEC output parsing

# XSPEC start-up banners quoted in public tutorials (12.10.1 and 12.12.0).
XSPEC_BANNER_1210 = "\t\tXSPEC version: 12.10.1\n\tBuild Date/Time: Tue May 21 15:51:45 2019\n"
XSPEC_BANNER_1212 = (
    "                XSPEC version: 12.12.0\n        Build Date/Time: Fri Sep  3 10:58:24 2021\n"
)
# `error` table and a `flux` line with its error range, quoted in public analysis scripts.
XSPEC_ERROR = """\
*** Parameter 3 is not a variable model parameter and no confidence range will be calculated.
 Parameter   Confidence Range (2.706)
     1       3.9856      4.01636    (-0.0108282,0.0199298)
     2      9.26066      10.2535    (-0.403861,0.588933)
     4      93.8147      100.431    (-3.46,3.15675)
     5  -0.00100814 -0.000983041    (-1.26006e-05,1.24954e-05)
"""
XSPEC_FLUX = """\
 Model Flux 0.0014736 photons (2.524e-12 ergs/cm^2/s) range (0.30000 - 10.000 keV)
     Error range  0.001460 - 0.001491    (2.498e-12 - 2.556e-12)  (90.00% confidence)
"""
XSPEC_WARNINGS = """\
***Warning: Data file onoff_pha_on.fits has both POISSERR key set to 'true' and a STAT_ERR column.
***Warning: spectrum TELESCOPE keyword (GLAST) is not consistent with that from background/correction file ().
Warning: RMF DETNAM keyword (DET0) is not consistent with that in spectrum (NONE)
"""


def test_parse_xspec_version():
    assert parse_xspec_version(XSPEC_BANNER_1210) == "12.10.1"
    assert parse_xspec_version(XSPEC_BANNER_1212) == "12.12.0"
    assert parse_xspec_version("no banner") is None


def test_parse_xspec_error_table():
    rows = parse_xspec_error_table(XSPEC_ERROR)
    assert sorted(rows) == [1, 2, 4, 5]
    assert rows[1] == {
        "lo": 3.9856,
        "hi": 4.01636,
        "err_lo": -0.0108282,
        "err_hi": 0.0199298,
        "delta_stat": 2.706,
    }
    assert rows[5]["lo"] == pytest.approx(-0.00100814)
    assert rows[5]["err_hi"] == pytest.approx(1.24954e-05)


def test_parse_xspec_flux():
    (flux,) = parse_xspec_flux(XSPEC_FLUX)
    assert flux["lo_kev"] == 0.3 and flux["hi_kev"] == 10.0
    assert flux["erg"] == pytest.approx(2.524e-12)
    assert flux["photons"] == pytest.approx(0.0014736)
    assert (flux["erg_lo"], flux["erg_hi"], flux["cl"]) == (2.498e-12, 2.556e-12, 90.0)


def test_parse_xspec_messages():
    msgs = parse_xspec_messages(XSPEC_WARNINGS + "***XSPEC Error: Invalid model component name\n")
    assert [m.level for m in msgs] == ["warning", "warning", "error"]
    assert msgs[0].message.startswith("Data file onoff_pha_on.fits has both POISSERR")
    assert msgs[2].message == "Invalid model component name"
