"""What several router processes on one port need (server/workers.py),
checked before any starts."""

import subprocess
import sys
from pathlib import Path

import pytest

from server.config import ConfigError, load
from server.workers import check, for_worker

ROOT = Path(__file__).resolve().parents[2]


def test_in_process_engines_cannot_be_shared_by_workers():
    config = load(ROOT / "config/cpu.yaml", ["server.workers=2"])
    with pytest.raises(ConfigError, match=r"\['small', 'large'\] would load its engine once in every worker"):
        check(config)


def test_remote_tiers_can_be_shared_on_fixed_ports_only():
    config = load(ROOT / "config/remote.yaml", ["server.workers=3", "server.http_port=8000"])
    check(config)
    with pytest.raises(ConfigError, match=r"\['port'\] cannot be 0"):
        check(config.with_ports(0, None))


def test_each_worker_serves_metrics_on_its_own_port():
    config = load(ROOT / "config/remote.yaml", ["server.workers=3"])
    assert [for_worker(config, i).server.metrics_port for i in range(3)] == [9464, 9465, 9466]
    off = config.with_ports(None, -1)
    assert for_worker(off, 2).server.metrics_port == -1


@pytest.mark.parametrize("workers", [0, -1, 1.5, "two"])
def test_workers_is_a_positive_integer(workers):
    with pytest.raises(ConfigError, match="server.workers must be an integer >= 1"):
        load(ROOT / "config/remote.yaml", [f"server.workers={workers}"])


def test_the_command_refuses_workers_over_in_process_engines_before_loading_anything():
    run = subprocess.run([sys.executable, "-m", "server", "--config", "config/cpu.yaml", "--set", "server.workers=2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "triage: bad config: server.workers: 2 workers need every tier to be remote or smg" in run.stderr
