"""Waiting for a test's subprocess with a timeout: one helper for every test that launches one."""
import subprocess


def communicate(proc: subprocess.Popen, timeout: float, what: str):
    """(returncode, stdout, stderr) of ``proc``; kill it and fail with the tail of its output if it
    runs past ``timeout`` seconds."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{what} timed out after {timeout} s:\n{(out or '')[-2000:]}\n"
                             f"{(err or '')[-3000:]}")
    return proc.returncode, out, err
