"""Random values of every built-in type, through psycopg, in both formats.

Usage: python3 psycopg_types.py CONNINFO SEED [ROUNDS]

Each round selects a few dozen random values (scalars, NULLs, arrays of one
and two dimensions, empty arrays, big values) of random built-in types in one
statement, as parameters in the text or the binary format, and reads them
back in the text or the binary format. Prints one line per row read; run
against the server directly and through Proctor, the lines must be equal.
"""

import datetime as dt
import ipaddress
import json
import random
import sys
import uuid
from decimal import Decimal

import psycopg
from psycopg.types.json import Json, Jsonb
from psycopg.types.numeric import Int2, Int4, Int8, Float4
from psycopg.types.range import Range

dsn, seed = sys.argv[1], int(sys.argv[2])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 60
rng = random.Random(seed)

ALPHABET = "abcXYZ019 _-'\"\\{},;\t\n\u00e9\u00df\u4e2d\u0416\U0001F600"


def text(limit=40):
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, limit)))


def big_text():
    return "".join(rng.choice(ALPHABET) for _ in range(rng.choice([1000, 9000, 70000])))


def number(digits):
    return rng.randint(-(10**digits), 10**digits)


def instant():
    return dt.datetime(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                       rng.randint(0, 59), rng.randint(0, 59), rng.randint(0, 999999))


def zone():
    return dt.timezone(dt.timedelta(minutes=rng.randint(-14 * 60, 14 * 60)))


def json_value(depth=0):
    kind = rng.randint(0, 6 if depth < 3 else 3)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([number(3), number(30), rng.uniform(-1e6, 1e6), 4111111111111111])
    if kind == 3:
        return rng.choice([text(), text(), "ada@example.com", "card 4111 1111 1111 1111"])
    if kind == 4:
        return [json_value(depth + 1) for _ in range(rng.randint(0, 4))]
    return {text(8): json_value(depth + 1) for _ in range(rng.randint(0, 4))}


def word():
    return "".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 6)))


# Each type: its SQL name and a generator of Python values that psycopg dumps
# for it (typed where psycopg has a type of its own, else a string cast on
# the server). Arrays of each are made below.
TYPES = {
    "bool": lambda: rng.choice([True, False]),
    "int2": lambda: Int2(rng.randint(-32768, 32767)),
    "int4": lambda: Int4(rng.randint(-(2**31), 2**31 - 1)),
    "int8": lambda: Int8(rng.randint(-(2**63), 2**63 - 1)),
    "oid": lambda: str(rng.randint(0, 2**32 - 1)),
    "float4": lambda: Float4(rng.choice([rng.uniform(-1e30, 1e30), 0.0, -0.0, float("inf"), float("-inf"), 1.5])),
    "float8": lambda: rng.choice([rng.uniform(-1e300, 1e300), float("inf"), float("-inf"), -0.0, 5e-324]),
    "numeric": lambda: rng.choice([
        Decimal(number(rng.randint(1, 60))).scaleb(-rng.randint(0, 40)), Decimal("NaN"), Decimal("0.000"),
        Decimal(number(400)),
    ]),
    "money": lambda: f"{number(10) / 100:.2f}",
    "text": text,
    "varchar": text,
    "bpchar": lambda: text(20).rstrip(" "),
    "name": lambda: text(20)[:20],
    "char": lambda: rng.choice("abcXYZ019"),
    "bytea": lambda: rng.randbytes(rng.choice([0, 1, 16, 300, 5000, 100000])),
    "date": lambda: instant().date(),
    "time": lambda: instant().time(),
    "timetz": lambda: instant().time().replace(tzinfo=zone()),
    "timestamp": instant,
    "timestamptz": lambda: instant().replace(tzinfo=zone()),
    "interval": lambda: dt.timedelta(days=rng.randint(-100000, 100000), microseconds=rng.randint(0, 86399999999)),
    "uuid": lambda: uuid.UUID(int=rng.getrandbits(128)),
    "json": lambda: Json(json_value()),
    "jsonb": lambda: Jsonb(json_value()),
    "jsonpath": lambda: rng.choice(["$.a[*] ? (@ > 1)", "$", "strict $.b.c", '$."x y"']),
    "xml": lambda: f"<a n=\"{rng.randint(0, 99)}\">{word()}</a>",
    "inet": lambda: rng.choice([
        ipaddress.ip_interface(f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}/{rng.randint(8, 32)}"),
        ipaddress.IPv6Interface((rng.getrandbits(128), rng.randint(0, 128))),
    ]),
    "cidr": lambda: ipaddress.ip_network(f"192.168.{rng.randint(0, 255)}.0/24"),
    "macaddr": lambda: ":".join(f"{rng.randint(0, 255):02x}" for _ in range(6)),
    "macaddr8": lambda: ":".join(f"{rng.randint(0, 255):02x}" for _ in range(8)),
    "point": lambda: f"({rng.uniform(-1e3, 1e3)},{rng.uniform(-1e3, 1e3)})",
    "lseg": lambda: f"[(1,{rng.randint(0, 9)}),(3,4)]",
    "box": lambda: f"(({rng.randint(0, 9)},2),(3,4))",
    "path": lambda: rng.choice(["((0,0),(1,1),(2,0))", "[(0,0),(5,5)]"]),
    "polygon": lambda: f"((0,0),({rng.randint(1, 9)},0),(1,1))",
    "line": lambda: f"{{1,{rng.randint(1, 9)},3}}",
    "circle": lambda: f"<(0,0),{rng.randint(1, 99)}>",
    "bit": lambda: "1",
    "varbit": lambda: "".join(rng.choice("01") for _ in range(rng.randint(0, 70))),
    "tsvector": lambda: " ".join(word() for _ in range(rng.randint(0, 5))),
    "tsquery": lambda: " & ".join(word() for _ in range(rng.randint(1, 3))),
    "pg_lsn": lambda: f"{rng.randint(0, 2**32 - 1):X}/{rng.randint(0, 2**32 - 1):X}",
    "xid8": lambda: str(rng.randint(0, 2**63 - 1)),
    "int4range": lambda: Range(rng.randint(-99, 0), rng.choice([rng.randint(1, 99), None])),
    "int8range": lambda: Range(None, rng.randint(-(2**62), 2**62)),
    "numrange": lambda: Range(Decimal(number(5)).scaleb(-2), None, "()"),
    "daterange": lambda: Range(dt.date(2000, 1, 1), instant().date().replace(year=rng.randint(2001, 9999))),
    "tsrange": lambda: Range(dt.datetime(2000, 1, 1), None),
    "tstzrange": lambda: Range(None, instant().replace(tzinfo=dt.timezone.utc)),
    "int4multirange": lambda: "{[1,3),[" + str(rng.randint(5, 9)) + ",10)}",
    "regtype": lambda: rng.choice(["int4", "text", "timestamptz"]),
}


