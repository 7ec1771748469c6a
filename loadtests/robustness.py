#!/usr/bin/env python3
"""robustness.py — a robustness campaign against switchyard's HTTP/1 listener (issue 10).

Run through loadtests/robustness.sh, which picks the ports, writes the config and passes the
switchyard command line. Python 3.11 standard library only.

One process holds three parts:

* a recording backend: a raw TCP server that parses every byte the proxy sends it with a
  strict HTTP/1.1 request parser (request line, header syntax, Content-Length or chunked
  framing, chunk syntax) and attributes each request to the request the campaign sent;
* switchyard, started (and restarted after a crash, counted) by this script;
* the client: COUNT generated requests in batches, over CONC concurrent connections —
  valid requests (GET/POST, Content-Length and chunked bodies, keep-alive and pipelined,
  writes split at random points including inside chunk-size lines) and hostile ones
  (framing attacks, oversize, bad hosts and paths, random mutations of valid requests,
  random bytes, truncated and half-closed requests, slow clients).

What counts as a VIOLATION (exit 1) — each is stream corruption or smuggling, not merely a
lenient parser:

  ambiguous-framing-forwarded  the backend got a request whose framing it cannot determine
                               without guessing (CL and TE, two different CLs, a non-numeric
                               CL, a TE other than chunked)
  unparsable-bytes             bytes on a backend connection that are not a valid request at
                               a request boundary (e.g. the rest of a body after an early
                               chunk terminator)
  valid-request-corrupted      a request the campaign sent well-formed arrived with another
                               method, path or body; or its 2xx response reports another
                               request id or body hash than the one sent
  smuggled-from-valid-body     a request planted inside the BODY of a well-formed request
                               reached the backend as a request of its own
  unattributable-request       a request that matches nothing any client sent
  foreign-body-bytes           a hostile request was forwarded with body bytes that are not
                               bytes that client sent
  truncated-body-completed     a client sent an unfinished body (then closed or half-closed)
                               and the backend received it as a COMPLETE request

Everything else a hostile request can lead to is counted and printed, not a violation:
which hostile messages were forwarded although the SPEC wants a 400 (SPEC BREACHES), and
mutated messages that happen to be valid HTTP and were forwarded intact ("mutated-but-valid").

A valid request that gets no response within VALID_WAIT (15 s) is counted "held". The wait
runs from the last piece the proxy took while the client writes, then per response. With
STALL_DUMP=FILE, each such connection's sockets (`ss -tni`, both ends) and any backend
socket with bytes queued are appended to FILE before it closes: which side stopped.
"""

import argparse
import asyncio
import bisect
import collections
import ctypes
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

HOST = "fuzz.test"
TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+\Z")  # obs-text tolerated, counted apart
VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
HEXSIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(;[\x20-\x7e\t]*)?\Z")
DIGITS = re.compile(rb"[0-9]{1,18}\Z")
HOSTNAME = re.compile(rb"(?i)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?(:[0-9]{1,5})?\Z")
KEEP_BODY = 4 << 20


def sha(b):
    return hashlib.sha256(b).hexdigest()


# ------------------------------------------------------------------------------- parser
class ParseError(Exception):
    def __init__(self, kind, msg):
        super().__init__(msg)
        self.kind = kind  # "garbage" | "framing"
        self.msg = msg


class Req:
    __slots__ = ("method", "target", "version", "headers", "raw_head", "chunked", "body", "chunks",
                 "length", "hasher", "noncanon", "complete")

    def header(self, name):
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def headers_all(self, name):
        return [v for n, v in self.headers if n == name]


def parse_head(head, strict):
    lines = head.split(b"\r\n")
    for ln in lines:
        if b"\r" in ln or b"\n" in ln:
            raise ParseError("garbage", "bare CR or LF in head")
    rl = lines[0].split(b" ")
    if len(rl) != 3:
        raise ParseError("garbage", "request line is not 'METHOD SP target SP version'")
    method, target, version = rl
    if not TOKEN.match(method):
        raise ParseError("garbage", "bad method")
    if not TARGET.match(target):
        raise ParseError("garbage", "bad request target")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ParseError("garbage", "bad version")
    headers = []
    for ln in lines[1:]:
        if not ln or ln[0] in b" \t":
            raise ParseError("garbage", "obs-fold or empty header line")
        c = ln.find(b":")
        if c <= 0 or not TOKEN.match(ln[:c]):
            raise ParseError("garbage", "bad header name")
        value = ln[c + 1:].strip(b" \t")
        headers.append((ln[:c].lower(), value))
    r = Req()
    r.method, r.target, r.version, r.headers, r.raw_head = method, target, version, headers, head
    r.noncanon = None
    r.chunked = False
    r.length = 0
    te = [v for n, v in headers if n == b"transfer-encoding"]
    cl = [v for n, v in headers if n == b"content-length"]
    if te:
        if cl:
            raise ParseError("framing", "both Content-Length and Transfer-Encoding")
        if version == b"HTTP/1.0":
            raise ParseError("framing", "Transfer-Encoding in HTTP/1.0")
        codings = [c.strip(b" \t").lower() for v in te for c in v.split(b",")]
        if codings != [b"chunked"]:
            raise ParseError("framing", "Transfer-Encoding %r" % b", ".join(te))
        r.chunked = True
        if len(te) > 1 or te[0] != b"chunked":
            r.noncanon = "Transfer-Encoding %r" % b", ".join(te)
    elif cl:
        vals = [c.strip(b" \t") for v in cl for c in v.split(b",")]
        if not all(DIGITS.match(x) for x in vals):
            raise ParseError("framing", "Content-Length %r" % b", ".join(cl))
        if len({int(x) for x in vals}) > 1:
            raise ParseError("framing", "different Content-Lengths %r" % b", ".join(cl))
        r.length = int(vals[0])
        if len(vals) > 1 or vals[0] != str(r.length).encode():
            r.noncanon = "Content-Length %r" % b", ".join(cl)
    return r


class H1Parser:
    """Strict incremental HTTP/1.1 request parser. strict=False (for what clients sent)
    skips empty lines before a request line, as RFC 9112 allows a server to."""

    def __init__(self, strict=True, max_head=4 << 20):
        self.strict, self.max_head = strict, max_head
        self.buf = bytearray()
        self.state = "head"
        self.scan = 0
        self.cur = None
        self.rem = 0
        self.trailer_bytes = 0
        self.ready = []  # complete requests not yet taken (kept when a later one fails to parse)

    def take(self):
        out, self.ready = self.ready, []
        return out

    def _start_body(self, r):
        r.body = bytearray()
        r.chunks = []
        r.hasher = hashlib.sha256()
        r.complete = False
        self.cur = r
        if r.chunked:
            self.state = "size"
        elif r.length > 0:
            self.state, self.rem = "data", r.length
        else:
            self.state = "done"

    def _data(self, b):
        r = self.cur
        r.hasher.update(b)
        if len(r.body) < KEEP_BODY:
            r.body += b

    def feed(self, data):
        """Parse what DATA completes; complete requests collect in self.ready (see take())."""
        self.buf += data
        out = self.ready
        buf = self.buf
        while True:
            st = self.state
            if st == "head":
                if not self.strict:
                    while buf[:2] == b"\r\n":
                        del buf[:2]
                i = buf.find(b"\r\n\r\n", max(0, self.scan - 3))
                if i < 0:
                    if len(buf) > self.max_head:
                        raise ParseError("garbage", "head larger than %d bytes" % self.max_head)
                    self.scan = len(buf)
                    return
                r = parse_head(bytes(buf[:i]), self.strict)  # on error the head stays in buf
                del buf[:i + 4]
                self.scan = 0
                self._start_body(r)
            elif st == "data":
                if not buf:
                    return
                n = min(self.rem, len(buf))
                self._data(bytes(buf[:n]))
                if self.cur.chunked:
                    self.cur.chunks.append(n)
                del buf[:n]
                self.rem -= n
                if self.rem == 0:
                    self.state = "crlf" if self.cur.chunked else "done"
            elif st == "crlf":
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ParseError("garbage", "no CRLF after chunk data")
                del buf[:2]
                self.state = "size"
            elif st == "size":
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > 1024:
                        raise ParseError("garbage", "chunk-size line too long")
                    return
                line = bytes(buf[:i])
                del buf[:i + 2]
                m = HEXSIZE.match(line)
                if not m or b"\n" in line or b"\r" in line:
                    raise ParseError("garbage", "bad chunk-size line %r" % line[:40])
                n = int(m.group(1), 16)
                if n == 0:
                    self.state, self.trailer_bytes = "trailer", 0
                else:
                    self.state, self.rem = "data", n
            elif st == "trailer":
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > 65536:
                        raise ParseError("garbage", "trailer too long")
                    return
                line = bytes(buf[:i])
                del buf[:i + 2]
                if line == b"":
                    self.state = "done"
                else:
                    c = line.find(b":")
                    if c <= 0 or not TOKEN.match(line[:c]) or VALUE_BAD.search(line[c + 1:].strip(b" \t")):
                        raise ParseError("garbage", "bad trailer line")
                    self.trailer_bytes += len(line)
                    if self.trailer_bytes > 65536:
                        raise ParseError("garbage", "trailers too long")
            elif st == "done":
                r = self.cur
                r.complete = True
                r.body = bytes(r.body)
                r.hasher = r.hasher.hexdigest()
                out.append(r)
                self.cur = None
                self.state = "head"

    def eof_state(self):
        if self.state == "head":
            return "idle" if not self.buf else "in-head"
        return "in-body"


