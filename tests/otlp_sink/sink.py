#!/usr/bin/env python3
"""OTLP sink for the agent's end-to-end export tests: a real OTLP receiver that decodes every
request independently of the agent's Rust code (PyPI `opentelemetry-proto` + `protobuf`), and
appends each one as a JSON line to a file the tests read.

Receivers:
  - OTLP/HTTP on --http-port: POST /v1/metrics, /v1/logs, /v1development/profiles, with
    Content-Type application/x-protobuf or application/json (OTLP/JSON), optionally
    `Content-Encoding: gzip`. Answers 200 with an empty Export*ServiceResponse in the request's
    format.
  - OTLP/gRPC on --grpc-port (grpcio): the Metrics, Logs and Profiles services; gzip accepted.
    gRPC hides the `grpc-encoding` header from servicers, so the port is a small TCP relay in
    front of the grpcio server that reads the compressed flag of each gRPC message from the
    HTTP/2 DATA frames (no HPACK needed) before passing the bytes on.

Every decoded request becomes one line of --out (flushed per line):
  {"signal": "metrics"|"logs"|"profiles", "transport": "http/protobuf"|"http/json"|"grpc",
   "gzip": bool, "tls": bool, "tls_client": str|null, "headers": {lowercased name: value},
   "request": MessageToDict(request), "received_unix_nano": int}
`request` uses the OTLP/JSON field names (lowerCamelCase), enums as integers, 64-bit integers
as strings (protobuf's JSON mapping), bytes as base64. A request that does not decode is
answered 400 (HTTP; gRPC answers INTERNAL itself) and not written.

--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]: both ports speak TLS (PEM server
certificate chain and key): the HTTP server is HTTPS (ALPN http/1.1), and the gRPC relay
terminates TLS itself (ALPN h2, which gRPC clients require) and passes the plaintext HTTP/2 on to
grpcio, so the compressed flags stay readable. With --tls-client-ca, both require a client
certificate signed by that CA; a failed handshake is logged and nothing is written. Each line
then also holds `"tls": true` (else `false`) and `"tls_client"`: the client certificate's
subject common name (null without one).

--fail-first N: the first N decoded HTTP requests answer 503 with `Retry-After: 1`, and the
first N gRPC calls UNAVAILABLE with a google.rpc.RetryInfo of 1 s. They are written too, with
`"rejected": "503"` or `"rejected": "UNAVAILABLE"`, so a test can tell the retried data apart;
every line without `rejected` was answered with success.

Prints `listening http=<port> grpc=<port>` on stdout once both are ready. Port 0 picks a free
port. SIGTERM/SIGINT stop it gracefully: the ports close first, then the requests already
received are answered, then it exits, so a request is either written and answered or neither
(at-least-once delivery then cannot look like a duplicate). SIGKILL is a crash.
"""

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import gzip
import http.server
import json
import signal
import socket
import ssl
import sys
import threading
import time

import grpc
from google.protobuf import any_pb2, json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_pb2,
    profiles_service_pb2_grpc,
)

# signal -> (request type, response type)
SIGNALS = {
    "metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "logs": (
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
    ),
    "profiles": (
        profiles_service_pb2.ExportProfilesServiceRequest,
        profiles_service_pb2.ExportProfilesServiceResponse,
    ),
}
HTTP_PATHS = {
    "/v1/metrics": "metrics",
    "/v1/logs": "logs",
    "/v1development/profiles": "profiles",
}
# Headers not worth recording (transport framing).
SKIP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te"}
# OTLP/JSON encodes these bytes fields as hex, protobuf's JSON mapping as base64.
HEX_ID_FIELDS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def log(msg):
    print(f"[sink] {msg}", file=sys.stderr, flush=True)


