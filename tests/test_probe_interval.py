"""How often the worker probes a starting tool (berth/launch/state_machine.py)."""
import pytest

from berth.launch.state_machine import probe_interval


def test_probes_come_a_fiftieth_of_the_time_waited_apart_from_2_to_50_ms():
    assert probe_interval(0) == 0.002
    assert probe_interval(0.2) == pytest.approx(0.004)  # a tool of 200 ms is seen within 4 ms
    assert probe_interval(1) == pytest.approx(0.02)
    assert probe_interval(600) == 0.05


def test_about_170_probes_in_the_first_second():
    waited, probes = 0.0, 0
    while waited < 1:
        waited += probe_interval(waited)
        probes += 1
    assert 150 <= probes <= 190