def ref_pipeline(m):
    """What a strict parser makes of the bytes M a client sent: (the complete requests in
    order — those before a parse error included —, how the bytes end: 'ok' | 'incomplete' |
    'invalid: why', the body data of an unfinished last request, the parser state there)."""
    p = H1Parser(strict=False, max_head=1 << 30)
    try:
        p.feed(m)
        end = "ok" if p.eof_state() == "idle" else "incomplete"
    except ParseError as e:
        end = "invalid: " + e.msg
    partial = bytes(p.cur.body) if p.cur is not None else b""
    return p.take(), end, partial, p.state


# ------------------------------------------------------------------------------- registry
class Item:
    """One request the campaign sent (or tried to)."""
    __slots__ = ("rid", "kind", "name", "method", "path", "body_hash", "body_len", "m", "ref", "body",
                 "planted", "batch")


class Campaign:
    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.next_id = 1
        self.items = {}           # rid -> Item (current and previous batch)
        self.nonces = {}          # nonce -> rid
        self.batch_items = collections.defaultdict(list)
        self.blob = b""           # the hostile items' bytes of the recent batches, for attribution
        self.blob_index = []      # (offset, rid)
        self.blob_dirty = False
        self.out = collections.Counter()          # outcome -> count (all requests)
        self.by_kind = collections.defaultdict(collections.Counter)  # kind -> outcome -> count
        self.by_name = collections.defaultdict(collections.Counter)  # hostile name -> outcome
        self.valid_not2xx = collections.Counter()
        self.viol = collections.Counter()
        self.breach = collections.Counter()
        self.note = collections.Counter()
        self.examples = collections.defaultdict(list)
        self.backend_valid = 0
        self.backend_total = 0
        self.backend_conns = 0
        self.sent = 0
        self.current_batch = 0
        self.vlog = open(a.violations_log, "w")
        self.sw = None
        self.sw_log = None
        self.restarts = 0
        self.crashes = []

    # ---------------------------------------------------------------- bookkeeping
    def new_id(self):
        rid = self.next_id
        self.next_id += 1
        return rid

    def register(self, it):
        it.batch = self.current_batch
        self.items[it.rid] = it
        self.batch_items[self.current_batch].append(it.rid)
        if it.m is not None:
            self.blob_dirty = True

    def nonce_for(self, rid):
        n = "%016x" % self.rng.getrandbits(64)
        self.nonces[n] = rid
        return n

    def forget_batch(self, b):
        for rid in self.batch_items.pop(b, []):
            it = self.items.pop(rid, None)
        self.nonces = {k: v for k, v in self.nonces.items() if v in self.items}
        self.blob_dirty = True

    def rebuild_blob(self):
        parts, idx, off = [], [], 0
        for rid, it in self.items.items():
            if it.m is not None:
                idx.append((off, rid))
                parts.append(it.m)
                off += len(it.m) + 1
                parts.append(b"\x00")
        self.blob = b"".join(parts)
        self.blob_index = idx
        self.blob_dirty = False

    def attribute_by_bytes(self, needles):
        if self.blob_dirty:
            self.rebuild_blob()
        offs = [o for o, _ in self.blob_index]
        for nd in needles:
            if len(nd) < 20:
                continue
            i = self.blob.find(nd)
            if i >= 0:
                k = bisect.bisect_right(offs, i) - 1
                if k >= 0:
                    return self.blob_index[k][1]
        return None

    def violation(self, cat, detail):
        self.viol[cat] += 1
        if len(self.examples[cat]) < 5:
            self.examples[cat].append(detail)
        self.vlog.write("VIOLATION %s batch %d: %s\n" % (cat, self.current_batch, detail))
        self.vlog.flush()

    def spec_breach(self, cat, detail=None):
        self.breach[cat] += 1
        if detail and len(self.examples["breach " + cat]) < 3:
            self.examples["breach " + cat].append(detail)
            self.vlog.write("SPEC-BREACH %s batch %d: %s\n" % (cat, self.current_batch, detail))
            self.vlog.flush()

    def ref(self, it):
        if it.ref is None:
            it.ref = ref_pipeline(it.m)
        return it.ref

    # ---------------------------------------------------------------- backend side
    def on_backend_request(self, r):
        self.backend_total += 1
        hid = r.header(b"x-fuzz-id")
        nonce = r.header(b"x-fuzz-nonce")
        m = re.match(rb"/f/([0-9]{1,12})(/|\?|\Z)", r.target)
        cand = []
        for v in (hid, m.group(1) if m else None):
            if v is not None and DIGITS.match(v):
                cand.append(int(v))
        if nonce is not None:
            cand.append(self.nonces.get(nonce.decode("latin-1"), -1))
        rid = None
        for c in cand:
            if c > 0 and cand.count(c) >= 2 and c in self.items:
                rid = c
                break
        planted = re.match(rb"/smuggled/([0-9]{1,12})\Z", r.target)
        desc = "%s %s body %dB sha %s" % (r.method.decode("latin-1"), r.target[:120].decode("latin-1"),
                                           len(r.body), r.hasher[:12])
        seen_id = str(rid) if rid else "-"
        if planted:
            carrier = self.items.get(int(planted.group(1)))
            self.check_planted(r, carrier, desc)
            seen_id = "planted"
        elif rid is None:
            # not a request the campaign sent whole: maybe the tail of a hostile client's bytes
            # (a mutation can cut a request in two, or destroy its ids)
            lines = [r.raw_head.split(b"\r\n", 1)[0]] + [ln for ln in r.raw_head.split(b"\r\n")[1:]
                                                        if not ln.lower().startswith((b"host:", b"x-forwarded", b"x-request-id"))]
            att = self.attribute_by_bytes(lines)
            if att is None:
                self.violation("unattributable-request", desc + " head %r" % r.raw_head[:400])
            else:
                it = self.items[att]
                self.note["forwarded: part of a hostile message (%s)" % it.kind] += 1
                self.check_hostile(r, it, desc, exact=False)
        else:
            it = self.items[rid]
            if it.kind in ("valid", "sanity", "slow-valid"):
                ok = (r.method.decode("latin-1") == it.method and r.target.decode("latin-1") == it.path
                      and r.hasher == it.body_hash and len(r.body) == it.body_len)
                if ok:
                    self.backend_valid += it.kind == "valid"
                else:
                    self.violation("valid-request-corrupted",
                                   "id %d sent %s %s body %dB sha %s; backend got %s" %
                                   (rid, it.method, it.path, it.body_len, it.body_hash[:12], desc))
            else:
                self.check_hostile(r, it, desc, exact=True)
        self.check_breaches(r, rid)
        return (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Seen-Id: %s\r\nX-Seen-Hash: %s\r\n"
                b"X-Seen-Len: %d\r\n\r\nok" % (seen_id.encode(), r.hasher.encode(), len(r.body)))

    @staticmethod
    def body_from(r, m):
        """Could the body be made of the client's own bytes M, in pieces (a proxy may have
        removed or changed chunk framing)? False only when some byte sequence of it occurs
        nowhere in M."""
        body = r.body
        if not body or len(body) >= KEEP_BODY or body in m:
            return True
        pos = 0
        while pos < len(body):
            lo, hi = 0, len(body) - pos  # the longest piece at pos found in m: binary search
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if body[pos:pos + mid] in m:
                    lo = mid
                else:
                    hi = mid - 1
            if lo == 0:
                return False
            pos += lo
        return True

    def check_hostile(self, r, it, desc, exact):
        refs, end, partial, pstate = self.ref(it)
        match = any(q.hasher == r.hasher for q in refs)
        if match:
            tag = "mutated-but-valid" if it.kind == "mutated" else "forwarded (strictly valid): %s" % it.kind
            self.note[tag] += 1
            if it.kind not in ("mutated", "junk") and it.name:
                self.by_name[it.name]["backend: forwarded, strictly valid"] += 1
            return
        same = [q for q in refs if q.target == r.target or
                (q.header(b"x-fuzz-id") is not None and q.header(b"x-fuzz-id") == r.header(b"x-fuzz-id"))]
        if same and end == "ok" and len(refs) == 1:
            # the client's bytes are one strictly valid request: its body is not open to interpretation
            self.violation("valid-request-corrupted",
                           "item %d (%s %s) is one strictly valid request with a %dB body (sha %s); the backend "
                           "got %s; client bytes %r" % (it.rid, it.kind, it.name, len(same[0].body),
                                                        same[0].hasher[:12], desc, it.m[:400]))
            return
        if not self.body_from(r, it.m):
            self.violation("foreign-body-bytes", "item %d (%s %s) forwarded as %s; client bytes %r" %
                           (it.rid, it.kind, it.name, desc, it.m[:300]))
            return
        if it.kind in ("partial", "halfclose", "slow-stall") and not refs and end == "incomplete":
            # the client's bytes are a clean prefix of a request: nobody can have read it whole
            if pstate == "trailer" and r.body == partial:
                self.note["completed at EOF after the last chunk (all body data had arrived)"] += 1
                return
            self.violation("truncated-body-completed",
                           "item %d (%s, %s): the client sent %d bytes of an unfinished request, then %s; "
                           "the backend got it as a COMPLETE request %s; the client's bytes end with %r" %
                           (it.rid, it.kind, it.name, len(it.m),
                            {"partial": "closed", "halfclose": "half-closed"}.get(it.kind, "went silent"),
                            desc, it.m[-120:]))
            return
        self.note["lenient: %s forwarded though a strict parser says %s" % (it.kind, end.split(":")[0])] += 1
        if it.kind in ("attack", "oversize", "badpath", "badhost"):
            self.spec_breach("%s forwarded: %s" % (it.kind, it.name), "%s -> %s" % (it.name, desc))
            self.by_name[it.name]["backend: forwarded (lenient)"] += 1

    def check_planted(self, r, carrier, desc):
        if carrier is None:
            self.violation("unattributable-request", "planted request of an unknown carrier: " + desc)
            return
        if carrier.kind in ("valid", "slow-valid", "sanity"):
            self.violation("smuggled-from-valid-body",
                           "a request planted in the body of valid request %d (%s %s, %dB) reached the backend: %s"
                           % (carrier.rid, carrier.method, carrier.path, carrier.body_len, desc))
            return
        refs = self.ref(carrier)[0]
        if any(q.target == r.target for q in refs):
            self.note["planted request was a strictly valid pipelined request (%s)" % carrier.kind] += 1
            return
        if carrier.kind == "attack":
            self.spec_breach("planted request of a framing attack reached the backend: %s" % carrier.name,
                             "%s -> %s" % (carrier.name, desc))
            self.by_name[carrier.name]["backend: planted request forwarded"] += 1
        else:
            self.note["planted request forwarded from a %s message (lenient framing)" % carrier.kind] += 1

    def check_breaches(self, r, rid):
        if r.noncanon:
            self.spec_breach("non-canonical framing header forwarded", r.noncanon)
        if len(r.raw_head) > 70000:
            self.spec_breach("head over 64 KiB forwarded", "%d bytes" % len(r.raw_head))
        if len(r.headers) > 110:
            self.spec_breach("over 100 headers forwarded", "%d headers" % len(r.headers))
        if len(r.body) > (1 << 20):
            self.spec_breach("body over max_body_bytes forwarded", "%d bytes" % len(r.body))
        for n, v in r.headers:
            if VALUE_BAD.search(v):
                self.spec_breach("control character in a header value forwarded", repr(v[:80]))
                break
        if re.search(rb"[\x80-\xff]", r.target):
            self.spec_breach("non-ASCII byte in the request target forwarded", repr(r.target[:80]))
        t = r.target.lower()
        if b"/../" in t or b"/./" in t or b"%2e" in t or t.endswith(b"/..") or t.endswith(b"/."):
            self.spec_breach("dot-segment path forwarded as received", r.target[:100].decode("latin-1"))
        hosts = r.headers_all(b"host")
        if len(hosts) != 1 or not HOSTNAME.match(hosts[0]):
            self.spec_breach("invalid Host forwarded", repr(hosts)[:100])
        if r.header(b"upgrade") is not None:
            self.spec_breach("Upgrade header forwarded", repr(r.header(b"upgrade")))

    def on_backend_error(self, e, parser, conn_bytes):
        cat = "ambiguous-framing-forwarded" if e.kind == "framing" else "unparsable-bytes"
        self.violation(cat, "%s; unparsed bytes %r; last bytes of the backend connection %r" %
                       (e.msg, bytes(parser.buf[:300]), bytes(conn_bytes[-600:])))

    # ---------------------------------------------------------------- client outcomes
    def outcome(self, it, what):
        self.sent += 1
        self.out[what] += 1
        self.by_kind[it.kind][what] += 1
        if it.kind not in ("valid", "mutated", "junk", "sanity") and it.name:
            self.by_name[it.name][what] += 1
        if it.kind in ("valid", "slow-valid") and what != "2xx":
            self.valid_not2xx[what] += 1
            self.vlog.write("NOTE valid request not answered 2xx (%s): id %d %s %s body %dB\n" %
                            (what, it.rid, it.method, it.path, it.body_len))


