"""Security checks: how external commands are run, where files may be written, what listens on the network.

The static checks walk the AST of every ``.py`` file of the packages (``xmmcore``, ``survey``, ``catalog``)
and of ``benchmarks`` and ``slurm``. They look at calls, not at text, so that a docstring which *mentions*
``os.system`` is not a hit and an aliased import (``from os import system as run``) still is.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import yaml

from xmmcore.errors import InputDataError
from xmmcore.observation import discover, validate_obsid

REPO = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("xmmcore", "survey", "catalog", "benchmarks", "slurm")

# The only modules allowed to start processes: the one tool runner, and the cluster code that
# submits SLURM jobs (dask-jobqueue does it itself, but a wrapper may call sbatch/squeue/scancel).
SUBPROCESS_ALLOWED = ("xmmcore/tools.py",)
SUBPROCESS_ALLOWED_PREFIXES = ("survey/cluster", "survey/slurm", "slurm/")

_PROCESS_MODULES = {"subprocess", "pty", "pexpect", "sh", "plumbum"}
_BANNED_OS = {
    "system",
    "popen",
    "chdir",
    "fchdir",
    "putenv",
    "unsetenv",
    "execl",
    "execle",
    "execlp",
    "execlpe",
    "execv",
    "execve",
    "execvp",
    "execvpe",
    "spawnl",
    "spawnle",
    "spawnlp",
    "spawnlpe",
    "spawnv",
    "spawnve",
    "spawnvp",
    "spawnvpe",
    "posix_spawn",
    "posix_spawnp",
    "startfile",
}
_SHELL_FUNCS = {"getoutput", "getstatusoutput"}  # subprocess helpers that always use a shell
_UNSAFE_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
_SAFE_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _python_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED_DIRS:
        root = REPO / name
        if root.is_dir():
            files += sorted(p for p in root.rglob("*.py") if ".venv" not in p.parts)
    return files


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


class _Scanner(ast.NodeVisitor):
    """Resolve imported names to dotted paths and record the calls of interest."""

    def __init__(self, rel: str):
        self.rel = rel
        self.alias: dict[str, str] = {}  # local name -> dotted origin ("sp" -> "subprocess")
        self.hits: list[tuple[str, int, str]] = []  # (kind, line, detail)
        self.func: list[str] = []
        self.where: dict[int, str] = {}  # line of a hit -> enclosing function

    def _in_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.func.append(node.name)
        self.generic_visit(node)
        self.func.pop()

    visit_FunctionDef = _in_function
    visit_AsyncFunctionDef = _in_function

    def _hit(self, kind: str, line: int, detail: str) -> None:
        self.hits.append((kind, line, detail))
        self.where[line] = self.func[-1] if self.func else "<module>"

    # --- imports -------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            if a.name.split(".")[0] in _PROCESS_MODULES:
                self._hit("process-import", node.lineno, a.name)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        for a in node.names:
            self.alias[a.asname or a.name] = f"{mod}.{a.name}"
        if mod.split(".")[0] in _PROCESS_MODULES:
            self._hit("process-import", node.lineno, mod)
        if mod == "os":
            for a in node.names:
                if a.name in _BANNED_OS:
                    self._hit("banned-os", node.lineno, f"from os import {a.name}")
        self.generic_visit(node)

    # --- calls ---------------------------------------------------------------------------------
    def _dotted(self, func: ast.expr) -> str:
        parts: list[str] = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if isinstance(func, ast.Name):
            parts.append(self.alias.get(func.id, func.id))
        else:
            return ""
        return ".".join(reversed(parts))

    def visit_Call(self, node: ast.Call) -> None:
        name = self._dotted(node.func)
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                self._hit("shell", node.lineno, f"{name}(shell=...)")
        head, _, last = name.rpartition(".")
        if head == "os" and last in _BANNED_OS:
            self._hit("banned-os", node.lineno, name)
        if head == "os.environ" and last in {
            "update",
            "setdefault",
            "pop",
            "popitem",
            "clear",
            "__setitem__",
        }:
            self._hit("environ-edit", node.lineno, name)
        if name.split(".")[0] in _PROCESS_MODULES:
            self._hit("process-call", node.lineno, name)
            if last in _SHELL_FUNCS:
                self._hit("shell", node.lineno, name)
        if name in {"asyncio.create_subprocess_shell"}:
            self._hit("shell", node.lineno, name)
        if name in {"asyncio.create_subprocess_exec"}:
            self._hit("process-call", node.lineno, name)
        if head == "yaml" and last in _UNSAFE_YAML:
            self._hit("yaml", node.lineno, name)
        if head == "yaml" and last in {"load", "load_all"}:
            loader = next((kw.value for kw in node.keywords if kw.arg == "Loader"), None)
            if loader is None and len(node.args) > 1:
                loader = node.args[1]
            loader_name = self._dotted(loader) if loader is not None else ""
            if loader_name.rpartition(".")[2] not in _SAFE_LOADERS:
                self._hit("yaml", node.lineno, f"{name}(Loader={loader_name or 'missing'})")
        if name in {"eval", "exec"} or (name == "builtins.eval"):
            self._hit("eval", node.lineno, name)
        if name in {"pickle.load", "pickle.loads", "marshal.loads"}:
            self._hit("pickle", node.lineno, name)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            if isinstance(target, ast.Subscript) and self._dotted(target.value) == "os.environ":
                self._hit("environ-edit", node.lineno, "os.environ[...] = ...")
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            if isinstance(target, ast.Subscript) and self._dotted(target.value) == "os.environ":
                self._hit("environ-edit", node.lineno, "del os.environ[...]")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and "0.0.0.0" in node.value and len(node.value) < 40:
            self._hit("bind-all", node.lineno, repr(node.value))


# Reviewed exceptions: (file, function, kind) -> why it is acceptable. Keep this list short and argued.
EXEMPT: dict[tuple[str, str, str], str] = {
    (
        "xmmcore/fitting/xsmodels.py",
        "_headas_set",
        "environ-edit",
    ): "the XSPEC model library reads HEADAS with getenv() while it initialises in this process, so it cannot "
    "be passed as env=; set for the block only and restored in finally",
}


def _scan() -> dict[str, list[tuple[str, int, str]]]:
    out = {}
    for path in _python_files():
        rel = _rel(path)
        scanner = _Scanner(rel)
        scanner.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        out[rel] = [
            (k, line, d) for k, line, d in scanner.hits if (rel, scanner.where.get(line, ""), k) not in EXEMPT
        ]
    return out


@pytest.fixture(scope="module")
def scan() -> dict[str, list[tuple[str, int, str]]]:
    result = _scan()
    assert any(p.startswith("xmmcore/") for p in result), (
        "no xmmcore/*.py found: the scan looked in the wrong place"
    )
    return result


def _report(scan: dict, kinds: set[str], allowed=lambda rel: False) -> list[str]:
    return [
        f"{rel}:{line}: {detail}"
        for rel, hits in scan.items()
        if not allowed(rel)
        for kind, line, detail in hits
        if kind in kinds
    ]


# ----------------------------------------------------------------------------------------------
# Static checks
# ----------------------------------------------------------------------------------------------


def test_scanner_catches_what_it_should():
    """The scanner itself: each banned form is a hit, the safe forms are not."""
    bad = """
