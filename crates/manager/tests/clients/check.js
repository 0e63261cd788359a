// Ordinary node-postgres work as a tenant role in its database (the
// connection comes from the PG* environment variables): connect, DDL,
// named (server-side prepared) statements in a transaction, and type
// parsing. Prints one line starting with "node-postgres ok"; any failure
// exits non-zero.
const { Client } = require('pg');

(async () => {
  const c = new Client();
  await c.connect();
  await c.query('CREATE TABLE node_items (id int PRIMARY KEY, note text, at timestamptz DEFAULT now())');
  await c.query('BEGIN');
  for (let i = 0; i < 3; i++) {
    await c.query({
      name: 'insert-item',
      text: 'INSERT INTO node_items (id, note) VALUES ($1, $2)',
      values: [i, 'n' + i],
    });
  }
  await c.query('COMMIT');
  const r = await c.query({
    name: 'select-items',
    text: 'SELECT id, note, at FROM node_items WHERE id >= $1 ORDER BY id',
    values: [0],
  });
  if (r.rows.length !== 3 || !(r.rows[0].at instanceof Date)) {
    throw new Error('rows ' + JSON.stringify(r.rows));
  }
  const t = await c.query(`SELECT '{1,2}'::int[] AS a, '{"k": 1}'::jsonb AS j`);
  if (t.rows[0].a[1] !== 2 || t.rows[0].j.k !== 1) {
    throw new Error('types ' + JSON.stringify(t.rows));
  }
  await c.end();
  console.log('node-postgres ok ' + require('pg/package.json').version);
})().catch((e) => {
  console.error('node-postgres failed: ' + e.message);
  process.exit(1);
});