# ------------------------------------------------------------------------------- backend server
class Backend(asyncio.Protocol):
    camp = None

    def connection_made(self, t):
        self.t = t
        self.p = H1Parser(strict=True)
        self.tail = bytearray()  # the last bytes of this connection, for the violation log
        self.dead = False
        Backend.camp.backend_conns += 1

    def data_received(self, data):
        if self.dead:
            return
        self.tail += data
        if len(self.tail) > 4096:
            del self.tail[:-2048]
        err = None
        try:
            self.p.feed(data)
        except ParseError as e:
            err = e
        for r in self.p.take():
            self.t.write(Backend.camp.on_backend_request(r))
        if err is not None:
            Backend.camp.on_backend_error(err, self.p, self.tail)
            self.dead = True
            self.t.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nX-Seen-Id: unparsable\r\n"
                         b"Connection: close\r\n\r\n")
            self.t.close()

    def connection_lost(self, exc):
        st = self.p.eof_state()
        if st != "idle" and not self.dead:
            camp = Backend.camp
            camp.note["backend connection closed by the proxy %s (aborted request)" % st] += 1
            r = self.p.cur
            if r is not None:
                hid = r.header(b"x-fuzz-id")
                it = camp.items.get(int(hid)) if hid is not None and DIGITS.match(hid) else None
                if it is not None and it.kind == "valid":
                    camp.note["a VALID request aborted mid-body by the proxy (client gave up?)"] += 1
                    camp.vlog.write("NOTE valid request %d (%s %s, body %dB) aborted mid-body: backend got %dB\n"
                                    % (it.rid, it.method, it.path, it.body_len, len(r.body)))


# ------------------------------------------------------------------------------- generators
def hexsize(rng, n):
    s = "%x" % n
    r = rng.random()
    if r < 0.05:
        s = s.upper()
    elif r < 0.08:
        s = "00" + s
    return s.encode()


def chunk_body(rng, body, maxchunk=None):
    out, i = [], 0
    while i < len(body):
        n = rng.randint(1, maxchunk or max(1, min(len(body), rng.choice((1, 7, 64, 1000, 16384)))))
        out.append(hexsize(rng, min(n, len(body) - i)) + b"\r\n" + body[i:i + n] + b"\r\n")
        i += n
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def rand_token(rng, lo=1, hi=12):
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
                   for _ in range(rng.randint(lo, hi)))


def planted(rid):
    return b"GET /smuggled/%d HTTP/1.1\r\nHost: fuzz.test\r\nX-Planted: %d\r\n\r\n" % (rid, rid)


