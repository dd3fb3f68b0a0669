"""A demo network for the Python tests: `verbund demo --serve` in a child process.

The binary is $VERBUND_BIN, else $CARGO_TARGET_DIR/debug/verbund, else target/debug/verbund
(build it first: `cargo build --bin verbund`; .ci/python-test does). A failing test's report
carries the server's output.
"""

import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCALE = os.environ.get("VERBUND_DEMO_SCALE", "0.2")
START_SECONDS = 120
_server_logs = []  # (name, path) of the running server's stdout and stderr


def verbund_binary():
    if os.environ.get("VERBUND_BIN"):
        return pathlib.Path(os.environ["VERBUND_BIN"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug" / "verbund"


def server_output():
    return "\n".join(
        f"---- verbund demo --serve {name} ----\n{path.read_text(errors='replace')}"
        for name, path in _server_logs
        if path.exists()
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _server_logs:
        report.sections.append(("verbund demo --serve output", server_output()))


@pytest.fixture(scope="session")
def verbund():
    """The `verbund` binary (path)."""
    binary = verbund_binary()
    if not binary.exists():
        pytest.fail(f"{binary} does not exist: build it with `cargo build --bin verbund` (or set VERBUND_BIN)")
    return binary


@pytest.fixture(scope="session")
def demo(verbund, tmp_path_factory):
    """The info file's contents of a served demo network ({api, flight_sql, ca, token_file,
    project}); stopped with SIGTERM (then SIGKILL after 10 s) at the end of the session."""
    tmp = tmp_path_factory.mktemp("demo")
    info_file = tmp / "demo.json"
    stdout, stderr = tmp / "stdout.txt", tmp / "stderr.txt"
    _server_logs[:] = [("stdout", stdout), ("stderr", stderr)]
    command = [str(verbund), "demo", "--serve", "--info-file", str(info_file), "--scale", SCALE, "--seed", "42"]
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        server = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not info_file.exists():
            if server.poll() is not None:
                pytest.fail(f"{' '.join(command)} ended with {server.returncode}\n{server_output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {info_file} within {START_SECONDS} s\n{server_output()}")
            time.sleep(0.2)
        yield json.loads(info_file.read_text())
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            code = "killed after 10 s"
        output = server_output()
        _server_logs.clear()
        if code != 0:  # a clean shutdown on SIGTERM is part of what is tested
            pytest.fail(f"verbund demo --serve ended with {code} on SIGTERM\n{output}")
