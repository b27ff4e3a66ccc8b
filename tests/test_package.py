"""The package as a user gets it: the built wheel installed into a fresh environment and its commands
run from outside the source tree; ``--version``; importing the library changes nothing process-wide;
the commands set up their own process."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from s2svr_lightning import commands

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
COMMANDS = ("s2svr-train", "s2svr-restore", "s2svr-prepare", "s2svr-report", "s2svr-score", "s2svr-flow")
MODULES = (
    "s2svr_lightning",
    "s2svr_lightning.restore",
    "s2svr_lightning.prepare",
    "s2svr_lightning.report",
    "s2svr_lightning.flow",
)


def _source_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OMP_WAIT_POLICY", None)
    return env


def _python(code: str, *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 300):
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env or _source_env(),
        cwd=cwd,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# ------------------------------------------------------------------------------------------ the wheel
@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory):
    """The wheel built from this tree (``pip wheel --no-deps``, no build isolation: offline) and installed
    with ``--no-deps`` into a new virtual environment that finds the heavy dependencies where the test's
    interpreter finds them. Returns ``(venv's bin folder, wheel path, venv's package folder)``."""
    tmp = tmp_path_factory.mktemp("wheel")
    tree = tmp / "tree"  # a copy: building leaves build/ and *.egg-info beside the sources
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(SRC, tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp / "dist"),
            str(tree),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = (tmp / "dist").glob("s2svr_lightning-*.whl")

    venv = tmp / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        timeout=300,
    )
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # --system-site-packages reaches the base interpreter's packages; when the test runs in a virtual
    # environment (make test's .venv), its packages are in that environment: list them in a .pth file
    # (plain folders: the .pth files there, such as an editable install's, are not run)
    parents = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "_test_interpreter_packages.pth").write_text("\n".join(dict.fromkeys(parents)) + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "install", "--no-deps", "--no-index"]
        + ["--force-reinstall", str(wheel)],
        capture_output=True,
        text=True,
        env=_wheel_env(),
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return bindir, wheel, purelib / "s2svr_lightning"


def _wheel_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "OMP_WAIT_POLICY")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run_installed(bindir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=_wheel_env(), cwd=cwd, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_the_wheel_ships_the_configs_the_license_and_the_type_marker(installed_wheel):
    _, wheel, _ = installed_wheel
    names = zipfile.ZipFile(wheel).namelist()
    assert "s2svr_lightning/py.typed" in names
    assert "s2svr_lightning/conf/config.yaml" in names and "s2svr_lightning/conf/task/demo.yaml" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in COMMANDS:
        assert f"{command} = s2svr_lightning.commands:" in scripts


@pytest.mark.slow
def test_the_installed_commands_run_from_outside_the_source_tree(installed_wheel, tmp_path):
    bindir, wheel, package = installed_wheel
    version = wheel.name.split("-")[1]  # s2svr_lightning-<version>-py3-none-any.whl
    expected = f"s2svr-lightning {version} from {package.resolve()} "
    for command in COMMANDS:
        out = _run_installed(bindir, bindir / command, "--version", cwd=tmp_path).stdout
        assert out.startswith(expected), (command, out)
    for module in MODULES:
        out = _run_installed(bindir, bindir / "python", "-m", module, "--version", cwd=tmp_path).stdout
        assert out.startswith(expected), (module, out)
    # the configs shipped inside the wheel: compose the demo without training
    job = _run_installed(bindir, bindir / "s2svr-train", "+task=demo", "--cfg", "job", cwd=tmp_path).stdout
    cfg = OmegaConf.create(job)
    shipped = OmegaConf.load(SRC / "s2svr_lightning" / "conf" / "task" / "demo.yaml")
    assert cfg.task_name == "demo"
    assert cfg.restorer.module.flow_freeze_steps == shipped.restorer.module.flow_freeze_steps
    where = _run_installed(
        bindir,
        bindir / "python",
        "-c",
        "import json, s2svr_lightning as s; from s2svr_lightning.conf import CONF_DIR; "
        "print(json.dumps([s.__file__, str(CONF_DIR), s.__version__]))",
        cwd=tmp_path,
    ).stdout
    file, conf_dir, imported_version = json.loads(where)
    assert Path(file).resolve().parent == package.resolve()
    assert Path(conf_dir).resolve() == (package / "conf").resolve()
    assert REPO.resolve() not in Path(file).resolve().parents
    assert imported_version == version


# ------------------------------------------------------------------------------------------ the version
def test_version_comes_from_the_metadata_or_the_source_trees_pyproject(tmp_path):
    assert commands.version_line().startswith(f"s2svr-lightning {commands.package_version()} from ")
    # a copy of the source tree that is not installed anywhere reads its pyproject.toml
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(SRC, tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    code = """
        import importlib.metadata as md, sys
        def missing(name):
            raise md.PackageNotFoundError(name)
        md.version = missing  # as if nothing were installed
        import s2svr_lightning
        print(s2svr_lightning.__version__, s2svr_lightning.__file__)
    """
    env = dict(_source_env(), PYTHONPATH=str(tmp_path / "src"))
    version, file = _python(code, env=env, cwd=tmp_path).split()
    assert Path(file).resolve().is_relative_to(tmp_path.resolve())
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'version = "{version.removesuffix("+source")}"' in pyproject and version.endswith("+source")
    (tmp_path / "pyproject.toml").unlink()
    version, _ = _python(code, env=env, cwd=tmp_path).split()
    assert version == "0+unknown"


@pytest.mark.parametrize("module", MODULES)
def test_every_command_takes_version_from_the_source_tree(module, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        capture_output=True,
        text=True,
        env=_source_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        f"s2svr-lightning {commands.package_version()} from {SRC / 's2svr_lightning'}"
    )


# ------------------------------------------------------------------------------ no process-wide changes
def test_importing_the_library_changes_nothing_process_wide():
    # the third-party packages first: what they do when imported (Lightning sets two torch variables)
    # is theirs; then every module of this package and every public name
    code = """
        import importlib, json, logging, os, pkgutil, warnings
        import hydra, lightning, matplotlib, numpy, omegaconf, torch, torchmetrics

        def state():
            return {
                "env": dict(os.environ),
                "threads": [torch.get_num_threads(), torch.get_num_interop_threads()],
                "matmul": torch.get_float32_matmul_precision(),
                "grad": torch.is_grad_enabled(),
                "dtype": str(torch.get_default_dtype()),
                "warnings": [repr(f) for f in warnings.filters],
                "handlers": {
                    name: [repr(h) for h in lg.handlers]
                    for name, lg in logging.Logger.manager.loggerDict.items()
                    if isinstance(lg, logging.Logger) and lg.handlers
                } | {"root": [repr(h) for h in logging.getLogger().handlers]},
            }

        before = state()
        import s2svr_lightning
        for module in pkgutil.walk_packages(s2svr_lightning.__path__, "s2svr_lightning."):
            if module.name != "s2svr_lightning.restore.__main__":  # runs the command (python -m)
                importlib.import_module(module.name)
        for name in s2svr_lightning.__all__:
            getattr(s2svr_lightning, name)
        after = state()
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        if "env" in changed:
            b, a = changed["env"]
            changed["env"] = {k: (b.get(k), a.get(k)) for k in set(b) | set(a) if b.get(k) != a.get(k)}
        print(json.dumps(changed))
    """
    assert json.loads(_python(code).strip().splitlines()[-1]) == {}


def test_the_commands_set_up_their_own_process():
    # `python -m s2svr_lightning.restore`: while Python locates the module, sys.argv[0] is "-m"
    as_module = """
        import os, sys
        sys.argv[0] = "-m"
        sys.orig_argv = [sys.executable, "-X", "utf8", "-m", "s2svr_lightning.restore", "--version"]
        import s2svr_lightning
        print(os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
    """
    assert _python(as_module).split() == ["PASSIVE", "False"]  # set before torch is imported
    # another program run with -m that imports the library: untouched
    other = as_module.replace('"s2svr_lightning.restore"', '"their_tool"')
    assert _python(other).split() == ["None", "False"]
    # the console scripts' entry points
    script = """
        import os, sys
        from s2svr_lightning import commands
        sys.argv = ["s2svr-report", "--version"]
        try:
            commands.report()
        except SystemExit as exit:
            print(exit.code, os.environ.get("OMP_WAIT_POLICY"))
    """
    assert _python(script).split()[-2:] == ["0", "PASSIVE"]
    # a user's own choice wins
    env = dict(_source_env(), OMP_WAIT_POLICY="ACTIVE")
    assert _python(script, env=env).split()[-1] == "ACTIVE"
