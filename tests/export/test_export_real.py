"""Real-size export (slow): the 0.6B transformer with seeded random weights at fp16."""

import json
import resource
import time

import pytest

from sana_deploy.contract import torch_dtype
from sana_deploy.export import export_component
from sana_deploy.models.loaders import load_components


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_export_0_6b_fp16(tmp_path):
    start = time.perf_counter()
    c = load_components("sana-0.6b-1024", ("transformer",), torch_dtype("fp16"), random_weights=True)
    r = export_component(c, "transformer", "fp16", tmp_path)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"export_seconds": round(seconds, 1), "peak_rss_gib": round(peak_gib, 2)}))
    assert all(p.ok and p.finite for p in r.parity)
    assert r.path.stat().st_size > 1e9  # ~0.6 B fp16 weights
