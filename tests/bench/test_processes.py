"""Child processes: exit, CPU accounting from wait4, and cleanup."""

import sys

from bench import processes


def test_cpu_time_and_exit_code_of_a_child():
    child = processes.Child([sys.executable, "-c", "sum(i * i for i in range(3_000_000)); raise SystemExit(3)"],
                            name="burner")
    assert child.wait(60)
    assert child.exit_code == 3
    assert child.cpu_seconds > 0
    assert child.exited_at >= child.started_at


def test_terminate_all_ends_every_running_child():
    children = [processes.Child(["sleep", "600"], name=f"sleeper{i}") for i in range(3)]
    assert all(c.running for c in children)
    processes.terminate_all()
    assert not any(c.running for c in children)
    assert all(c.exit_code == -15 for c in children)


def test_open_files_limit_is_raised_within_the_hard_limit():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        got = processes.raise_open_files_limit(soft + 16)
        assert got >= min(soft + 16, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
