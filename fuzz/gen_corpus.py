#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/corpus/<target>/) from the protocol
exchanges below: what psql, pgbench and the drivers send and receive
(startup, SCRAM, simple and extended queries, COPY, errors), in the input
format of each target (see src/fuzzing/). Run from anywhere; it rewrites
the seed files it names and leaves any other file (crashes kept as
regressions) alone."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def msg(t, body=b""):
    return t + struct.pack("!i", len(body) + 4) + body


def cstr(s):
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def startup(params, version=196608):
    body = struct.pack("!i", version) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


SSL = struct.pack("!ii", 8, 80877103)
GSS = struct.pack("!ii", 8, 80877104)
CANCEL = struct.pack("!iiii", 16, 80877102, 1234, 5678)
PSQL = startup([("user", "app"), ("database", "appdb"), ("application_name", "psql"),
                ("client_encoding", "UTF8")])
PGBENCH = startup([("user", "bench"), ("database", "bench"), ("options", "-c search_path=a,b --work-mem=8MB -c x=a\\ b")])
CLIENT_FIRST = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"
CLIENT_FINAL = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="


def sasl_initial(mech, data):
    return msg(b"p", cstr(mech) + struct.pack("!i", len(data)) + data)


def query(sql):
    return msg(b"Q", cstr(sql))


def parse(name, sql, types=()):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!h", len(types)) + b"".join(struct.pack("!i", t) for t in types))


def bind(portal, stmt, params=()):
    body = cstr(portal) + cstr(stmt) + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", len(p)) + p
    return msg(b"B", body + struct.pack("!h", 0))


def describe(kind, name):
    return msg(b"D", kind + cstr(name))


def execute(portal, rows=0):
    return msg(b"E", cstr(portal) + struct.pack("!i", rows))


SYNC = msg(b"S")
FLUSH = msg(b"H")
TERMINATE = msg(b"X")


def ready(s=b"I"):
    return msg(b"Z", s)


def error(sev, code, text):
    return msg(b"E", b"S" + cstr(sev) + b"V" + cstr(sev) + b"C" + cstr(code) + b"M" + cstr(text) + b"\0")


def notice(text):
    return msg(b"N", b"SWARNING\0VWARNING\0C01000\0M" + cstr(text) + b"\0")


def row_desc(*names):
    body = struct.pack("!h", len(names))
    for n in names:
        body += cstr(n) + struct.pack("!ihihih", 0, 0, 23, 4, -1, 0)
    return msg(b"T", body)


def data_row(*vals):
    body = struct.pack("!h", len(vals))
    for v in vals:
        body += struct.pack("!i", len(v)) + v
    return msg(b"D", body)


def complete(tag):
    return msg(b"C", cstr(tag))


PARSE_OK, BIND_OK, CLOSE_OK, NO_DATA = msg(b"1"), msg(b"2"), msg(b"3"), msg(b"n")
PARAM_DESC = msg(b"t", struct.pack("!hi", 1, 23))
COPY_IN = msg(b"G", b"\0\0\0")
COPY_OUT = msg(b"H", b"\0\0\0")

CLIENT_STREAMS = {
    "simple_select": query("SELECT 1") + TERMINATE,
    "multi_statement": query("BEGIN; UPDATE t SET x = 1; COMMIT"),
    "extended_unnamed": parse("", "SELECT $1::int", [23]) + bind("", "", [b"42"]) + describe(b"P", "") + execute("") + SYNC,
    "extended_named": parse("s1", "SELECT 1") + describe(b"S", "s1") + SYNC + bind("", "s1") + execute("") + SYNC + msg(b"C", b"Ss1\0") + SYNC,
    "pgbench_prepared": b"".join(parse("P_%d" % i, "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2") for i in range(2)) + SYNC + bind("", "P_0", [b"1", b"2"]) + execute("") + SYNC,
    "copy_in": query("COPY t FROM STDIN") + msg(b"d", b"1\t2\n") + msg(b"d", b"3\t4\n") + msg(b"c"),
    "copy_fail": query("COPY t FROM STDIN") + msg(b"d", b"1\n") + msg(b"f", cstr("client gave up")),
    "function_call": msg(b"F", struct.pack("!ih", 1598, 0) + struct.pack("!h", 0) + struct.pack("!h", 0)),
    "flush_pipeline": parse("", "SELECT 1") + FLUSH + bind("", "") + execute("") + FLUSH + SYNC,
    "set_and_listen": query("SET search_path = app; LISTEN chan") + query("PREPARE p AS SELECT 1; EXECUTE p; DEALLOCATE p"),
    "unknown_type": query("SELECT 1") + msg(b"z", b"whatever"),
    "impossible_length": b"Q\0\0\0\x02",
    "huge_length": b"Q\x7f\xff\xff\xffSELECT",
    "truncated": b"Q\0\0\0\x64SELECT",
    "garbage_after_terminate": TERMINATE + b"\xde\xad\xbe\xef" * 4,
}