VALID_HOSTS = ["fuzz.test", "fuzz.test", "fuzz.test", "FUZZ.Test", "a1.fuzz.test", "fuzz.test:80"]


BIG_SHARE = float(os.environ.get("BIG_SHARE", "0.01"))  # share of bodies of 64-300 KB


def gen_body(rng, rid):
    r = rng.random()
    if r < BIG_SHARE:
        n = rng.randint(65537, 300000)
        return rng.randbytes(n)
    if r < 0.05:
        n = 0
    elif r < 0.50:
        n = rng.randint(1, 64)
    elif r < 0.88:
        n = rng.randint(65, 4096)
    elif r < 0.99:
        n = rng.randint(4097, 65536)
    else:
        n = rng.randint(65537, 300000)
    s = rng.random()
    if s < 0.15:
        # text that looks like framing and requests — a proxy that loses track shows it
        parts = [b"0\r\n\r\n", planted(rid), b"\r\n", b"5\r\nhello\r\n", b"Content-Length: 0\r\n",
                 b"HTTP/1.1 200 OK\r\n\r\n", rand_token(rng).encode()]
        body = b""
        while len(body) < n:
            body += rng.choice(parts)
        return body[:max(n, len(planted(rid)) + 5)]
    return rng.randbytes(n)


def make_valid(camp, rng, close=False, kind="valid", keep=False):
    rid = camp.new_id()
    nonce = camp.nonce_for(rid)
    method = rng.choice(("GET", "GET", "POST", "POST", "POST", "PUT", "DELETE")) if kind != "slow-valid" else "POST"
    body = gen_body(rng, rid) if method in ("POST", "PUT") else b""
    if kind == "slow-valid" and len(body) < 8:
        body += rng.randbytes(8)
    chunked = method in ("POST", "PUT") and rng.random() < 0.45
    path = "/f/%d/%s" % (rid, rand_token(rng))
    if rng.random() < 0.3:
        path += "?q=%s&n=%d" % (rand_token(rng), rng.randint(0, 99999))
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: " + rng.choice(VALID_HOSTS),
             "X-Fuzz-Id: %d" % rid, "X-Fuzz-Nonce: " + nonce]
    if method in ("POST", "PUT"):
        lines += ["X-Body-Len: %d" % len(body), "X-Body-Hash: " + sha(body)]
        lines.append("Transfer-Encoding: chunked" if chunked else "Content-Length: %d" % len(body))
    for _ in range(rng.choice((0, 0, 1, 2, 5))):
        lines.append("X-Pad-%s: %s" % (rand_token(rng, 1, 6), rand_token(rng, 0, 40)))
    if rng.random() < 0.2:
        lines.append("User-Agent: robustness/1.0 (+https://fuzz.test)")
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    raw = head + (chunk_body(rng, body) if chunked else body)
    it = Item()
    it.rid, it.kind, it.name, it.method, it.path = rid, kind, None, method, path
    it.body_hash, it.body_len, it.m, it.ref, it.planted = sha(body), len(body), None, None, None
    it.body = body if (keep or kind != "valid") else None  # only hostile derivatives need it
    camp.register(it)
    return it, raw


def split_points(rng, raw):
    """Where to cut one write into several: none, random, or inside chunk-size lines."""
    r = rng.random()
    if r < 0.55 or len(raw) < 2:
        return [raw]
    cuts = set()
    if r < 0.85:
        for _ in range(rng.randint(1, 6)):
            cuts.add(rng.randint(1, len(raw) - 1))
    else:
        # cut inside chunk-size lines and between CR and LF: what made pingora yield empty chunks
        for mt in re.finditer(rb"\r\n[0-9a-fA-F]+\r\n", raw):
            if rng.random() < 0.7:
                cuts.add(mt.start() + 1)          # between CR and LF
                cuts.add(mt.start() + 3)          # inside the size
                cuts.add(mt.end() - 1)
        cuts = {c for c in cuts if 0 < c < len(raw)}
        if not cuts:
            cuts.add(rng.randint(1, len(raw) - 1))
    pos, out = 0, []
    for c in sorted(cuts):
        out.append(raw[pos:c])
        pos = c
    out.append(raw[pos:])
    return [p for p in out if p]


def hostile_item(camp, rng, kind, name, raw, body=b"", method="POST", rid=None):
    it = Item()
    it.rid = camp.new_id() if rid is None else rid
    it.kind, it.name, it.method, it.path = kind, name, method, None
    it.body, it.body_hash, it.body_len = body, sha(body), len(body)
    it.m, it.ref, it.planted = raw, None, None
    camp.register(it)
    return it


def ids(camp, rid):
    return "X-Fuzz-Id: %d\r\nX-Fuzz-Nonce: %s\r\n" % (rid, camp.nonce_for(rid))