class Recorder:
    """Appends one JSON line per decoded request; counts the requests to fail first and the
    requests being answered (for the graceful stop)."""

    def __init__(self, path, fail_first, tls):
        self.file = open(path, "a", encoding="utf-8")
        self.tls = tls
        self.lock = threading.Lock()
        self.fail_http = fail_first
        self.fail_grpc = fail_first
        self.in_flight = 0
        self.stopping = False
        self.idle = threading.Condition(self.lock)

    def begin(self):
        """False once stopping: the request must then be neither written nor answered."""
        with self.lock:
            if self.stopping:
                return False
            self.in_flight += 1
            return True

    def end(self):
        with self.lock:
            self.in_flight -= 1
            self.idle.notify_all()

    def stop(self, timeout):
        """Refuses new requests and waits until those being answered are."""
        with self.lock:
            self.stopping = True
            self.idle.wait_for(lambda: self.in_flight == 0, timeout)

    def should_fail(self, transport):
        with self.lock:
            if transport == "grpc":
                if self.fail_grpc > 0:
                    self.fail_grpc -= 1
                    return True
            elif self.fail_http > 0:
                self.fail_http -= 1
                return True
            return False

    def record(
        self, signal_name, transport, gzipped, client, headers, request, received, rejected=None
    ):
        entry = {
            "signal": signal_name,
            "transport": transport,
            "gzip": gzipped,
            "tls": self.tls,
            "tls_client": client,
            "headers": headers,
            "request": json_format.MessageToDict(
                request, preserving_proto_field_name=False, use_integers_for_enums=True
            ),
            "received_unix_nano": received,
        }
        if rejected is not None:
            entry["rejected"] = rejected
        line = json.dumps(entry, separators=(",", ":"))
        with self.lock:
            self.file.write(line + "\n")
            self.file.flush()


