from bench.report import Outcome, render_notes, render_table
from bench.scenarios import Metric, RunResult, Scenario


class FakeScenario(Scenario):
    name = "demo"
    description = "demo"
    metrics = (Metric("rate", "rate", "msg/s", True),
               Metric("cpu", "cpu", "µs", False, 1e6),
               Metric("lost", "lost", "", False, integer=True, worst_case=True))


def _rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[1]] = cells[2:]
    return rows


def test_medians_ratios_and_markers():
    outcomes = {
        ("demo", "wharf"): Outcome(results=[RunResult({"rate": 100.0, "cpu": 5e-6, "lost": 0}),
                                            RunResult({"rate": 300.0, "cpu": 7e-6, "lost": 2}),
                                            RunResult({"rate": 200.0, "cpu": 6e-6, "lost": 0})]),
        ("demo", "mosquitto"): Outcome(results=[RunResult({"rate": 400.0, "cpu": 3e-6, "lost": 0}),
                                                RunResult({"rate": 400.0, "cpu": 3e-6, "lost": 0},
                                                          complete=False, note="cut short")]),
        ("demo", "amqtt"): Outcome(failures=["did not start"]),
    }
    table = render_table([FakeScenario()], ["wharf", "mosquitto", "amqtt"], outcomes)
    rows = _rows(table)
    assert table.splitlines()[0].split("|")[3:8] == [" wharf ", " mosquitto ", " amqtt ", " wharf/mosquitto ",
                                                      " wharf/amqtt "]
    assert rows["rate (msg/s)"] == ["200", "400 *", "failed", "0.50×", "—"]
    assert rows["cpu (µs)"] == ["6.00", "3.00 *", "failed", "2.00×", "—"]
    # a loss in any run shows: the worst run, not the median
    assert rows["lost"][0] == "2"
    notes = render_notes([FakeScenario()], ["wharf", "mosquitto", "amqtt"], outcomes)
    assert "demo / mosquitto run 2 (*): cut short" in notes
    assert "demo / amqtt: FAILED: did not start" in notes


def test_without_wharf_there_are_no_ratio_columns_and_skips_say_na():
    outcomes = {("demo", "mosquitto"): Outcome(results=[RunResult({"rate": 1.0})]),
                ("demo", "amqtt"): Outcome(skipped="cannot")}
    table = render_table([FakeScenario()], ["mosquitto", "amqtt"], outcomes)
    assert "wharf/" not in table
    assert _rows(table)["rate (msg/s)"] == ["1.00", "n/a"]
