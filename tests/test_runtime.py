"""runtime: malloc settings for CPU training are applied once, can be refused, and every task asks."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import noisyseg.tasks.base as base
from noisyseg.runtime import MALLOC_ENV
from noisyseg.tasks import MoCoTask, SegmentationTask

PROBE = "from noisyseg.runtime import keep_freed_memory as k; print(k(), k())"


def _probe(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != MALLOC_ENV}
    if env_value is not None:
        env[MALLOC_ENV] = env_value
    # a fresh interpreter: the settings are process-wide and cannot be undone
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_applies_once_on_glibc() -> None:
    assert _probe(None) == ["True", "True"]


def test_keep_freed_memory_leaves_malloc_alone_when_told() -> None:
    assert _probe("system") == ["False", "False"]


@pytest.mark.parametrize("make", [lambda: MoCoTask(queue_size=8), lambda: SegmentationTask(num_classes=2)])
def test_every_task_asks_for_the_settings_when_fit_starts_on_the_cpu(monkeypatch, make) -> None:
    calls = []
    monkeypatch.setattr(base, "keep_freed_memory", lambda: calls.append(1) or True)
    make().on_fit_start()
    assert calls == [1]
