// node-postgres through the router's PostgreSQL port (PG* environment
// variables: user = the app, password = its token, database = the
// keyspace; KEY_A and KEY_B are bigint keys on two different shards):
// SCRAM login, named statements with parameters, a transaction, an error
// with its SQLSTATE, and keyless aggregates merged across shards (simple
// and extended protocol). Prints "node-postgres ok" last.
const { Client } = require('pg');

const check = (ok, what) => {
  if (!ok) throw new Error(what);
};

(async () => {
  const a = process.env.KEY_A;
  const b = process.env.KEY_B;
  const c = new Client();
  await c.connect();
  await c.query('BEGIN');
  await c.query({ name: 'ins', text: 'INSERT INTO items (id, v) VALUES ($1, $2)', values: [a, 'node'] });
  await c.query({ name: 'upd', text: 'UPDATE items SET v = $1 WHERE id = $2', values: ['node2', a] });
  await c.query('COMMIT');
  await c.query({ name: 'ins', text: 'INSERT INTO items (id, v) VALUES ($1, $2)', values: [b, 'node'] });
  const t = await c.query({
    text: 'SELECT $1::int AS i, $2::text AS s, $3::timestamptz AS ts, v FROM items WHERE id = $4',
    values: [7, 'é', new Date('2026-01-02T03:04:05Z'), a],
  });
  check(t.rows.length === 1 && t.rows[0].i === 7 && t.rows[0].ts instanceof Date, 'types ' + JSON.stringify(t.rows));
  check(t.rows[0].v === 'node2', 'committed value ' + t.rows[0].v);
  try {
    await c.query({ text: 'SELECT nope FROM items WHERE id = $1', values: [a] });
    check(false, 'no error');
  } catch (e) {
    check(e.code === '42703', 'sqlstate ' + e.code);
  }
  const simple = await c.query("SELECT count(*) AS n FROM items WHERE v LIKE 'node%'");
  check(simple.rows[0].n === '2', 'simple count ' + JSON.stringify(simple.rows));
  const ext = await c.query({ text: 'SELECT count(*) AS n, max(id) AS m FROM items WHERE v LIKE $1', values: ['node%'] });
  check(ext.rows[0].n === '2', 'extended count ' + JSON.stringify(ext.rows));
  check(ext.rows[0].m === String(Math.max(Number(a), Number(b))), 'max ' + JSON.stringify(ext.rows));
  await c.end();
  console.log('node-postgres ok ' + require('pg/package.json').version);
})().catch((e) => {
  console.error('node-postgres failed: ' + e.message);
  process.exit(1);
});
