"""A stand-alone process running the export pipeline, for the SIGKILL tests.

    python tests/integration/export/export_worker.py --data-dir D --es-url URL --requests N [--flush-timeout S]

Records N requests (one per call, printing `recorded <i>` once each call returned, i.e. once the record
is committed to the spools) plus 8 GPU samples and one metric collection per request, then either waits
to be killed or, with --flush-timeout, flushes, prints `flushed True|False` and exits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dsagent.export.config import ExportConfig
from dsagent.export.pipeline import TelemetryPipeline
from dsagent.samples import RequestRecord, Sample, make_labels


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--es-url", required=True)
    parser.add_argument("--requests", type=int, default=0)
    parser.add_argument("--first-request", type=int, default=0)
    parser.add_argument("--batch-documents", type=int, default=2000)
    parser.add_argument("--flush-timeout", type=float, default=None)
    args = parser.parse_args()
    config = ExportConfig.model_validate({
        "elasticsearch": {"url": args.es_url, "request_timeout_seconds": 5},
        "spool": {"retry_initial_seconds": 0.05, "retry_max_seconds": 0.2, "batch_documents": args.batch_documents},
        "metric_export_interval_seconds": 3600,
    })
    pipeline = TelemetryPipeline(config, args.data_dir, {"host.name": "node-under-test"})
    pipeline.start()
    for number in range(args.first_request, args.first_request + args.requests):
        now = time.time()
        pipeline.record_samples([
            Sample("dsagent_gpu_utilization_ratio", make_labels({"gpu_index": str(gpu)}), 0.5, now)
            for gpu in range(8)
        ])
        pipeline.collect_metrics()
        pipeline.record_requests([RequestRecord(f"req-{number}", now, model="demo", prompt_length=16,
                                                tokens_generated=8, generation_time_seconds=0.1)])
        print(f"recorded {number}", flush=True)
    if args.flush_timeout is None:
        print("waiting", flush=True)
        time.sleep(3600)
        return 0
    flushed = pipeline.force_flush(args.flush_timeout)
    print(f"flushed {flushed}", flush=True)
    pipeline.shutdown()
    return 0 if flushed else 1


if __name__ == "__main__":
    sys.exit(main())
