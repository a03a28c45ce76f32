#!/usr/bin/env python3
"""A tiny OTLP client to check sink.py and rotel by hand: sends one metrics request (a
cumulative histogram `test.duration` with a known count, and a sum) over OTLP/HTTP
(protobuf or JSON) or OTLP/gRPC, gzip-compressed or not.

  python3 send.py --http 127.0.0.1:4318 --protocol http/protobuf --gzip --count 7
  python3 send.py --grpc 127.0.0.1:4317 --gzip --header x-test=abc
"""

import argparse
import gzip
import sys
import time
import urllib.request

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2


def request(count, tag):
    now = time.time_ns()
    kv = lambda k, v: common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v))
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.extend([kv("service.name", "send.py"), kv("test.tag", tag)])
    sm = rm.scope_metrics.add()
    sm.scope.name = "send.py"
    m = sm.metrics.add()
    m.name = "test.duration"
    m.unit = "s"
    m.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
    p = m.histogram.data_points.add()
    p.start_time_unix_nano = now - 10**9
    p.time_unix_nano = now
    p.count = count
    p.sum = 0.001 * count
    p.explicit_bounds.extend([0.001, 0.01])
    p.bucket_counts.extend([count, 0, 0])
    p.attributes.append(kv("test.tag", tag))
    return req


def main():
    ap = argparse.ArgumentParser()
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--http", metavar="HOST:PORT")
    target.add_argument("--grpc", metavar="HOST:PORT")
    ap.add_argument("--protocol", choices=["http/protobuf", "http/json"], default="http/protobuf")
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--tag", default="hand")
    ap.add_argument("--header", action="append", default=[], metavar="K=V")
    args = ap.parse_args()
    req = request(args.count, args.tag)
    headers = dict(h.split("=", 1) for h in args.header)
    if args.grpc:
        channel = grpc.insecure_channel(args.grpc)
        stub = metrics_service_pb2_grpc.MetricsServiceStub(channel)
        resp = stub.Export(
            req,
            timeout=10,
            metadata=list(headers.items()),
            compression=grpc.Compression.Gzip if args.gzip else grpc.Compression.NoCompression,
        )
        print(f"grpc OK {json_format.MessageToJson(resp, indent=None)}")
        return
    if args.protocol == "http/json":
        body = json_format.MessageToJson(req, use_integers_for_enums=True).encode()
        headers["Content-Type"] = "application/json"
    else:
        body = req.SerializeToString()
        headers["Content-Type"] = "application/x-protobuf"
    if args.gzip:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    r = urllib.request.Request(f"http://{args.http}/v1/metrics", data=body, headers=headers)
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            print(f"http {resp.status} {resp.headers.get('Content-Type')} {resp.read()!r}")
    except urllib.error.HTTPError as e:
        print(f"http {e.code} {dict(e.headers)} {e.read()!r}")
        sys.exit(1)


if __name__ == "__main__":
    main()