import os, subprocess as sp, yaml
from os import system as run
sp.run("ls", shell=True)
os.system("ls")
os.popen("ls")
os.chdir("/tmp")
run("ls")
yaml.load(open("x"))
yaml.load(open("x"), Loader=yaml.FullLoader)
yaml.unsafe_load("a: 1")
os.environ["X"] = "1"
os.environ.update(X="1")
sp.getoutput("ls")
eval("1+1")
addr = "0.0.0.0:8787"
"""
    good = '''
import yaml
yaml.load(open("x"), Loader=yaml.SafeLoader)
yaml.safe_load("a: 1")
"""os.system is banned, shell=True too"""
env = dict(os.environ); env["X"] = "1"
'''
    s_bad = _Scanner("x.py")
    s_bad.visit(ast.parse(bad))
    kinds = [k for k, _, _ in s_bad.hits]
    assert kinds.count("shell") == 2
    assert kinds.count("banned-os") >= 4  # system, popen, chdir, aliased import of system
    assert kinds.count("yaml") == 3
    assert kinds.count("environ-edit") == 2
    assert "eval" in kinds and "bind-all" in kinds and "process-call" in kinds
    s_good = _Scanner("y.py")
    s_good.visit(ast.parse(good))
    assert s_good.hits == []


def test_no_shell_true_anywhere(scan):
    offenders = _report(scan, {"shell"})
    assert not offenders, (
        "shell=True / shell helpers found (use argv lists via xmmcore.tools.run_tool):\n"
        + "\n".join(offenders)
    )


def test_exemptions_are_still_needed():
    """An exemption whose function no longer does the exempted thing must be removed from EXEMPT."""
    for (rel, func, kind), why in EXEMPT.items():
        path = REPO / rel
        if not path.exists():
            continue
        scanner = _Scanner(rel)
        scanner.visit(ast.parse(path.read_text(encoding="utf-8")))
        assert any(k == kind and scanner.where.get(line) == func for k, line, _ in scanner.hits), (
            f"EXEMPT entry {(rel, func, kind)} matches nothing any more: delete it"
        )
        assert len(why) > 40


def test_no_os_system_popen_chdir_exec(scan):
    offenders = _report(scan, {"banned-os"})
    assert not offenders, "os.system/os.popen/os.chdir/os.exec*/os.spawn* found:\n" + "\n".join(offenders)


def test_subprocess_only_in_the_tool_runner_and_cluster_code(scan):
    def allowed(rel: str) -> bool:
        return rel in SUBPROCESS_ALLOWED or rel.startswith(SUBPROCESS_ALLOWED_PREFIXES)

    offenders = _report(scan, {"process-import", "process-call"}, allowed)
    assert not offenders, (
        "processes started outside xmmcore/tools.py and the SLURM cluster code "
        "(call xmmcore.tools.run_tool instead):\n" + "\n".join(offenders)
    )


def test_yaml_is_only_safe_loaded(scan):
    offenders = _report(scan, {"yaml"})
    assert not offenders, "yaml loaded with a non-safe loader:\n" + "\n".join(offenders)


def test_no_global_environment_edits(scan):
    offenders = _report(scan, {"environ-edit"})
    assert not offenders, "os.environ edited globally (pass env= to run_tool instead):\n" + "\n".join(
        offenders
    )


def test_no_eval_exec_or_pickle_of_inputs(scan):
    offenders = _report(scan, {"eval", "pickle"})
    assert not offenders, "eval/exec/pickle.load found:\n" + "\n".join(offenders)


def test_nothing_binds_all_interfaces_by_default(scan):
    offenders = _report(scan, {"bind-all"})
    assert not offenders, "a 0.0.0.0 address is hard-coded (bind 127.0.0.1 unless configured):\n" + "\n".join(
        offenders
    )


def test_tool_runner_uses_argv_and_its_own_session():
    """run_tool must pass a list argv (no shell) and start a new session so that a timeout kills the group."""
    tools = REPO / "xmmcore" / "tools.py"
    tree = ast.parse(tools.read_text())
    popen_calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in {"Popen", "run", "check_output"}
    ]
    assert popen_calls, "xmmcore/tools.py starts no process?"
    for call in popen_calls:
        kws = {kw.arg: kw.value for kw in call.keywords}
        assert "shell" not in kws or (isinstance(kws["shell"], ast.Constant) and kws["shell"].value is False)
        if call.func.attr == "Popen":
            assert "start_new_session" in kws or "preexec_fn" in kws or "process_group" in kws, (
                "Popen without start_new_session: a timeout would kill only the parent, not SAS's children"
            )


def test_run_tool_passes_shell_metacharacters_literally(tmp_path):
    """An argument such as a user's region expression reaches the program verbatim: nothing is interpreted."""
    import shutil

    from xmmcore import tools

    echo = shutil.which("echo")
    if echo is None:
        pytest.skip("no echo on PATH")
    marker = tmp_path / "pwned"
    payload = f"$(touch {marker}); `touch {marker}` && touch {marker} | touch {marker}"
    run = tools.run_tool([echo, payload, "*"], cwd=tmp_path, timeout_s=30)
    assert payload in run.output and " *" in run.output  # no substitution, no globbing
    assert not marker.exists()


