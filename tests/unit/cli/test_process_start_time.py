"""serve's GET /metrics tells when the node started (process_start_time_seconds, the wall clock's
Unix seconds): keytrail_kms_unauthenticated_total and keytrail_kms_denied_by_principal_total count
from zero at each start, and the alerts and panels over them tell a restarted node's new series from
the since-start total of a node that kept running through a gap in the scrapes by it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from keytrail.api.credentials import CredentialStore
from keytrail.cli.node import build_node, stop_node
from keytrail.clock import DEV_CLOCK_FILE
from keytrail.config import ServeSettings

_THIRTY_DAYS = 30 * 86400


@pytest.mark.parametrize("dev_clock", [False, True], ids=["wall clock", "dev clock 30 days ahead"])
async def test_metrics_tell_the_wall_clock_time_the_node_started(tmp_path: Path, dev_clock: bool) -> None:
    (tmp_path / DEV_CLOCK_FILE).write_text(json.dumps({"aheadSeconds": _THIRTY_DAYS}))  # a dev clock's lead
    before = time.time()
    node = await build_node(ServeSettings(data_dir=tmp_path, detector=False, dev_clock=dev_clock),
                            CredentialStore(None, dev_credentials=True), lifespan=False)
    after = time.time()
    try:
        assert node.app.settings.metrics is not None
        text = await node.app.settings.metrics()
        assert (node.clock.now().timestamp() - after > _THIRTY_DAYS - 60) is dev_clock  # the clocks apart
    finally:
        await stop_node(node)
    assert "# TYPE process_start_time_seconds gauge" in text
    [started] = re.findall(r"^process_start_time_seconds (\S+)$", text, flags=re.M)
    assert before <= float(started) <= after  # not the dev clock's now, a month ahead
