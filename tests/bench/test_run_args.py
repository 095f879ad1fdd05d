import pytest

from bench.run import QUICK, parse_args, run_order


def test_quick_sets_small_counts_and_flags_still_win():
    args = parse_args(["--quick", "--messages", "1234"])
    assert args.messages == 1234
    assert args.repeats == QUICK["repeats"] and args.idle_connections == QUICK["idle_connections"]


def test_full_defaults():
    args = parse_args([])
    assert (args.messages, args.repeats, args.payload_size) == (200_000, 3, 64)
    assert args.broker_names == ["wharf", "mosquitto", "amqtt"]
    assert "rotation" in args.scenario_names and "fanout" in args.scenario_names


@pytest.mark.parametrize("argv", [["--brokers", "hivemq"], ["--scenarios", "qos0,nope"], ["--messages", "0"],
                                  ["--latency-rate", "-1"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_brokers_take_turns_going_first():
    assert [run_order(["a", "b", "c"], r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert run_order([], 3) == []


def test_retained_sizes_default_to_the_issue_and_quick_stays_small():
    assert parse_args([]).retained_sizes == (0, 100_000, 1_000_000)
    assert parse_args(["--quick"]).retained_sizes == (0, 20_000)
    assert parse_args(["--retained-sizes", "0,5000"]).retained_sizes == (0, 5000)


@pytest.mark.parametrize("argv", [["--retained-sizes", "many"], ["--retained-sizes", "-1"],
                                  ["--retained-sizes", ","], ["--retained-subscribes", "0"]])
def test_bad_retained_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2


def test_scale_steps_default_to_the_issue_and_quick_stays_small():
    assert parse_args([]).scale_steps == (1_000, 5_000, 10_000, 19_000)
    assert parse_args(["--quick"]).scale_steps == (500, 1_000)
    assert parse_args(["--scale-steps", "100,300"]).scale_steps == (100, 300)


@pytest.mark.parametrize("argv", [["--scale-steps", "lots"], ["--scale-steps", "0,10"], ["--scale-steps", ","]])
def test_bad_scale_steps_are_refused(argv):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