def test_run_tool_refuses_a_command_string(tmp_path):
    """A single string is not split by a shell: it is refused (or not found), never run."""
    from xmmcore import tools
    from xmmcore.errors import ToolError

    marker = tmp_path / "pwned"
    with pytest.raises((TypeError, ValueError, ToolError)):
        tools.run_tool(f"touch {marker}", cwd=tmp_path, timeout_s=30)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Paths confined to the data/results roots
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obsid",
    [
        "../etc",
        "..",
        ".",
        "a/b",
        "/abs",
        "a\\b",
        "0123/../../x",
        "",
        "x" * 65,
        "a b",
        "a\x00b",
        "~root",
        "$HOME",
        "0201901401/..",
        "..0201901401",
    ],
)
def test_validate_obsid_refuses_path_like_names(obsid):
    with pytest.raises(InputDataError) as info:
        validate_obsid(obsid)
    assert "ObsID" in str(info.value)


@pytest.mark.parametrize("obsid", ["0201901401", "P0201901401", "a907_1", "sim-0001", "obs.1"])
def test_validate_obsid_accepts_plain_names(obsid):
    assert validate_obsid(obsid) == obsid


def test_discover_cannot_escape_the_data_root(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "pn_evts.fits").write_bytes(b"not read")
    with pytest.raises(InputDataError):
        discover(data, "../secret")


