"""bench.py keeps working: `python bench.py --quick --json` runs every scenario against a real
livecam.py and its real peers, and reports sane figures. No figure is judged against a target
here (this machine is shared and noisy); the benchmark itself reports met/missed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"
# Scenarios whose server side comes with a later issue (streams, variants): until livecam has
# the route, the benchmark says so instead of measuring.
LATER = {"fanout_mjpeg", "fanout_ws", "stalled", "variant"}


def system_tool(name: str) -> str | None:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found is None and IN_CI:
        pytest.fail(f"{name} is required in CI (installed by .ci/run)")
    return found


@pytest.fixture(scope="module")
def report() -> dict:
    """One quick run, shared by the checks below (it takes well under a minute)."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench.py"), "--quick", "--edge", "--json"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout)


def figures(report: dict, name: str) -> dict:
    result = report["scenarios"][name]
    assert "error" not in result, result["error"]
    assert "skipped" not in result, result["skipped"]
    return result


def test_quick_run_reports_every_scenario_and_every_target(report):
    names = set(report["scenarios"])
    assert {"snapshot", "upload_latency", "idle", "variant", "stalled", "edge"} <= names
    for transport in ("longpoll", "mjpeg", "ws"):
        assert {f"fanout_{transport}_100", f"fanout_{transport}_200"} <= names
    assert not [name for name, result in report["scenarios"].items() if "error" in result]
    assert len(report["targets"]) == 7
    assert report["quick"] is True
    assert report["server_cpus"] and report["load_cpus"]


def test_snapshot_measures_livecam_and_each_peer_with_cpu_per_request(report):
    snapshot = figures(report, "snapshot")
    assert snapshot["frame_bytes"] > 100_000  # the realistic 1280x720 frame
    assert snapshot["load_generator"].startswith("wrk" if shutil.which("wrk") else "asyncio")
    peers = ["livecam", "aiohttp", "tutorial"] + (["nginx"] if system_tool("nginx") else [])
    for name in peers:
        server = snapshot["servers"][name]
        assert "skipped" not in server, f"{name}: {server.get('skipped')}"
        assert server["requests"] > 0 and server["rps"] > 0
        assert server["cpu_s_per_1k"] > 0
        assert server["bottleneck"] in {"server", "client", "server and client", "neither"}
    for name in peers[1:]:
        assert snapshot["ratios"][name] > 0 and snapshot["cpu_ratios"][name] > 0


def test_long_poll_fan_out_counts_every_frame_with_latency_and_server_cost(report):
    for viewers in (100, 200):
        fanout = figures(report, f"fanout_longpoll_{viewers}")
        assert fanout["viewers"] == viewers and fanout["frames"] > 0
        assert fanout["expected"] == viewers * fanout["frames"]
        assert 0 < fanout["delivered"] <= fanout["expected"]
        assert 0 < fanout["delivered_ratio"] <= 1
        assert fanout["duplicates"] >= 0
        latency = fanout["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
        assert fanout["server_cpu_ms_per_frame"] > 0
        assert fanout["server_rss_mb"] > 0
        assert fanout["bottleneck"] in {"server", "client", "server and client", "neither"}


def test_upload_latency_is_measured_with_ten_viewers(report):
    latency = figures(report, "upload_latency")
    assert latency["viewers"] == 10
    assert 0 < latency["latency_ms"]["p50"] <= latency["latency_ms"]["max"]
    assert latency["upload_ms"]["p50"] > 0


def test_idle_capacity_holds_long_polls_and_one_upload_releases_them(report):
    idle = figures(report, "idle")
    assert idle["held_confirmed"] >= idle["viewers"] > 0
    assert idle["rss_after_mb"] >= idle["rss_before_mb"] > 0
    assert idle["released"] == idle["viewers"]
    assert idle["rss_for_10000_mb"] > 0 and idle["projected"] is True


def test_later_scenarios_measure_or_say_why_not(report):
    for name, result in report["scenarios"].items():
        if name.rsplit("_", 1)[0] in LATER or name in LATER:
            assert "error" not in result, result.get("error")
            if "skipped" in result:
                assert result["skipped"]  # a reason the reader can act on
    for name in ("fanout_mjpeg_200", "fanout_ws_200"):
        result = report["scenarios"][name]
        if "skipped" not in result:
            assert 0 < result["delivered_ratio"] <= 1
            assert result["latency_ms"]["p50"] > 0
    variant = report["scenarios"]["variant"]
    if "skipped" not in variant:
        assert variant["variant_cpu_ms_per_frame"] >= 0
        assert variant["original_cpu_ms_per_frame"] >= 0
    stalled = report["scenarios"]["stalled"]
    if "skipped" not in stalled:
        assert stalled["rss_peak_mb"] > 0 and stalled["viewers"] == 100


def test_edge_fan_out_reports_origin_requests_beside_direct(report):
    edge = report["scenarios"]["edge"]
    if not system_tool("varnishd"):
        assert "skipped" in edge
        return
    edge = figures(report, "edge")
    assert edge["origin_requests"] > 0
    assert edge["origin_requests_per_frame"] > 0
    for side in ("direct", "edge"):
        assert 0 < edge[side]["delivered_ratio"] <= 1
        assert edge[side]["latency_ms"]["p50"] > 0