def hex_ids_to_base64(value):
    """OTLP/JSON's hex trace and span ids, as protobuf's JSON parser wants them (base64)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in HEX_ID_FIELDS and isinstance(v, str):
                try:
                    v = base64.b64encode(binascii.unhexlify(v)).decode()
                except (binascii.Error, ValueError):
                    pass  # not hex: let the parser judge it
            out[k] = hex_ids_to_base64(v)
        return out
    if isinstance(value, list):
        return [hex_ids_to_base64(v) for v in value]
    return value


def make_http_handler(recorder):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as OTLP exporters expect

        def log_message(self, fmt, *args):  # quiet: one line per request is logged below
            pass

        def reply(self, code, body=b"", content_type=None, extra=()):
            self.send_response(code)
            if content_type:
                self.send_header("Content-Type", content_type)
            for k, v in extra:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return body
                    body += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def do_POST(self):
            if not recorder.begin():
                self.close_connection = True  # stopping: no answer, the client retries
                return
            try:
                self.post()
            finally:
                recorder.end()

        def post(self):
            received = time.time_ns()
            body = self.read_body()
            path = self.path.split("?")[0]
            signal_name = HTTP_PATHS.get(path)
            if signal_name is None:
                log(f"HTTP POST {path}: 404")
                return self.reply(404, b"unknown path", "text/plain")
            encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
            gzipped = encoding == "gzip"
            if gzipped:
                try:
                    body = gzip.decompress(body)
                except (OSError, EOFError) as e:
                    log(f"HTTP POST {path}: bad gzip: {e}")
                    return self.reply(400, f"bad gzip body: {e}".encode(), "text/plain")
            elif encoding not in ("identity", ""):
                return self.reply(415, f"unsupported encoding {encoding}".encode(), "text/plain")
            content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            request_type, response_type = SIGNALS[signal_name]
            request = request_type()
            try:
                if content_type == "application/x-protobuf":
                    request.ParseFromString(body)
                    transport = "http/protobuf"
                    response = response_type().SerializeToString()
                elif content_type == "application/json":
                    doc = hex_ids_to_base64(json.loads(body))
                    json_format.ParseDict(doc, request)
                    transport = "http/json"
                    response = b"{}"
                else:
                    log(f"HTTP POST {path}: unsupported content type {content_type!r}")
                    return self.reply(
                        415, f"unsupported content type {content_type!r}".encode(), "text/plain"
                    )
            except Exception as e:  # any decoding failure is the client's
                log(f"HTTP POST {path} ({content_type}): cannot decode: {e}")
                return self.reply(400, f"cannot decode: {e}".encode(), "text/plain")
            headers = {}
            for k, v in self.headers.items():
                k = k.lower()
                if k not in SKIP_HEADERS:
                    headers[k] = f"{headers[k]}, {v}" if k in headers else v
            client = None
            if isinstance(self.connection, ssl.SSLSocket):
                client = common_name(self.connection.getpeercert())
            line = (signal_name, transport, gzipped, client, headers, request, received)
            if recorder.should_fail("http"):
                recorder.record(*line, "503")
                log(f"HTTP POST {path}: 503 (--fail-first)")
                return self.reply(503, extra=[("Retry-After", "1")])
            recorder.record(*line)
            tls = f" tls client={client}" if recorder.tls else ""
            log(f"HTTP POST {path}: 200 {transport} gzip={gzipped}{tls} {len(body)} bytes")
            self.reply(200, response, content_type)

    return Handler


def common_name(cert):
    """The subject common name of a certificate as ssl's getpeercert() gives it (None when
    there is none)."""
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


class GrpcFlags:
    """What the relay saw per upstream connection: the compressed flag of the last gRPC
    message and the TLS client's certificate name, keyed by the relay's local port towards
    grpcio (the peer grpcio reports)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_port = {}
        self.clients = {}

    def set(self, port, compressed):
        with self.lock:
            self.by_port[port] = compressed

    def set_client(self, port, name):
        with self.lock:
            self.clients[port] = name

    @staticmethod
    def port(peer):
        # grpcio peers look like "ipv4:127.0.0.1:54321".
        try:
            return int(peer.rsplit(":", 1)[1])
        except (IndexError, ValueError):
            return None

    def get(self, peer):
        with self.lock:
            return self.by_port.get(self.port(peer))

    def client(self, peer):
        with self.lock:
            return self.clients.get(self.port(peer))

    def forget(self, port):
        with self.lock:
            self.by_port.pop(port, None)
            self.clients.pop(port, None)


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class H2Sniffer:
    """Follows the client-to-server HTTP/2 frames of one connection and reports the compressed
    flag (the first byte of each length-prefixed gRPC message) found in DATA frames."""

    def __init__(self, on_flag):
        self.buf = b""
        self.preface_done = False
        self.streams = {}  # stream id -> [prefix bytes so far, message bytes left to skip]
        self.on_flag = on_flag

    def feed(self, data):
        self.buf += data
        if not self.preface_done:
            if len(self.buf) < len(H2_PREFACE):
                return
            self.buf = self.buf[len(H2_PREFACE):]
            self.preface_done = True
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[0:3], "big")
            if len(self.buf) < 9 + length:
                return
            ftype, flags = self.buf[3], self.buf[4]
            stream = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload = self.buf[9 : 9 + length]
            self.buf = self.buf[9 + length :]
            if ftype != 0:  # not DATA
                continue
            if flags & 0x8 and payload:  # PADDED
                pad = payload[0]
                payload = payload[1 : len(payload) - pad]
            self.data(stream, payload)
            if flags & 0x1:  # END_STREAM
                self.streams.pop(stream, None)

    def data(self, stream, payload):
        state = self.streams.setdefault(stream, [b"", 0])
        while payload:
            if state[1] > 0:
                n = min(state[1], len(payload))
                state[1] -= n
                payload = payload[n:]
                continue
            need = 5 - len(state[0])
            state[0] += payload[:need]
            payload = payload[need:]
            if len(state[0]) == 5:
                self.on_flag(state[0][0] == 1)
                state[1] = int.from_bytes(state[0][1:5], "big")
                state[0] = b""


def feed(sniffer, data):
    """Feeds relayed bytes to the HTTP/2 sniffer; returns it, or None once it cannot follow (the
    relay never breaks over the sniffing)."""
    if sniffer is None:
        return None
    try:
        sniffer.feed(data)
        return sniffer
    except Exception as e:
        log(f"gRPC relay: cannot follow HTTP/2 frames: {e}")
        return None


