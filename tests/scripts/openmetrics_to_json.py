#!/usr/bin/env python3
"""Parses OpenMetrics text from stdin with the reference parser of the Prometheus
Python client (strict: any format error raises) and prints the samples as JSON, so
that Rust tests can check exact values: {"families": [{"name", "type", "samples":
[{"name", "labels", "value"}]}]}."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> None:
    families = []
    for family in text_string_to_metric_families(sys.stdin.read()):
        families.append(
            {
                "name": family.name,
                "type": family.type,
                "samples": [
                    {"name": s.name, "labels": dict(s.labels), "value": s.value}
                    for s in family.samples
                ],
            }
        )
    json.dump({"families": families}, sys.stdout)


if __name__ == "__main__":
    main()
