"""Long work shows progress on a terminal: `tollgate apply` of a large plan, run under a
pseudo-terminal, prints a progress line that rewrites itself; with output to a pipe, none.
(`tollgate journal verify|dump|export` use the same line.)"""

import os
import pty
import select
import subprocess
import time

from conftest import binary, fixtures


def on_terminal(arguments, seconds=120):
    """Runs a command with a pseudo-terminal as its standard output and error; returns its exit
    status and everything it wrote there."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    written = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the command is done
                break
            if not chunk:
                break
            written += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    return process.wait(10), written.decode("utf-8", "replace")


def big_plan(path, accounts=4, members=2_500):
    lines = ["products:", "  ai.summary: 7", "accounts:"]
    for account in range(accounts):
        lines.append("  - id: tenant-%d" % account)
        lines.append("    members: [%s]" % ", ".join("m%d" % member for member in range(members)))
    path.write_text("\n".join(lines) + "\n")


def test_apply_shows_progress_on_a_terminal_and_none_into_a_pipe(admin_server, tmp_path):
    plan = tmp_path / "big.yaml"
    big_plan(plan)
    common = ["--server", admin_server.address, "--token-file", admin_server.token_file]
    status, text = on_terminal([binary("tollgate"), "apply", str(plan), *common])
    assert status == 0, text[-500:]
    updates = [part for part in text.split("\r\x1b[K") if part.startswith("tollgate: ")]
    assert updates, "no progress line in %r" % text[:300]
    # Counts that grow, with a rate and the time so far.
    counts = [int(update.split()[1].replace(",", "")) for update in updates]
    assert counts == sorted(counts) and counts[-1] > 0
    assert all(" steps, " in update and "/s, " in update for update in updates)
    # The summary follows on a clean line, and says every step was done.
    assert text.count("ok       member") == 10_000
    # Into a pipe: the same command (everything exists now) prints no progress.
    piped = subprocess.run([binary("tollgate"), "apply", str(plan), *common], capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "\r" not in piped.stdout + piped.stderr