def pipe(src, dst, sniffer=None):
    """Copies src to dst until EOF (then half-closes dst) or an error (then closes both)."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            sniffer = feed(sniffer, data)
            dst.sendall(data)
    except OSError:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Relay:
    """The gRPC port: a TCP relay to the grpcio server that notes each connection's gRPC
    compressed flags on the way (see GrpcFlags)."""

    def __init__(self, listener, upstream_port, flags):
        self.listener = listener
        self.upstream_port = upstream_port
        self.flags = flags
        self.threads = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError as e:
                log(f"gRPC relay: cannot reach grpcio: {e}")
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=self.serve, args=(client, upstream), daemon=True)
            self.threads = [x for x in self.threads if x.is_alive()] + [t]
            t.start()

    def serve(self, client, upstream):
        port = upstream.getsockname()[1]
        sniffer = H2Sniffer(lambda compressed: self.flags.set(port, compressed))
        back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
        back.start()
        pipe(client, upstream, sniffer)
        back.join()
        client.close()
        upstream.close()
        self.flags.forget(port)

    def close(self):
        self.listener.close()

    def join(self, timeout):
        deadline = time.monotonic() + timeout
        for t in list(self.threads):
            t.join(max(0.0, deadline - time.monotonic()))


class TlsRelay:
    """The gRPC port with TLS: terminates TLS (ALPN h2, which gRPC clients require) and relays
    the plaintext HTTP/2 to the grpcio server, noting the compressed flags as Relay does and
    the client certificate's name. One asyncio loop in its own thread (an SSL socket must not be
    read and written from two threads at once, as Relay's two pipes per connection would)."""

    def __init__(self, listener, upstream_port, flags, context):
        self.upstream_port = upstream_port
        self.flags = flags
        self.tasks = set()
        self.loop = asyncio.new_event_loop()
        # The handshake is done in `serve`, so that a failed one can be logged (asyncio's
        # server-side TLS only logs them in debug mode); StreamWriter.start_tls is Python 3.11+.
        self.context = context if hasattr(asyncio.StreamWriter, "start_tls") else None
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(
                self.serve, sock=listener, ssl=None if self.context else context
            ),
            self.loop,
        )
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = self.server.result(timeout=10)

    async def serve(self, client_reader, client_writer):
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            peer = client_writer.get_extra_info("peername")
            try:
                if self.context is not None:
                    await client_writer.start_tls(self.context, ssl_handshake_timeout=10)
            except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
                log(f"gRPC relay: TLS handshake with {peer[0]}:{peer[1]} failed: {e!r}")
                client_writer.close()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port
                )
            except OSError as e:
                log(f"gRPC relay: cannot reach grpcio: {e}")
                client_writer.close()
                return
            port = up_writer.get_extra_info("sockname")[1]
            self.flags.set_client(port, common_name(client_writer.get_extra_info("peercert")))
            sniffer = H2Sniffer(lambda compressed: self.flags.set(port, compressed))
            writers = (client_writer, up_writer)
            await asyncio.gather(
                self.pipe(client_reader, up_writer, writers, sniffer),
                self.pipe(up_reader, client_writer, writers),
            )
            for w in writers:
                w.close()
            self.flags.forget(port)
        finally:
            self.tasks.discard(task)

    @staticmethod
    async def pipe(reader, writer, writers, sniffer=None):
        """As `pipe`: copies until EOF (then half-closes, or closes a TLS writer, which cannot
        half-close) or an error (then closes both)."""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    else:
                        writer.close()
                    return
                sniffer = feed(sniffer, data)
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError) as e:
            log(f"gRPC relay: {e!r}")
            for w in writers:
                w.close()

    def close(self):
        """Stops accepting; the connections go on."""
        self.loop.call_soon_threadsafe(self.server.close)

    def join(self, timeout):
        async def wait():
            if self.tasks:
                await asyncio.wait(list(self.tasks), timeout=timeout)

        try:
            asyncio.run_coroutine_threadsafe(wait(), self.loop).result(timeout + 1)
        except concurrent.futures.TimeoutError:
            pass


class HttpsServer(http.server.ThreadingHTTPServer):
    """The HTTP receiver over TLS: each accepted connection's handshake runs in its own
    thread (a client that stalls or fails it blocks no other)."""

    context = None

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request, client_address):
        try:
            request.settimeout(10)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ssl.SSLError) as e:
            log(f"HTTPS: TLS handshake with {client_address[0]}:{client_address[1]} failed: {e}")
            return
        super().finish_request(request, client_address)