SERVER_STREAMS = {
    "select_answer": row_desc("?column?") + data_row(b"1") + complete("SELECT 1") + ready(),
    "login": msg(b"R", struct.pack("!i", 0)) + msg(b"S", cstr("server_version") + cstr("15.8")) + msg(b"K", struct.pack("!ii", 1, 2)) + ready(),
    "extended_answer": PARSE_OK + BIND_OK + PARAM_DESC + row_desc("int4") + data_row(b"42") + complete("SELECT 1") + ready(),
    "error_in_tx": complete("BEGIN") + ready(b"T") + error("ERROR", "42601", "syntax error") + ready(b"E"),
    "fatal": error("FATAL", "57P01", "terminating connection due to administrator command"),
    "fatal_protocol": error("FATAL", "08P01", "unexpected message type 0x50 during COPY from stdin"),
    "copy_in": COPY_IN + complete("COPY 2") + ready(),
    "copy_out": COPY_OUT + msg(b"d", b"1\t2\n") + msg(b"c") + complete("COPY 1") + ready(),
    "notices": notice("there is no transaction in progress") + msg(b"A", struct.pack("!i", 7) + cstr("chan") + cstr("payload")) + complete("COMMIT") + ready(),
    "empty_query": msg(b"I") + ready(),
    "bad_ready": msg(b"Z", b"IX"),
    "bad_status": msg(b"Z", b"Q"),
    "huge_row": b"D\x7f\xff\xff\xff" + b"\0" * 64,
    "close_nodata": CLOSE_OK + NO_DATA + msg(b"s") + ready(),
}

STARTUPS = {
    "psql_md5": b"\0" + PSQL + msg(b"p", cstr("md5" + "0" * 32)),
    "ssl_then_psql_scram": b"\x01" + SSL + PSQL + sasl_initial("SCRAM-SHA-256", CLIENT_FIRST) + msg(b"p", CLIENT_FINAL),
    "gss_ssl_scram": b"\x01" + GSS + SSL + PGBENCH + sasl_initial("SCRAM-SHA-256", b"y,,n=user,r=abc") + msg(b"p", b"c=eSws,r=abcdef,p=AAAA"),
    "cancel": b"\0" + CANCEL,
    "protocol_3_99": b"\0" + startup([("user", "app"), ("_pq_.ext", "x")], version=(3 << 16) | 99),
    "protocol_4": b"\0" + startup([("user", "app")], version=4 << 16),
    "no_user": b"\0" + startup([("database", "appdb")]),
    "many_params": b"\0" + startup([("p%d" % i, "v") for i in range(400)]),
    "bad_length": b"\0\x7f\x00\x00\x00\x00\x03\x00\x00",
    "not_terminated": b"\0" + struct.pack("!ii", 14, 196608) + b"user\0app",
    "sasl_plus": b"\x01" + PSQL + sasl_initial("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"),
    "sasl_bad_inner_length": b"\x01" + PSQL + msg(b"p", cstr("SCRAM-SHA-256") + struct.pack("!i", 99) + b"abc"),
    "password_with_nul": b"\0" + PSQL + msg(b"p", b"a\0b\0"),
}