# each returns (kind, name, raw-bytes, end) — end: "read" (wait for a response),
# "halfclose" (shut down writing, then read), "close" (close without reading)
def attacks():
    H = "Host: fuzz.test\r\n"

    def req(rid, extra, body, camp, method="POST", path=None, version="HTTP/1.1", host=H):
        p = path if path is not None else "/f/%d/x" % rid
        return ("%s %s %s\r\n%s%s%s\r\n" % (method, p, version, host, ids(camp, rid), extra)).encode() + body

    def chunked5(rid):
        return b"5\r\nhello\r\n0\r\n\r\n" + planted(rid)

    A = []

    def add(name, kind, fn, end="read", w=1):
        A.append((name, kind, fn, end, w))

    # ------------------------------------------------------------------ framing
    add("CL+TE", "attack", lambda c, r, i: req(i, "Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % (len(chunked5(i))), chunked5(i), c), w=3)
    add("TE+CL", "attack", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", chunked5(i), c), w=3)
    add("CL+TE small CL", "attack", lambda c, r, i: req(i, "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + planted(i), c), w=2)
    add("two CLs differ", "attack", lambda c, r, i: req(i, "Content-Length: 5\r\nContent-Length: %d\r\n" % (5 + len(planted(i))), b"hello" + planted(i), c), w=3)
    add("two CLs same", "attack", lambda c, r, i: req(i, "Content-Length: 5\r\nContent-Length: 5\r\n", b"hello", c))
    add("CL: 5, 5", "attack", lambda c, r, i: req(i, "Content-Length: 5, 5\r\n", b"hello", c), w=2)
    add("CL: 5, 60", "attack", lambda c, r, i: req(i, "Content-Length: 5, %d\r\n" % (5 + len(planted(i))), b"hello" + planted(i), c), w=2)
    for v in ("+5", "-1", "0x5", "5 5", "5.0", "", "1e3", " 5a", "99999999999999999999", "18446744073709551621",
              "-0", "\t5"):
        add("CL: %r" % v, "attack", lambda c, r, i, v=v: req(i, "Content-Length: %s\r\n" % v, b"hello" + planted(i), c))
    for v in ("chunked ", " chunked", "xchunked", "chunked, identity", "identity, chunked", "chunked, chunked",
              "chunk", "CHUNKED", "gzip, chunked", "chunked;q=1", "\"chunked\"", "chunked\x0b", "\x0bchunked",
              "identity", "chunked\x00", "chunkedx", ",chunked", "chunked,"):
        add("TE: %r" % v, "attack", lambda c, r, i, v=v: req(i, "Transfer-Encoding: %s\r\n" % v, chunked5(i), c))
    add("TE twice", "attack", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", chunked5(i), c))
    add("TE in HTTP/1.0", "attack", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\n", chunked5(i), c, version="HTTP/1.0"))
    add("'Transfer-Encoding :'", "attack", lambda c, r, i: req(i, "Transfer-Encoding : chunked\r\n", chunked5(i), c))
    add("'Transfer-Encoding\\t:'", "attack", lambda c, r, i: req(i, "Transfer-Encoding\t: chunked\r\n", chunked5(i), c))
    add("TE obs-fold", "attack", lambda c, r, i: req(i, "Transfer-Encoding:\r\n chunked\r\n", chunked5(i), c))
    add("CL obs-fold", "attack", lambda c, r, i: req(i, "Content-Length:\r\n 5\r\n", b"hello" + planted(i), c))
    add("'Content-Length :'", "attack", lambda c, r, i: req(i, "Content-Length : 5\r\n", b"hello" + planted(i), c))
    add("Transfer_Encoding", "attack", lambda c, r, i: req(i, "Transfer_Encoding: chunked\r\n", chunked5(i), c))
    for v in ("zz", "-1", "0x5", "5 5", "ffffffffffffffffffff", "fffffffffffffff", "5;\x00", "+5", " 5", "5\n"):
        add("chunk size %r" % v, "attack", lambda c, r, i, v=v: req(
            i, "Transfer-Encoding: chunked\r\n", ("%s\r\nhello\r\n0\r\n\r\n" % v).encode() + planted(i), c))
    add("chunk data longer than size", "attack", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n" + planted(i), c))
    add("chunk data shorter than size", "attack", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\n", b"7\r\nhello\r\n0\r\n\r\n" + planted(i), c))
    add("no CRLF after chunk data", "attack", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\n", b"5\r\nhello0\r\n\r\n" + planted(i), c))
    add("LF-only chunk lines", "attack", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n" + planted(i), c))
    add("bad trailer", "attack", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX Bad\r\n\r\n" + planted(i), c))
    add("chunk extension", "attack", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\n", b"5;name=val\r\nhello\r\n0;x\r\n\r\n", c))
    add("CL body short then close", "partial", lambda c, r, i: req(i, "Content-Length: 100\r\n", b"x" * 50, c), end="close", w=3)
    add("CL body short then half-close", "halfclose", lambda c, r, i: req(i, "Content-Length: 100\r\n", b"x" * 50, c), end="halfclose", w=3)
    add("chunked unfinished then close", "partial", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n5\r\nwor", c), end="close", w=2)
    add("chunked no last-chunk then half-close", "halfclose", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n", c), end="halfclose", w=2)
    add("chunked no final CRLF then half-close", "halfclose", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n", c), end="halfclose", w=2)
    add("huge CL then close", "partial", lambda c, r, i: req(i, "Content-Length: 900000\r\n", b"y" * 1000, c), end="close")
    # ------------------------------------------------------------------ header syntax
    add("space in header name", "attack", lambda c, r, i: req(i, "X Foo: bar\r\nContent-Length: 5\r\n", b"hello", c))
    add("space before colon", "attack", lambda c, r, i: req(i, "X-Foo : bar\r\nContent-Length: 5\r\n", b"hello", c))
    add("obs-fold", "attack", lambda c, r, i: req(i, "X-Foo: bar\r\n baz\r\nContent-Length: 5\r\n", b"hello", c))
    add("header without colon", "attack", lambda c, r, i: req(i, "X-Foo\r\nContent-Length: 5\r\n", b"hello", c))
    add("NUL in header value", "attack", lambda c, r, i: req(i, "X-Foo: a\x00b\r\nContent-Length: 5\r\n", b"hello", c))
    add("CR in header value", "attack", lambda c, r, i: req(i, "X-Foo: a\rb\r\nContent-Length: 5\r\n", b"hello", c))
    add("LF-only line endings", "attack", lambda c, r, i: ("POST /f/%d/x HTTP/1.1\nHost: fuzz.test\nX-Fuzz-Id: %d\nX-Fuzz-Nonce: %s\nContent-Length: 5\n\nhello" % (i, i, c.nonce_for(i))).encode())
    add("mixed LF/CRLF", "attack", lambda c, r, i: ("POST /f/%d/x HTTP/1.1\r\nHost: fuzz.test\nX-Fuzz-Id: %d\r\nX-Fuzz-Nonce: %s\r\nContent-Length: 5\r\n\r\nhello" % (i, i, c.nonce_for(i))).encode())
    add("two spaces in request line", "attack", lambda c, r, i: req(i, "", b"", c, method="GET  "))
    add("HTTP/1.2", "attack", lambda c, r, i: req(i, "", b"", c, method="GET", version="HTTP/1.2"))
    add("HTTP/2.0", "attack", lambda c, r, i: req(i, "", b"", c, method="GET", version="HTTP/2.0"))
    add("lowercase version", "attack", lambda c, r, i: req(i, "", b"", c, method="GET", version="http/1.1"))
    add("no version", "attack", lambda c, r, i: ("GET /f/%d/x\r\nHost: fuzz.test\r\n%s\r\n" % (i, ids(c, i))).encode())
    add("NUL in method", "attack", lambda c, r, i: req(i, "", b"", c, method="G\x00ET"))
    add("Connection: content-length", "attack", lambda c, r, i: req(i, "Connection: content-length\r\nContent-Length: %d\r\n" % (len(planted(i))), planted(i), c), w=3)
    add("Connection: transfer-encoding", "attack", lambda c, r, i: req(i, "Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n", chunked5(i)[:-len(planted(i))], c), w=2)
    add("Connection: host", "attack", lambda c, r, i: req(i, "Connection: host\r\nContent-Length: 0\r\n", b"", c), w=2)
    add("Upgrade: h2c", "attack", lambda c, r, i: req(i, "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n", b"", c, method="GET"))
    add("Expect: 100-continue", "attack", lambda c, r, i: req(i, "Expect: 100-continue\r\nContent-Length: 5\r\n", b"hello", c))
    # ------------------------------------------------------------------ hosts and paths
    for p in ("/../secret", "/f/../../secret", "/%2e%2e/secret", "/a/%2E%2E/%2e%2e/secret", "/a/./b/../../../x",
              "/a/..%2f..%2fsecret", "//a//b", "/%00", "/a%2fb", "a/b", "*", "http://fuzz.test/abs", "/f/..",
              "/%zz", "/\x7f"):
        add("path %r" % p, "badpath", lambda c, r, i, p=p: req(i, "", b"", c, method="GET", path=p))
    for h in ("evil%2ecom.fuzz.test", "a/b.fuzz.test", "fuzz test", "\"fuzz.test\"", "fuzz.test:abc", "",
              "x.fuzz.test/..", "fuzz.test@evil", "-x.fuzz.test", "fuzz.test..", "[::1", "x" * 300 + ".fuzz.test",
              "other.test", "a.b.c.fuzz.test:99999"):
        add("host %r" % h, "badhost", lambda c, r, i, h=h: req(i, "", b"", c, method="GET", host="Host: %s\r\n" % h))
    add("two Hosts", "badhost", lambda c, r, i: req(i, "", b"", c, method="GET", host="Host: fuzz.test\r\nHost: other.test\r\n"))
    add("no Host (1.1)", "badhost", lambda c, r, i: req(i, "", b"", c, method="GET", host=""))
    # ------------------------------------------------------------------ sizes
    add("header 70 KB", "oversize", lambda c, r, i: req(i, "X-Big: %s\r\n" % ("a" * 70000), b"", c, method="GET"), w=2)
    add("header 300 KB", "oversize", lambda c, r, i: req(i, "X-Big: %s\r\n" % ("a" * 300000), b"", c, method="GET"))
    add("header 1 MB", "oversize", lambda c, r, i: req(i, "X-Big: %s\r\n" % ("a" * 1048576), b"", c, method="GET"), w=0.3)
    add("150 headers", "oversize", lambda c, r, i: req(i, "".join("X-H%d: v\r\n" % k for k in range(150)), b"", c, method="GET"), w=2)
    add("2000 headers", "oversize", lambda c, r, i: req(i, "".join("X-H%d: v\r\n" % k for k in range(2000)), b"", c, method="GET"))
    add("request line 10 KB", "oversize", lambda c, r, i: req(i, "", b"", c, method="GET", path="/f/%d/%s" % (i, "a" * 10000)))
    add("request line 70 KB", "oversize", lambda c, r, i: req(i, "", b"", c, method="GET", path="/f/%d/%s" % (i, "a" * 70000)), w=2)
    add("request line 300 KB", "oversize", lambda c, r, i: req(i, "", b"", c, method="GET", path="/f/%d/%s" % (i, "a" * 300000)))
    add("body 1.5 MB (CL)", "oversize", lambda c, r, i: req(i, "Content-Length: 1572864\r\n", b"z" * 1572864, c), w=0.5)
    add("body 1.5 MB (chunked)", "oversize", lambda c, r, i: req(i, "Transfer-Encoding: chunked\r\n", chunk_body(r, b"z" * 1572864, 65536), c), w=0.5)
    add("CL 5 GB declared", "oversize", lambda c, r, i: req(i, "Content-Length: 5000000000\r\n", b"z" * 100, c), end="close")
    return A


ATTACKS = attacks()


def mutate(rng, raw):
    b = bytearray(raw)
    ops = rng.choice((1, 1, 1, 2, 3))
    tokens = [b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"0", b"\x00", b",", b"chunked", b";",
              b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n", b"\r\n\r\n", b"ffffffff", b"-", b"%2e%2e/"]
    for _ in range(ops):
        if not b:
            break
        op = rng.random()
        pos = rng.randrange(len(b))
        if op < 0.3:
            b[pos] ^= 1 << rng.randrange(8)
        elif op < 0.45:
            b[pos] = rng.randrange(256)
        elif op < 0.65:
            b[pos:pos] = rng.choice(tokens)
        elif op < 0.75:
            b[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op < 0.85:
            del b[pos:pos + rng.randint(1, 16)]
        elif op < 0.95:
            del b[pos:]
        else:
            # duplicate a line
            lines = bytes(b).split(b"\r\n")
            k = rng.randrange(len(lines))
            lines.insert(k, lines[k])
            b = bytearray(b"\r\n".join(lines))
    return bytes(b)


def junk(rng):
    r = rng.random()
    if r < 0.35:
        return "random bytes", rng.randbytes(rng.randint(1, 3000))
    if r < 0.55:
        return "random printable", bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz /:.-\r\n\t0123456789")
                                         for _ in range(rng.randint(1, 2000)))
    if r < 0.65:
        return "GET + random", b"GET " + rng.randbytes(rng.randint(1, 500))
    if r < 0.75:
        return "empty lines", b"\r\n" * rng.randint(1, 3000)
    if r < 0.85:
        return "h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rng.randbytes(rng.randint(0, 64))
    if r < 0.93:
        return "TLS ClientHello-like", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(rng.randint(0, 500))
    return "response as request", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


# ------------------------------------------------------------------------------- client
class Closed(Exception):
    pass


async def read_response(reader):
    """-> (status, headers dict lowercased). Skips 1xx. Raises Closed on EOF before a whole response."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            raise Closed("eof" if not e.partial else "eof mid-head")
        except asyncio.LimitOverrunError:
            raise Closed("response head too large")
        except (ConnectionError, OSError):
            raise Closed("reset")
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise Closed("unparsable response: %r" % head[:80])
        status = int(parts[1])
        h = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            h[k.strip().lower()] = v.strip()
        if 100 <= status < 200:
            continue
        try:
            if h.get(b"transfer-encoding", b"").lower() == b"chunked":
                while True:
                    ln = await reader.readuntil(b"\r\n")
                    n = int(ln.split(b";")[0].strip() or b"0", 16)
                    if n == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":
                            pass
                        break
                    await reader.readexactly(n + 2)
            elif b"content-length" in h:
                await reader.readexactly(int(h[b"content-length"]))
            elif status not in (204, 304):
                await reader.read(-1)  # close-delimited
        except asyncio.IncompleteReadError:
            raise Closed("eof mid-body")
        except (ConnectionError, OSError, ValueError):
            raise Closed("reset")
        return status, h


def status_class(st):
    if 200 <= st < 300:
        return "2xx"
    if st in (400, 404, 408, 413, 414, 431):
        return str(st)
    return "other %d" % st


class Client:
    def __init__(self, camp, port):
        self.camp, self.port = camp, port

    async def open(self):
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def write_pieces(self, writer, pieces, rng, delay=None, reader=None, progress=None):
        for k, p in enumerate(pieces):
            writer.write(p)
            await writer.drain()
            if progress is not None:
                progress()
            if k + 1 < len(pieces):
                await asyncio.sleep(delay if delay is not None else rng.choice((0, 0, 0.001, 0.003)))
                # a slow client stops writing once the server has answered or closed
                if reader is not None and (reader.at_eof() or len(reader._buffer)):
                    return

    def check_valid_response(self, it, st, h):
        cls = status_class(st)
        sid = h.get(b"x-seen-id")
        if sid is not None and cls != "2xx" and sid != str(it.rid).encode():
            self.camp.violation("response-to-other-bytes",
                                "valid request %d (%s %s) got the backend's %d response to other bytes (X-Seen-Id %r)"
                                % (it.rid, it.method, it.path, st, sid))
        if cls == "2xx":
            sid = h.get(b"x-seen-id", b"").decode("latin-1")
            shash = h.get(b"x-seen-hash", b"").decode("latin-1")
            if sid != str(it.rid) or shash != it.body_hash:
                self.camp.violation("valid-request-corrupted",
                                    "2xx response to valid request %d (%s %s, body %dB sha %s) reports id %r sha %r"
                                    % (it.rid, it.method, it.path, it.body_len, it.body_hash[:12], sid, shash[:12]))
        return cls

    async def run_conn(self, plan, rng):
        """plan: (valid items + their raw bytes, pipelined?, tail or None)."""
        valid, pipelined, tail = plan
        camp = self.camp
        try:
            reader, writer = await self.open()
        except OSError as e:
            for it, _ in valid:
                camp.outcome(it, "connect failed")
            if tail:
                camp.outcome(tail[0], "connect failed")
            camp.note["client connect error: %s" % type(e).__name__] += 1
            return
        done = 0
        stage = ["-"]
        try:
            # VALID_WAIT bounds each request (each response of a pipeline), not the connection.
            # While writing, each piece the proxy takes moves the deadline: this client's own
            # pauses between pieces (thousands of them for a body cut inside its chunk-size
            # lines, on an event loop this busy) are not the proxy's time, but a proxy that
            # stops reading stops the writes, and the deadline passes.
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(None) as cm:
                def progress():
                    cm.reschedule(loop.time() + self.camp.a.valid_wait)
                if pipelined and valid:
                    raw = b"".join(r for _, r in valid)
                    cm.reschedule(loop.time() + self.camp.a.valid_wait)
                    stage = ["writing"]
                    await self.write_pieces(writer, split_points(rng, raw), rng, progress=progress)
                    stage[0] = "written, reading"
                    for it, _ in valid:
                        cm.reschedule(loop.time() + self.camp.a.valid_wait)
                        st, h = await read_response(reader)
                        camp.outcome(it, self.check_valid_response(it, st, h))
                        done += 1
                else:
                    for it, raw in valid:
                        cm.reschedule(loop.time() + self.camp.a.valid_wait)
                        stage = ["writing"]
                        await self.write_pieces(writer, split_points(rng, raw), rng, progress=progress)
                        stage[0] = "written, reading"
                        cm.reschedule(loop.time() + self.camp.a.valid_wait)
                        st, h = await read_response(reader)
                        camp.outcome(it, self.check_valid_response(it, st, h))
                        done += 1
        except Closed as e:
            camp.vlog.write("NOTE connection closed (%s) after %d of %d valid requests (%s)\n" %
                            (e, done, len(valid), "pipelined" if pipelined else "sequential"))
            for it, _ in valid[done:]:
                camp.outcome(it, "closed, no response")
            if tail:
                camp.outcome(tail[0], "not sent (closed before)")
            writer.close()
            return
        except TimeoutError:  # before OSError: TimeoutError is one
            camp.vlog.write("NOTE no response within %ss after %d of %d valid requests (%s, client %s): next id %d "
                            "%s %s body %dB\n" % (camp.a.valid_wait, done, len(valid),
                                                  "pipelined" if pipelined else "sequential", stage[0], valid[done][0].rid,
                                            valid[done][0].method, valid[done][0].path, valid[done][0].body_len))
            if os.environ.get("STALL_DUMP"):
                # What stood on this connection (both ends: queues, bytes each way, when each
                # side last sent) and on any backend connection with bytes unread.
                port = writer.get_extra_info("sockname")[1]
                conn = subprocess.run(["ss", "-tni", "( sport = :%d or dport = :%d )" % (port, port)],
                                      capture_output=True, text=True).stdout
                backend = subprocess.run(["ss", "-tn", "( sport = :%d or dport = :%d )"
                                          % (camp.a.backend_port, camp.a.backend_port)],
                                         capture_output=True, text=True).stdout.splitlines()
                queued = [ln for ln in backend[1:] if ln.split()[1:3] != ["0", "0"]]
                with open(os.environ["STALL_DUMP"], "a") as f:
                    f.write("== client port %d, %d of %d done, stage %s\n%s-- backend sockets with queued bytes: %d\n%s\n"
                            % (port, done, len(valid), stage[0], conn, len(queued), "\n".join(queued)))
            for it, _ in valid[done:]:
                camp.outcome(it, "no response, held open")
            if tail:
                camp.outcome(tail[0], "not sent (closed before)")
            writer.close()
            return
        except (ConnectionError, OSError):
            for it, _ in valid[done:]:
                camp.outcome(it, "closed, no response")
            if tail:
                camp.outcome(tail[0], "not sent (closed before)")
            writer.close()
            return
        if tail:
            it, pieces, end, wait, delay = tail
            what = None
            try:
                async with asyncio.timeout(wait):
                    try:
                        await self.write_pieces(writer, pieces, rng, delay, reader if delay else None)
                        if end == "halfclose":
                            writer.write_eof()
                    except (ConnectionError, OSError):
                        pass  # the proxy may answer and close before it read everything
                    if end == "close":
                        what = "client closed (no read)"
                    else:
                        st, h = await read_response(reader)
                        what = status_class(st)
                        if it.kind == "slow-valid":
                            what = self.check_valid_response(it, st, h)
            except Closed:
                what = "closed, no response"
            except TimeoutError:  # before OSError: TimeoutError is one
                what = "no response, held open"
            except (ConnectionError, OSError):
                what = "closed, no response"
            camp.outcome(it, what)
        try:
            writer.close()
        except Exception:
            pass


# ------------------------------------------------------------------------------- plans
def make_plans(camp, rng, n, a):
    """Connection plans holding about n requests."""
    plans = []
    total = 0
    weights = [w for (_, _, _, _, w) in ATTACKS]
    while total < n:
        r = rng.random()
        valid = []
        tail = None
        if r < a.hostile:
            # a hostile item, alone or after a few valid requests
            k = rng.choice((0, 0, 0, 1, 2))
            for _ in range(k):
                valid.append(make_valid(camp, rng))
            h = rng.random()
            if h < 0.40:
                name, kind, fn, end, _ = rng.choices(ATTACKS, weights)[0]
                rid = camp.next_id
                camp.next_id += 1
                raw = fn(camp, rng, rid)
                it = hostile_item(camp, rng, kind, name, raw, rid=rid)
                pieces = split_points(rng, raw) if len(raw) < 100000 else [raw]
                tail = (it, pieces, end, a.hostile_wait, None)
            elif h < 0.80:
                base, raw = make_valid(camp, rng, keep=True)
                camp.items.pop(base.rid)  # the unmutated one is not what is sent
                m = mutate(rng, raw)
                it = hostile_item(camp, rng, "mutated", None, m, body=base.body, rid=base.rid)
                it.method = base.method
                end = "halfclose" if rng.random() < 0.5 else "read"
                tail = (it, split_points(rng, m), end, a.hostile_wait, None)
            elif h < 0.90:
                name, m = junk(rng)
                rid = camp.new_id()
                it = hostile_item(camp, rng, "junk", name, m, rid=rid)
                tail = (it, [m], rng.choice(("read", "halfclose")), a.hostile_wait, None)
            else:
                base, raw = make_valid(camp, rng, keep=True)
                camp.items.pop(base.rid)
                cut = rng.randint(1, len(raw) - 1)
                kind = rng.choice(("partial", "halfclose"))
                it = hostile_item(camp, rng, kind, "truncated valid request", raw[:cut], body=base.body, rid=base.rid)
                it.method = base.method
                tail = (it, split_points(rng, raw[:cut]), "close" if kind == "partial" else "halfclose",
                        a.hostile_wait, None)
            plans.append((valid, False, tail))
            total += len(valid) + 1
        else:
            k = rng.choice((1, 1, 2, 3, 5, 8, 13, 20, 30))
            k = min(k, max(1, n - total))
            pipelined = rng.random() < 0.35
            for j in range(k):
                valid.append(make_valid(camp, rng, close=(j == k - 1 and rng.random() < 0.1)))
            plans.append((valid, pipelined, None))
            total += k
    return plans


def slow_plans(camp, rng, a):
    plans = []
    for _ in range(a.slow_per_batch):
        it, raw = make_valid(camp, rng, kind="slow-valid")
        camp.items[it.rid].kind = "slow-valid"
        s = rng.random()
        head_end = raw.index(b"\r\n\r\n") + 4
        if s < 0.4:
            # slowloris: the head one byte at a time; a proxy with a whole-head deadline closes it
            it.kind = "slow-head"
            it.name = "slowloris head (1 byte / 0.25 s)"
            it.m = raw
            pieces = [raw[i:i + 1] for i in range(head_end)] + ([raw[head_end:]] if raw[head_end:] else [])
            plans.append(([], False, (it, pieces, "read", a.slow_wait, 0.25)))
        elif s < 0.7:
            # slow body, bytes within body_timeout: must succeed
            it.name = "slow body (1 piece / 0.5 s, under body_timeout)"
            body = raw[head_end:]
            n = max(1, len(body) // 4)
            pieces = [raw[:head_end]] + [body[i:i + n] for i in range(0, len(body), n)]
            pieces = pieces[:6] + ([b"".join(pieces[6:])] if len(pieces) > 6 else [])
            plans.append(([], False, (it, pieces, "read", a.slow_wait, 0.5)))
        else:
            # stalled body: the head and one byte, then nothing; body_timeout closes it
            it.kind = "slow-stall"
            it.name = "stalled body (head + 1 byte, then silence)"
            it.m = raw
            body = raw[head_end:]
            it.m = raw[:head_end] + body[:1]
            plans.append(([], False, (it, [it.m], "read", a.slow_wait, 0)))
    return plans


# ------------------------------------------------------------------------------- switchyard
def pdeathsig():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def start_switchyard(camp):
    """Starts the proxy under test (--cmd, run by bash with exec: switchyard, or nginx)."""
    a = camp.a
    camp.sw_log = open(a.log, "ab")
    env = dict(os.environ, SWITCHYARD_LOG=a.sw_log_level)
    camp.sw = subprocess.Popen(["bash", "-c", "exec " + a.cmd], cwd=a.cwd,
                               stdout=camp.sw_log, stderr=subprocess.STDOUT, env=env, preexec_fn=pdeathsig)


def rss_kb(pid):
    """VmRSS of PID and its children (nginx: master + workers), kB."""
    pids = {pid}
    try:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open("/proc/%s/stat" % d) as f:
                        st = f.read()
                    if int(st.rsplit(")", 1)[1].split()[1]) == pid:
                        pids.add(int(d))
                except (OSError, ValueError, IndexError):
                    pass
    except OSError:
        pass
    total, found = 0, False
    for p in pids:
        try:
            with open("/proc/%d/status" % p) as f:
                for ln in f:
                    if ln.startswith("VmRSS:"):
                        total += int(ln.split()[1])
                        found = True
        except OSError:
            pass
    return total if found else None


def metric_lines(admin_port):
    try:
        s = socket.create_connection(("127.0.0.1", admin_port), timeout=3)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        return [ln for ln in data.decode("latin-1").splitlines()
                if ln.startswith("switchyard_rejected_requests_total")]
    except OSError:
        return []


async def sanity(camp, client, rng):
    """One plain GET through the proxy: must be a 200 from the backend with the right id."""
    it, raw = make_valid(camp, rng, kind="sanity")
    it.method, it.body, it.body_len, it.body_hash = "GET", b"", 0, sha(b"")
    path = "/f/%d/sanity" % it.rid
    it.path = path
    raw = ("GET %s HTTP/1.1\r\nHost: fuzz.test\r\nX-Fuzz-Id: %d\r\nX-Fuzz-Nonce: %s\r\n\r\n"
           % (path, it.rid, camp.nonce_for(it.rid))).encode()
    try:
        async with asyncio.timeout(5):
            reader, writer = await client.open()
            writer.write(raw)
            st, h = await read_response(reader)
            writer.close()
        ok = st == 200 and h.get(b"x-seen-id", b"") == str(it.rid).encode()
        return ok, "%d" % st
    except (OSError, Closed, TimeoutError) as e:
        return False, type(e).__name__


async def wait_ready(camp, client, rng, secs=30):
    t0 = time.monotonic()
    while time.monotonic() - t0 < secs:
        if camp.sw.poll() is not None:
            return False
        ok, _ = await sanity(camp, client, rng)
        if ok:
            return True
        await asyncio.sleep(0.2)
    return False


# ------------------------------------------------------------------------------- main
async def main(a):
    camp = Campaign(a)
    Backend.camp = camp
    rng = camp.rng
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Backend, "127.0.0.1", a.backend_port, backlog=4096)
    client = Client(camp, a.proxy_port)
    start_switchyard(camp)
    try:
        if not await wait_ready(camp, client, rng):
            print("%s did not come up (see %s)" % (a.name, a.log), file=sys.stderr)
            return 2
        pid = camp.sw.pid
        rss0 = rss_kb(pid)
        rss_max = rss0
        t_start = time.monotonic()
        nbatches = max(1, -(-a.count // a.batch))
        print("robustness: %d requests in %d batches of %d, %d connections at a time, seed %d; "
              "%s pid %d, RSS %d kB" % (a.count, nbatches, a.batch, a.conc, a.seed, a.name, pid, rss0), flush=True)
        print("%5s %8s %8s %7s %7s %7s %7s %7s %7s %7s %7s %7s %6s %6s %9s %7s %s" % (
            "batch", "sent", "2xx", "400", "408", "413", "414", "431", "404", "closed", "held", "other",
            "viol", "breach", "RSS kB", "secs", "sanity"), flush=True)
        sanity_fail = 0
        for b in range(1, nbatches + 1):
            camp.current_batch = b
            before = camp.out.copy()
            vb, bb = sum(camp.viol.values()), sum(camp.breach.values())
            n = min(a.batch, a.count - (b - 1) * a.batch)
            tb = time.monotonic()
            plans = make_plans(camp, rng, n - a.slow_per_batch, a)
            sp = slow_plans(camp, rng, a)
            queue = collections.deque(plans)
            rng.shuffle(queue)

            async def worker(seed):
                wr = random.Random(seed)
                while queue:
                    p = queue.popleft()
                    await client.run_conn(p, wr)

            slow = [asyncio.create_task(client.run_conn(p, random.Random(rng.random()))) for p in sp]
            await asyncio.gather(*[worker(rng.random()) for _ in range(a.conc)], *slow)
            await asyncio.sleep(0.3)  # let the backend see what the proxy still forwards
            alive = camp.sw.poll() is None
            if not alive:
                camp.crashes.append((b, camp.sw.returncode))
                print("!! %s exited (code %s) during batch %d; restarting" % (a.name, camp.sw.returncode, b), flush=True)
                camp.restarts += 1
                start_switchyard(camp)
                await wait_ready(camp, client, rng)
            ok, what = await sanity(camp, client, rng)
            if not ok:
                sanity_fail += 1
            rss = rss_kb(camp.sw.pid) or 0
            rss_max = max(rss_max, rss)
            d = camp.out - before
            known = ("2xx", "400", "408", "413", "414", "431", "404", "closed, no response", "no response, held open")
            other = sum(v for k, v in d.items() if k not in known)
            print("%5d %8d %8d %7d %7d %7d %7d %7d %7d %7d %7d %7d %6d %6d %9d %7.1f %s" % (
                b, sum(d.values()), d["2xx"], d["400"], d["408"], d["413"], d["414"], d["431"], d["404"],
                d["closed, no response"], d["no response, held open"], other, sum(camp.viol.values()) - vb,
                sum(camp.breach.values()) - bb, rss, time.monotonic() - tb,
                ("ok" if ok else "FAILED (%s)" % what) + ("" if alive else " (after restart)")), flush=True)
            if b >= 2:
                camp.forget_batch(b - 2)
        dur = time.monotonic() - t_start
        await asyncio.sleep(0.5)
        rss1 = rss_kb(camp.sw.pid) or 0
        report(camp, rss0, rss1, rss_max, dur, sanity_fail)
        rc = 0
        if sum(camp.viol.values()) or camp.restarts or sanity_fail:
            rc = 1
        return rc
    finally:
        if camp.sw and camp.sw.poll() is None:
            camp.sw.terminate()
            try:
                camp.sw.wait(10)
            except subprocess.TimeoutExpired:
                camp.sw.kill()
        server.close()


def report(camp, rss0, rss1, rss_max, dur, sanity_fail):
    o = camp.out
    total = sum(o.values())
    print()
    print("== robustness summary")
    rows = [("requests sent", total)]
    for k in ("2xx", "400", "408", "413", "414", "431", "404", "closed, no response", "no response, held open",
              "client closed (no read)", "not sent (closed before)"):
        rows.append(("  " + k, o[k]))
    others = {k: v for k, v in o.items() if k not in dict((r[0].strip(), 0) for r in rows)}
    for k, v in sorted(others.items()):
        rows.append(("  " + k, v))
    rows += [("valid requests sent", sum(camp.by_kind[k].total() for k in ("valid",))),
             ("  valid requests not answered 2xx", sum(camp.valid_not2xx.values())),
             ("backend: requests received", camp.backend_total),
             ("backend: valid requests received intact", camp.backend_valid),
             ("backend: connections accepted", camp.backend_conns),
             ("VIOLATIONS", sum(camp.viol.values())),
             ("SPEC breaches (hostile message forwarded / not canonical)", sum(camp.breach.values())),
             ("%s restarts (crashes)" % camp.a.name, camp.restarts),
             ("sanity GET failures after a batch", sanity_fail),
             ("RSS before / after / max (kB)", "%d / %d / %d" % (rss0, rss1, rss_max)),
             ("duration (s)", "%.0f" % dur),
             ("requests/s (all kinds)", "%.0f" % (total / dur if dur else 0))]
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print("%-*s  %s" % (w, k, v))
    if camp.valid_not2xx:
        print("\nvalid requests not answered 2xx: " + ", ".join("%s %d" % kv for kv in camp.valid_not2xx.most_common()))
    print("\n== outcomes by kind")
    cols = ["2xx", "400", "408", "413", "414", "431", "404", "closed, no response", "no response, held open",
            "client closed (no read)"]
    short = ["2xx", "400", "408", "413", "414", "431", "404", "closed", "held", "cl-noread", "other"]
    print("%-12s %8s " % ("kind", "sent") + " ".join("%7s" % s for s in short))
    for kind in sorted(camp.by_kind):
        c = camp.by_kind[kind]
        other = c.total() - sum(c[k] for k in cols)
        print("%-12s %8d " % (kind, c.total()) + " ".join("%7d" % c[k] for k in cols) + " %7d" % other)
    print("\n== hostile messages by name (client outcome; backend: what reached it)")
    for name in sorted(camp.by_name):
        c = camp.by_name[name]
        print("  %-42s %s" % (name[:42], ", ".join("%s %d" % kv for kv in sorted(c.items()))))
    if camp.viol:
        print("\n== VIOLATIONS")
        for k, v in camp.viol.most_common():
            print("  %-30s %d" % (k, v))
            for ex in camp.examples[k][:3]:
                print("      e.g. " + ex[:700])
    if camp.breach:
        print("\n== SPEC breaches (counted, not violations)")
        for k, v in camp.breach.most_common():
            print("  %-70s %d" % (k[:70], v))
    if camp.note:
        print("\n== notes")
        for k, v in camp.note.most_common():
            print("  %-80s %d" % (k[:80], v))
    if camp.crashes:
        print("\n== crashes: " + ", ".join("batch %d exit %s" % c for c in camp.crashes))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    env = os.environ.get
    ap.add_argument("--name", default="switchyard")
    ap.add_argument("--cmd", required=True, help="the proxy's command line (bash, exec'd)")
    ap.add_argument("--cwd", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--sw-log-level", default=env("SW_LOG", "warn"))
    ap.add_argument("--proxy-port", type=int, required=True)
    ap.add_argument("--backend-port", type=int, required=True)
    ap.add_argument("--admin-port", type=int, default=0)
    ap.add_argument("--violations-log", required=True)
    ap.add_argument("--count", type=int, default=int(env("COUNT", "1000000")))
    ap.add_argument("--batch", type=int, default=int(env("BATCH", "20000")))
    ap.add_argument("--conc", type=int, default=int(env("CONC", "128")))
    ap.add_argument("--hostile", type=float, default=float(env("HOSTILE", "0.25")),
                    help="share of connection plans that carry a hostile message")
    ap.add_argument("--hostile-wait", type=float, default=float(env("HOSTILE_WAIT", "3")))
    ap.add_argument("--valid-wait", type=float, default=float(env("VALID_WAIT", "15")))
    ap.add_argument("--slow-per-batch", type=int, default=int(env("SLOW_PER_BATCH", "6")))
    ap.add_argument("--slow-wait", type=float, default=float(env("SLOW_WAIT", "4")))
    ap.add_argument("--seed", type=int, default=int(env("SEED", "10")))
    return ap.parse_args()


if __name__ == "__main__":
    args = parse_args()
    try:
        sys.exit(asyncio.run(main(args)))
    except KeyboardInterrupt:
        sys.exit(130)