def test_survey_refuses_obsid_with_path_characters(tmp_path):
    """An ObsID list naming ``../x`` must be refused before anything is written outside results/."""
    from survey import config
    from xmmcore.errors import ConfigError

    data = tmp_path / "data"
    (data / "good").mkdir(parents=True)
    results = tmp_path / "results"
    before = set(tmp_path.rglob("*"))
    with pytest.raises((ConfigError, InputDataError)) as info:
        cfg = config.load_config(
            overrides={"data_dir": str(data), "results_dir": str(results), "obsids": ["good", "../escape"]}
        )
        from survey import api

        api.run_survey(cfg)
    assert "../escape" in str(info.value)
    created = set(tmp_path.rglob("*")) - before
    assert not any("escape" in str(p) for p in created)
    assert not (tmp_path / "escape").exists()


def _victim(tmp_path):
    """A folder beside results/ that a path-traversing ObsID would reach, with a file to check afterwards."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("do not delete")
    (tmp_path / "results").mkdir()
    (tmp_path / "data").mkdir()
    return victim


def test_obsid_list_file_with_traversal_refused(tmp_path):
    from survey import api
    from xmmcore.errors import ConfigError

    lst = tmp_path / "obsids.txt"
    lst.write_text("# survey\n0201901401\n../victim\n")
    with pytest.raises(ConfigError) as info:
        api.read_obsid_list(lst)
    assert f"{lst}:3" in str(info.value) and "../victim" in str(info.value)


def test_targets_csv_with_traversal_refused(tmp_path):
    from survey import api
    from xmmcore.errors import ConfigError

    csv = tmp_path / "targets.csv"
    csv.write_text("obsid,name,z\n0201901401,A907,0.16\n../victim,evil,0.1\n")
    with pytest.raises((ConfigError, InputDataError)) as info:
        api.read_targets_csv(csv)
    assert str(csv) in str(info.value) and "../victim" in str(info.value)


def test_clean_cannot_delete_outside_results(tmp_path):
    from survey import status
    from xmmcore.errors import ConfigError

    victim = _victim(tmp_path)
    for bad in ("../victim", "..", str(victim), "victim/../../victim"):
        with pytest.raises((InputDataError, ConfigError)) as info:
            status.clean_obsid(tmp_path / "results", bad)
        assert bad in str(info.value)
    assert (victim / "precious.txt").read_text() == "do not delete"


def test_run_one_refuses_traversing_obsid(tmp_path):
    from survey import api, config
    from xmmcore.errors import ConfigError

    victim = _victim(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    cfg = config.load_config(
        overrides={"data_dir": str(tmp_path / "data"), "results_dir": str(tmp_path / "results")}
    )
    with pytest.raises((ConfigError, InputDataError)):
        api.run_one(cfg, "../victim")
    assert (victim / "precious.txt").read_text() == "do not delete"
    assert not (victim / "steps").exists() and not (victim / "logs").exists()
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert set(after) - set(before) <= {"config.resolved.yaml", "logs", "survey.log"}


# ----------------------------------------------------------------------------------------------
# Network: dashboard and servers on localhost unless configured
# ----------------------------------------------------------------------------------------------


def _defaults() -> dict:
    return yaml.safe_load((REPO / "survey" / "defaults.yaml").read_text())


def test_default_dashboard_is_localhost_only():
    cluster = _defaults()["cluster"]
    host = str(cluster["dashboard_address"]).rsplit(":", 1)[0]
    assert host in {"127.0.0.1", "localhost", "[::1]"}, f"dashboard_address defaults to {host!r}"
    assert cluster["kind"] == "local"


def test_cluster_code_passes_the_configured_dashboard_address():
    """Every LocalCluster/Client(...) the survey creates must be given a dashboard address or host explicitly."""
    files = list((REPO / "survey").rglob("*.py")) if (REPO / "survey").is_dir() else []
    calls = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                fname = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                if fname in {"LocalCluster", "Scheduler"}:
                    calls.append((_rel(path), node))
    if not calls:
        pytest.skip("no LocalCluster(...) in survey/ yet")
    for rel, node in calls:
        kws = {kw.arg for kw in node.keywords}
        assert kws & {"dashboard_address", "host", "ip"} or None in kws, (
            f"{rel}:{node.lineno}: LocalCluster without dashboard_address/host: dask would pick its own default"
        )


def test_local_cluster_listens_on_loopback_only():
    """Start the survey's local cluster from the default config and check where it listens."""
    from survey import cluster as cluster_mod
    from survey import config

    cfg = config.load_config(overrides={"cluster.workers": 1, "cluster.dashboard_address": "127.0.0.1:0"})
    handle = cluster_mod.start_cluster(cfg, results_dir=".")
    try:
        addr = handle.client.scheduler.address
        assert addr.startswith("tcp://127.0.0.1:"), f"scheduler listens on {addr}"
        workers = handle.client.scheduler_info()["workers"]
        assert workers and all(w.startswith("tcp://127.0.0.1:") for w in workers), (
            f"workers on {list(workers)}"
        )
        link = handle.dashboard_link or ""
        if link:
            assert "127.0.0.1" in link or "localhost" in link, f"dashboard at {link}"
    finally:
        handle.close()


def test_os_environ_unchanged_by_imports():
    """Importing the packages must not edit the process environment."""
    before = dict(os.environ)
    for name in ("xmmcore", "xmmcore.pipeline", "survey", "catalog"):
        __import__(name)
    assert dict(os.environ) == before