SQL = {
    "select": b"SELECT 1",
    "commit_comment": b"/* app */ COMMIT",
    "commit_chain": b"INSERT INTO t VALUES (1); COMMIT AND CHAIN",
    "two_phase": b"PREPARE TRANSACTION 'x'; COMMIT PREPARED 'x'",
    "quoted": b"SELECT 'COMMIT', \"commit\", $$ROLLBACK$$, $tag$ x $tag$, E'\\'', U&'\\0041'",
    "nested_comments": b"/* a /* b */ c */ SELECT -- line\n 1",
    "unterminated": b"SELECT 'abc",
    "unterminated_dollar": b"SELECT $a$ abc",
    "set": b"SET search_path = a, b; SET LOCAL x.y = 1; RESET ALL; SET SESSION AUTHORIZATION bob",
    "prepare": b"PREPARE p (int) AS SELECT $1; EXECUTE p(1); DEALLOCATE ALL",
    "listen": b"LISTEN c; NOTIFY c, 'x'; UNLISTEN *",
    "hint": b"/* pgkeel:replica */ SELECT * FROM t WHERE id IN (1, 2, 3.5e10, 'x')",
    "discard": b"DISCARD ALL",
    "cursor": b"DECLARE c CURSOR WITH HOLD FOR SELECT 1; FETCH 1 FROM c",
    "advisory": b"SELECT pg_advisory_lock(1)",
    "temp": b"CREATE TEMP TABLE t (x int) ON COMMIT DROP",
    "rollback": b"ABORT WORK",
    "semicolons": b";;; ; BEGIN ;; END ;",
    "utf8": "SELECT 'héllo', \"ünïcode\"".encode(),
    "invalid_utf8": b"SELECT '\xff\xfe'",
}


def session_script(steps):
    """The session_core format: tag, arg, len, raw bytes."""
    out = b""
    for tag, arg, raw in steps:
        out += bytes([tag, arg, len(raw)]) + raw
    return out


def C(b):  # raw client bytes
    return (0, 0, b)


def S(b):  # raw server bytes
    return (1, 0, b)


SESSIONS = {
    "query_idle": (0, [C(query("SELECT 1")), S(row_desc("x") + data_row(b"1") + complete("SELECT 1")), S(ready())]),
    "tx_then_commit": (1, [C(query("BEGIN")), S(complete("BEGIN") + ready(b"T")), C(query("COMMIT")), S(complete("COMMIT") + ready())]),
    "extended_split": (1, [C(parse("s1", "SELECT 1")), C(bind("", "s1") + execute("")), C(SYNC), S(PARSE_OK + BIND_OK), S(complete("SELECT 1")), S(ready())]),
    "copy_in": (0, [C(query("COPY t FROM STDIN")), S(COPY_IN), C(msg(b"d", b"1\n") + SYNC), C(msg(b"c")), S(complete("COPY 1") + ready())]),
    "copy_out": (1, [C(query("COPY t TO STDOUT")), S(COPY_OUT + msg(b"d", b"1\n") + msg(b"c")), S(complete("COPY 1")), S(ready())]),
    "pipeline": (0, [C(query("SELECT 1") + query("SELECT 2")), S(complete("SELECT 1") + ready()), S(complete("SELECT 1") + ready())]),
    "error_recovery": (1, [C(parse("", "bad") + bind("", "") + execute("") + SYNC), S(error("ERROR", "42601", "syntax")), S(ready())]),
    "fatal_mid": (0, [C(query("SELECT 1")), S(error("FATAL", "57P01", "bye"))]),
    "one_request": (2, [C(query("SELECT 1") + query("INSERT 1")), S(complete("SELECT 1") + ready()), C(b"")]),
    "structured": (1, [(2, 0, b""), (4, 3, b""), (5, 0, b""), (3, 1, b"x"), (2, 2, b""), (2, 4, b""), (2, 7, b""), (4, 0, b""), (4, 1, b""), (5, 1, b"")]),
    "split_ready": (0, [C(query("SELECT 1")), S(b"Z\0\0"), S(b"\0\x05I")]),
    "terminate": (0, [C(query("SELECT 1") + TERMINATE + b"junk"), S(ready())]),
    "set_prelude_effects": (1, [C(query("SET search_path = x")), S(msg(b"S", cstr("search_path") + cstr("x")) + complete("SET") + ready())]),
}


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    for i, (name, s) in enumerate(CLIENT_STREAMS.items()):
        write("frontend", name, bytes([i % 4]) + s)
    for i, (name, s) in enumerate(SERVER_STREAMS.items()):
        write("backend", name, bytes([(i * 37) % 256]) + s)
    for name, s in STARTUPS.items():
        write("startup", name, s)
    for name, s in SQL.items():
        write("classify", name, s)
    for name, (opts, steps) in SESSIONS.items():
        write("session_core", name, bytes([opts]) + session_script(steps))
    # Client streams and server answers glued as the session core sees them.
    for name, s in CLIENT_STREAMS.items():
        if len(s) < 256:
            write("session_core", "client_" + name, b"\x01" + session_script([C(s), S(ready())]))


if __name__ == "__main__":
    main()
