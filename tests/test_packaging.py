"""wsd as a new user gets it: `python -m build`, the wheel (built from the sdist) installed into a
fresh virtualenv, `wsd serve` run from a directory that holds folders named like ours (`server/`, `ext/`,
`wsd/`), and the demo page, `/wsd.js`, `/healthz`, a publish and `wsd ctl status` tried on it.

The build and the venvs are cached under .cache/packaging/<hash of the package sources>, so a rerun
with nothing changed takes seconds; CI's clean clone builds once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from harness.net import free_port
from tests.raw_ws import RawWebSocket

REPO = Path(__file__).resolve().parents[1]
PACKAGE_SOURCES = ("server", "ext", "balancer")
BUILD_INPUTS = ("setup.py", "pyproject.toml", "README.md")
SOURCE_SUFFIXES = {".py", ".pyx", ".pxd", ".html", ".js"}

# A folder of the user's own code shadowing ours would make every worker crash-loop.
SHADOWING_PACKAGES = ("server", "ext", "wsd", "balancer")


def _sources_digest() -> str:
    digest = hashlib.sha256()
    files = [REPO / name for name in BUILD_INPUTS]
    for directory in PACKAGE_SOURCES:
        files += sorted(p for p in (REPO / directory).rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file())
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _run(*command: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    if result.returncode != 0:
        shown = " ".join(map(str, command))
        raise AssertionError(f"{shown} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def cache() -> Path:
    path = REPO / ".cache" / "packaging" / _sources_digest()
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.iterdir():
        if stale != path:
            shutil.rmtree(stale, ignore_errors=True)
    return path


@pytest.fixture(scope="module")
def dist(cache: Path) -> Path:
    """`python -m build`: an sdist, and a wheel built from it (as build does by default)."""
    out = cache / "dist"
    if not (out / "done").exists():
        shutil.rmtree(out, ignore_errors=True)
        _run(sys.executable, "-m", "build", "--outdir", out, REPO, cwd=REPO, timeout=900)
        (out / "done").touch()
    return out


def _fresh_venv(cache: Path, name: str, artifact: Path) -> Path:
    """A new virtualenv with only `artifact` (and what it depends on) installed; its bin directory."""
    venv = cache / name
    if not (venv / "done").exists():
        shutil.rmtree(venv, ignore_errors=True)
        _run(sys.executable, "-m", "venv", venv)
        _run(venv / "bin" / "python", "-m", "pip", "install", "-q", artifact, timeout=900)
        (venv / "done").touch()
    return venv / "bin"


def _only(pattern: str, directory: Path) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {directory}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def wheel_bin(cache: Path, dist: Path) -> Path:
    return _fresh_venv(cache, "venv-wheel", _only("wsd-*.whl", dist))


def test_wheel_adds_exactly_one_top_level_package_and_the_wsd_command(dist: Path) -> None:
    wheel = _only("wsd-*.whl", dist)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    top_level = {name.split("/", 1)[0] for name in names}
    dist_info = {t for t in top_level if t.endswith(".dist-info")}
    assert top_level - dist_info == {"wsd"}, f"top-level entries besides wsd: {sorted(top_level - dist_info)}"
    assert "wsd = wsd.server.control.cli:main" in scripts
    # What the server serves is inside the package, and there is one wsd.js.
    assert "wsd/server/static/index.html" in names
    assert [n for n in names if n.endswith("wsd.js")] == ["wsd/server/static/wsd.js"]
    assert any(n.startswith("wsd/ext/ring.") and n.endswith(".so") for n in names)


def test_the_repository_holds_one_copy_of_wsd_js() -> None:
    copies = [p for p in REPO.rglob("wsd.js") if not {".venv", ".cache", "build", "node_modules"} & set(p.parts)]
    assert [p.relative_to(REPO) for p in copies] == [Path("server/static/wsd.js")]


def _version_of(bin_dir: Path) -> str:
    return _run(bin_dir / "python", "-c", "import importlib.metadata as m; print(m.version('wsd'))").strip()


def _shadowing_app_dir(tmp_path: Path) -> Path:
    """An app directory with folders named server/, ext/, wsd/ and balancer/ that break on import."""
    app = tmp_path / "app"
    for name in SHADOWING_PACKAGES:
        (app / name).mkdir(parents=True)
        (app / name / "__init__.py").write_text(f"raise ImportError('the app directory\\'s {name}/ was imported')\n")
    (app / "ext" / "hashing.py").write_text("raise ImportError('the app directory\\'s ext/hashing.py was imported')\n")
    return app


def _http(url: str, data: bytes | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _serve_and_try_everything(bin_dir: Path, tmp_path: Path) -> None:
    app = _shadowing_app_dir(tmp_path)
    port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    log_path = tmp_path / "wsd.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [bin_dir / "wsd", "serve", "--workers", "2", "--port", str(port), "--api-port", str(api_port)],
            cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        status = _wait_until_serving(bin_dir, app, env, server, log_path)
        assert len(status["workers"]) == 2 and status["supervisor"]["state"] == "running"
        assert all(worker["restarts"] == 0 for worker in status["workers"]), status

        code, headers, body = _http(f"http://127.0.0.1:{port}/")
        assert code == 200 and b'from "/wsd.js"' in body and headers["Content-Type"].startswith("text/html")
        code, headers, body = _http(f"http://127.0.0.1:{port}/wsd.js")
        assert code == 200 and b"export function connect" in body
        assert headers["Content-Type"].startswith("text/javascript")
        assert _http(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert _http(f"http://127.0.0.1:{api_port}/healthz")[0] == 200

        client = RawWebSocket("127.0.0.1", port)
        assert client.status == 101
        client.send_text(json.dumps({"op": "sub", "ch": "news", "id": 1}))
        opcode, reply = client.recv_frame()
        assert opcode == 0x1 and json.loads(reply)["op"] == "ok", reply
        code, _, body = _http(
            f"http://127.0.0.1:{api_port}/api/publish", json.dumps({"channel": "news", "data": {"n": 1}}).encode()
        )
        assert code == 200 and json.loads(body) == {"offset": 1}, body
        opcode, delivery = client.recv_frame()
        assert json.loads(delivery) == {"op": "msg", "ch": "news", "off": 1, "data": {"n": 1}}
        client.close()

        table = _run(bin_dir / "wsd", "ctl", "status", cwd=app)
        assert "SLOT" in table and "running" in table
        assert "ImportError" not in log_path.read_text() and "Traceback" not in log_path.read_text()
    finally:
        server.terminate()  # a drain: SIGTERM
        server.send_signal(2)  # then a quick stop
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_serving(bin_dir: Path, app: Path, env: dict, server: subprocess.Popen, log_path: Path) -> dict:
    deadline = time.monotonic() + 30
    last = ""
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"wsd serve exited with {server.returncode}:\n{log_path.read_text()}")
        result = subprocess.run(
            [bin_dir / "wsd", "ctl", "--json", "status"], cwd=app, env=env, capture_output=True, text=True
        )
        if result.returncode == 0:
            status = json.loads(result.stdout)
            last = result.stdout
            if all(w["state"] == "running" and w["accepting"] for w in status["workers"]):
                return status
        time.sleep(0.2)
    raise AssertionError(f"wsd not serving after 30 s; status {last}\n{log_path.read_text()}")


def test_wheel_installed_in_a_fresh_venv_serves_from_an_app_directory(wheel_bin: Path, tmp_path: Path) -> None:
    assert _run(wheel_bin / "wsd", "--version").strip() == f"wsd {_version_of(wheel_bin)}"
    _serve_and_try_everything(wheel_bin, tmp_path)


def test_the_sdist_holds_every_source_of_the_package(dist: Path) -> None:
    """The wheel the other tests install was built from this sdist (`python -m build` makes the
    sdist, then the wheel from it, in a fresh environment): that is what `pip install` of the sdist
    does, so the sdist is not installed a second time (~85 s of compiling). What it holds is checked
    here: every tracked source of the package and the build's inputs, and the C of each extension
    (Cython's output, so that a build needs no Cython run when the .pyx is older)."""
    sdist = _only("wsd-*.tar.gz", dist)
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    tracked = _run("git", "ls-files", *PACKAGE_SOURCES, *BUILD_INPUTS, cwd=REPO).split()
    wanted = {name for name in tracked if Path(name).suffix in SOURCE_SUFFIXES or name in BUILD_INPUTS}
    assert wanted and sorted(wanted - names) == []
    pyx = {name for name in wanted if name.endswith(".pyx")}
    assert {name[:-4] + ".c" for name in pyx} <= names
