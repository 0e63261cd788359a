"""Ordinary psycopg 3 work as a tenant role in its database (the
connection comes from the PG* environment variables): connect, DDL,
server-side prepared statements in a transaction, arrays, and the type
catalogue lookups psycopg makes for enums and other types. Prints one
line starting with "psycopg ok"; any failure exits non-zero."""

import psycopg
from psycopg.types import TypeInfo
from psycopg.types.enum import EnumInfo, register_enum

with psycopg.connect("", autocommit=True) as conn:
    conn.execute("CREATE TABLE py_items (id int PRIMARY KEY, note text, tags text[])")
    conn.execute("CREATE TYPE py_mood AS ENUM ('calm', 'busy')")
    with conn.transaction():
        for i in range(3):
            conn.execute(
                "INSERT INTO py_items VALUES (%s, %s, %s)",
                (i, f"n{i}", ["a", "b"]),
                prepare=True,
            )
    rows = conn.execute(
        "SELECT id, note, tags FROM py_items WHERE id >= %s ORDER BY id", (0,), prepare=True
    ).fetchall()
    assert len(rows) == 3 and rows[2] == (2, "n2", ["a", "b"]), rows
    mood = EnumInfo.fetch(conn, "py_mood")
    assert mood is not None, "enum py_mood not found"
    register_enum(mood, conn)
    assert TypeInfo.fetch(conn, "numeric") is not None, "type numeric not found"
    cur = conn.execute("SELECT 'busy'::py_mood, now(), 1.5::numeric, '{\"k\": 1}'::jsonb")
    calm, _, _, doc = cur.fetchone()
    assert calm.name == "busy" and doc == {"k": 1}, (calm, doc)
    print(f"psycopg ok {psycopg.__version__} server {conn.info.server_version}")