def tls_context(cert, key, client_ca, alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(alpn)
    return ctx


def retry_info_status(message):
    """A google.rpc.Status {code UNAVAILABLE, details [RetryInfo {retry_delay 1s}]} encoded by
    hand (the googleapis protos are not a dependency)."""

    def field(number, payload):
        return bytes([number << 3 | 2, len(payload)]) + payload

    retry_info = field(1, b"\x08\x01")  # RetryInfo.retry_delay = Duration{seconds: 1}
    detail = any_pb2.Any(
        type_url="type.googleapis.com/google.rpc.RetryInfo", value=retry_info
    ).SerializeToString()
    msg = message.encode()[:100]
    return b"\x08" + bytes([grpc.StatusCode.UNAVAILABLE.value[0]]) + field(2, msg) + field(3, detail)


def make_servicer(base, signal_name, recorder, flags):
    _, response_type = SIGNALS[signal_name]

    class Servicer(base):
        def Export(self, request, context):
            received = time.time_ns()
            if not recorder.begin():
                context.abort(grpc.StatusCode.UNAVAILABLE, "sink: stopping")
            try:
                return self.export(request, context, received)
            finally:
                recorder.end()

        def export(self, request, context, received):
            headers = {}
            for md in context.invocation_metadata():
                k = md.key.lower()
                if k in SKIP_HEADERS:
                    continue
                v = md.value
                if isinstance(v, bytes):
                    v = base64.b64encode(v).decode()
                headers[k] = f"{headers[k]}, {v}" if k in headers else v
            compressed = bool(flags.get(context.peer()))
            client = flags.client(context.peer())
            line = (signal_name, "grpc", compressed, client, headers, request, received)
            if recorder.should_fail("grpc"):
                recorder.record(*line, "UNAVAILABLE")
                log(f"gRPC {signal_name}: UNAVAILABLE (--fail-first)")
                msg = "sink: failing the first requests (--fail-first)"
                context.set_trailing_metadata(
                    [("grpc-status-details-bin", retry_info_status(msg))]
                )
                context.abort(grpc.StatusCode.UNAVAILABLE, msg)
            recorder.record(*line)
            tls = f" tls client={client}" if recorder.tls else ""
            log(f"gRPC {signal_name}: OK gzip={compressed}{tls}")
            return response_type()

    return Servicer()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON lines file (appended to)")
    ap.add_argument("--http-port", type=int, default=0)
    ap.add_argument("--grpc-port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--fail-first", type=int, default=0, metavar="N")
    ap.add_argument("--tls-cert", metavar="FILE", help="PEM server certificate (chain): TLS")
    ap.add_argument("--tls-key", metavar="FILE", help="PEM key of --tls-cert")
    ap.add_argument("--tls-client-ca", metavar="FILE", help="require client certificates")
    args = ap.parse_args()
    tls = args.tls_cert is not None
    if tls != (args.tls_key is not None) or (args.tls_client_ca and not tls):
        ap.error("--tls-cert and --tls-key go together (and --tls-client-ca needs them)")

    recorder = Recorder(args.out, args.fail_first, tls)

    server_class = http.server.ThreadingHTTPServer
    if tls:
        server_class = HttpsServer
        HttpsServer.context = tls_context(
            args.tls_cert, args.tls_key, args.tls_client_ca, ["http/1.1"]
        )
    httpd = server_class((args.host, args.http_port), make_http_handler(recorder))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    flags = GrpcFlags()
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", 64 << 20)],
    )
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
        make_servicer(metrics_service_pb2_grpc.MetricsServiceServicer, "metrics", recorder, flags),
        server,
    )
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(
        make_servicer(logs_service_pb2_grpc.LogsServiceServicer, "logs", recorder, flags), server
    )
    profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server(
        make_servicer(
            profiles_service_pb2_grpc.ProfilesServiceServicer, "profiles", recorder, flags
        ),
        server,
    )
    upstream_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    listener = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.grpc_port))
    listener.listen(64)
    if tls:
        context = tls_context(args.tls_cert, args.tls_key, args.tls_client_ca, ["h2"])
        relay = TlsRelay(listener, upstream_port, flags, context)
    else:
        relay = Relay(listener, upstream_port, flags)

    print(
        f"listening http={httpd.server_address[1]} grpc={listener.getsockname()[1]}", flush=True
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    # Graceful stop: no new connections, then no new requests, then answer those received.
    relay.close()
    httpd.shutdown()
    httpd.server_close()
    recorder.stop(timeout=10)
    server.stop(grace=5).wait()
    relay.join(timeout=5)
    log("stopped")


if __name__ == "__main__":
    main()
