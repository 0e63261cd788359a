"""SQLAlchemy 2 (ORM, psycopg 3 driver) through the router's PostgreSQL
port: the engine's own start-up queries, objects added and read back by
their key, an update in a transaction, an error with its SQLSTATE, and
a keyless aggregate merged across shards. URL in SHARDLINE_URL; KEY_A and
KEY_B are bigint keys on two different shards. Prints "sqlalchemy ok"
last; any failure exits non-zero."""

import os

from sqlalchemy import BigInteger, String, create_engine, func, select, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    v: Mapped[str] = mapped_column(String)


a, b = int(os.environ["KEY_A"]), int(os.environ["KEY_B"])
engine = create_engine(os.environ["SHARDLINE_URL"].replace("postgresql://", "postgresql+psycopg://", 1))

# One key per transaction: the router pins a transaction to one shard.
for key in (a, b):
    with Session(engine) as s, s.begin():
        s.add(Item(id=key, v="orm"))

with Session(engine) as s, s.begin():
    item = s.get(Item, a)
    assert item is not None and item.v == "orm", item
    item.v = "orm2"

# A session's transaction stays on the shard of its first key.
for key, want in ((a, "orm2"), (b, "orm")):
    with Session(engine) as s:
        assert s.get(Item, key).v == want

with Session(engine) as s:
    try:
        s.execute(text("SELECT nope FROM items WHERE id = :k"), {"k": a})
        raise SystemExit("no error")
    except ProgrammingError as e:
        assert e.orig.sqlstate == "42703", e.orig.sqlstate
    s.rollback()

# A keyless aggregate, in a transaction no shard has joined yet.
with Session(engine) as s:
    n, top = s.execute(select(func.count(), func.max(Item.id)).where(Item.v.like("orm%"))).one()
    assert (n, top) == (2, max(a, b)), (n, top)

print("sqlalchemy ok")