def value(type_name):
    """A value for one column: NULL, a scalar, or an array of them."""
    choice = rng.random()
    if choice < 0.1:
        return type_name, None
    make = TYPES[type_name]
    if choice < 0.7:
        if type_name in ("text", "bytea") and rng.random() < 0.1:
            return type_name, big_text() if type_name == "text" else rng.randbytes(200000)
        return type_name, make()
    # Arrays: one dimension with NULLs, empty, or two dimensions.
    shape = rng.random()
    if shape < 0.15:
        return type_name + "[]", []
    if shape < 0.75:
        return type_name + "[]", [None if rng.random() < 0.2 else make() for _ in range(rng.randint(1, 8))]
    width = rng.randint(1, 4)
    return type_name + "[]", [[make() for _ in range(width)] for _ in range(rng.randint(1, 3))]


def shown(cell):
    if isinstance(cell, memoryview):
        cell = bytes(cell)
    if isinstance(cell, (bytes, bytearray)) and len(cell) > 64:
        import hashlib
        return f"<{len(cell)} bytes {hashlib.sha256(cell).hexdigest()[:16]}>"
    if isinstance(cell, str) and len(cell) > 200:
        import hashlib
        return f"<{len(cell)} chars {hashlib.sha256(cell.encode()).hexdigest()[:16]}>"
    if isinstance(cell, list):
        return "[" + ", ".join(shown(c) for c in cell) + "]"
    if isinstance(cell, float) and cell != cell:
        return "nan"
    return repr(cell)


names = sorted(TYPES)
with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute("set timezone = 'UTC'; set intervalstyle = 'postgres'; set extra_float_digits = 3")
    for round_no in range(rounds):
        columns = [value(rng.choice(names)) for _ in range(rng.randint(1, 40))]
        placeholder = rng.choice(["%t", "%b"])
        # Strings for types psycopg has no dumper of its own are cast on the server.
        sql = "select " + ", ".join(f"{placeholder}::{t}" for t, _ in columns)
        binary = rng.random() < 0.5
        cur = conn.cursor(binary=binary)
        try:
            cur.execute(sql, [v for _, v in columns])
            rows = cur.fetchall()
            print(round_no, placeholder, binary, [shown(c) for c in rows[0]])
        except psycopg.Error as error:
            # A value the server refuses is refused alike directly and
            # through Proctor.
            print(round_no, placeholder, binary, "error", error.sqlstate, str(error).splitlines()[0])
