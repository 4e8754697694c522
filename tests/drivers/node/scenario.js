// pgkeel driver scenario: node-postgres (pg) with named queries.
//
// A query config with a `name` is parsed once per connection under that
// name and afterwards only bound and executed, so a pooler that lends each
// transaction a different server connection must make the name exist
// wherever the transaction lands.
//
// Connection parameters come from PGHOST, PGPORT, PGUSER, PGPASSWORD and
// PGDATABASE (node-postgres reads them itself). DRIVER_CLIENTS (20) and
// DRIVER_ITERATIONS (200) scale the run. Exits 1 naming the first failed
// check of each client.
'use strict'

const crypto = require('crypto')
const { pipeline } = require('stream/promises')
const { Readable, Writable } = require('stream')
const pg = require('pg')
const copyStreams = require('pg-copy-streams')

const CLIENTS = Number(process.env.DRIVER_CLIENTS || 20)
const ITERATIONS = Number(process.env.DRIVER_ITERATIONS || 200)
const COPY_ROWS = 1000
const LARGE_ROWS = 200000
const LARGE_CLIENTS = new Set([1, 2])
const CANCEL_CLIENT = 0
const DOOMED_ID = 1000000
const TIMEOUT_MS = 20000

class Failed extends Error {}

function check(cond, what) {
  if (!cond) throw new Failed(what)
}

const eq = (a, b) => JSON.stringify(a) === JSON.stringify(b)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function connect() {
  const c = new pg.Client({ connectionTimeoutMillis: 10000 })
  await c.connect()
  return c
}

async function setup() {
  const c = await connect()
  try {
    await c.query('BEGIN')
    for (let i = 0; i < CLIENTS; i++) {
      await c.query(`DROP SCHEMA IF EXISTS client_${i} CASCADE`)
      await c.query(`CREATE SCHEMA client_${i}`)
      await c.query(`CREATE TABLE client_${i}.items (id int PRIMARY KEY, client int NOT NULL, val text NOT NULL)`)
      await c.query(`CREATE TABLE client_${i}.copied (id int PRIMARY KEY, txt text NOT NULL)`)
    }
    await c.query('COMMIT')
  } finally {
    await c.end()
  }
}

async function waitActive(watch, marker) {
  const deadline = Date.now() + TIMEOUT_MS
  while (Date.now() < deadline) {
    const r = await watch.query({
      name: 'watch_active',
      text:
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' " +
        'AND datname = current_database() AND pid <> pg_backend_pid() AND position($1 in query) > 0',
      values: [marker],
    })
    if (r.rows[0].n > 0) return
    await sleep(20)
  }
  throw new Failed(`the query ${marker} never showed up as active in pg_stat_activity`)
}

async function cancelLongQuery(c, schema) {
  const watch = await connect()
  try {
    const started = Date.now()
    const q = new pg.Query({ name: 'sleep', text: 'SELECT pg_sleep($1) AS cancel_me', values: [30] })
    const outcome = new Promise((resolve) => {
      q.on('error', (e) => resolve(e))
      q.on('end', () => resolve(null))
    })
    c.query(q)
    try {
      await waitActive(watch, 'AS cancel_me')
    } finally {
      // node-postgres's cancel: a second Client opens the connection that
      // carries the CancelRequest for `c`'s running query. (pg 8 warns that
      // its own cancel() reads the deprecated Client.activeQuery.) Sent even
      // when the query was not seen: the phase fails either way, and `c` is
      // not left busy for 30 s.
      new pg.Client().cancel(c, q)
    }
    const err = await outcome
    check(err !== null, 'pg_sleep(30) finished: the cancel did not reach it')
    check(err.code === '57014', `cancel gave SQLSTATE ${err.code} (${err.message}), want 57014`)
    const r = await c.query({ name: 'after_cancel', text: 'SELECT 1 AS one, current_schema() AS s' })
    check(eq(r.rows[0], { one: 1, s: schema }), `after the cancel the session answered ${JSON.stringify(r.rows[0])}`)
    return (Date.now() - started) / 1000
  } finally {
    await watch.end()
  }
}

async function client(i, results, report) {
  const schema = `client_${i}`
  const app = `node-client-${i}`
  const who = `client ${i}`
  const c = await connect()
  try {
    await c.query(`SET search_path TO ${schema}`)
    await c.query(`SET application_name TO '${app}'`)

    const transactions = async () => {
      const pids = new Set()
      for (let n = 0; n < ITERATIONS; n++) {
        const val = `v${i}-${n}`
        await c.query('BEGIN')
        let r
        try {
          await c.query({ name: 'insert', text: 'INSERT INTO items (id, client, val) VALUES ($1, $2, $3)', values: [n, i, val] })
          r = await c.query({
            name: 'select',
            text:
              "SELECT val, client, current_schema() AS s, current_setting('application_name') AS app, " +
              'pg_backend_pid() AS pid FROM items WHERE id = $1',
            values: [n],
          })
        } catch (e) {
          // Leaves the session usable for the next phases.
          await c.query('ROLLBACK').catch(() => {})
          throw e
        }
        await c.query('COMMIT')
        const { pid, ...got } = r.rows[0]
        const want = { val, client: i, s: schema, app }
        check(eq(got, want), `transaction ${n}: read back ${JSON.stringify(got)}, want ${JSON.stringify(want)}`)
        pids.add(pid)
        const cnt = await c.query({ name: 'count_mine', text: 'SELECT count(*)::int AS n FROM items WHERE client = $1', values: [i] })
        check(cnt.rows[0].n === n + 1, `after transaction ${n}: ${cnt.rows[0].n} rows, want ${n + 1}`)
        if (n % 50 === 0) {
          const s = await c.query({ name: 'show_app', text: 'SHOW application_name' })
          check(s.rows[0].application_name === app, `SHOW application_name = ${s.rows[0].application_name}, want ${app}`)
        }
      }
      results[i] = pids.size
    }

    const rollback = async () => {
      await c.query('BEGIN')
      try {
        await c.query({ name: 'insert', text: 'INSERT INTO items (id, client, val) VALUES ($1, $2, $3)', values: [DOOMED_ID, i, 'doomed'] })
        let err = null
        try {
          await c.query({ name: 'divide', text: 'SELECT 1 / $1::int', values: [0] })
        } catch (e) {
          err = e
        }
        check(err !== null, '1/0 inside a transaction raised nothing')
        check(err.code === '22012', `1/0 gave SQLSTATE ${err.code}`)
      } finally {
        await c.query('ROLLBACK').catch(() => {})
      }
      const rb = await c.query({
        name: 'doomed',
        text: "SELECT count(*)::int AS n, current_schema() AS s, current_setting('application_name') AS app FROM items WHERE id = $1",
        values: [DOOMED_ID],
      })
      check(eq(rb.rows[0], { n: 0, s: schema, app }), `after ROLLBACK: ${JSON.stringify(rb.rows[0])}`)
    }

    const copy = async () => {
      const lines = []
      for (let k = 0; k < COPY_ROWS; k++) lines.push(`${k}\tc${i}-${k}\n`)
      const into = c.query(copyStreams.from('COPY copied (id, txt) FROM STDIN'))
      await pipeline(Readable.from([lines.join('')]), into)
      check(into.rowCount === COPY_ROWS, `COPY FROM reported ${into.rowCount} rows`)
      const chunks = []
      await pipeline(
        c.query(copyStreams.to('COPY (SELECT id, txt FROM copied ORDER BY id) TO STDOUT')),
        new Writable({
          write(chunk, _enc, done) {
            chunks.push(chunk)
            done()
          },
        }),
      )
      check(Buffer.concat(chunks).toString() === lines.join(''), 'COPY TO did not return the rows copied in')
    }

    const large = async () => {
      const r = await c.query({ name: 'large', text: 'SELECT g, md5(g::text) AS h FROM generate_series(1, $1) g', values: [LARGE_ROWS] })
      check(r.rows.length === LARGE_ROWS, `${r.rows.length} rows, want ${LARGE_ROWS}`)
      let sum = 0
      let bad = 0
      for (const row of r.rows) {
        sum += row.g
        if (crypto.createHash('md5').update(String(row.g)).digest('hex') !== row.h) bad++
      }
      check(sum === (LARGE_ROWS * (LARGE_ROWS + 1)) / 2, 'wrong sum of g')
      check(bad === 0, `${bad} rows with a wrong md5`)
    }

    const atTheEnd = async () => {
      const end = await c.query({ name: 'count_all', text: 'SELECT count(*)::int AS n FROM items' })
      check(end.rows[0].n === ITERATIONS, `${end.rows[0].n} rows in ${schema}.items, want ${ITERATIONS}`)
    }

    await report.run('prepared statements in 200 transactions', who, transactions)
    await report.run('error in a transaction, ROLLBACK', who, rollback)
    await report.run('COPY in and out', who, copy)
    if (LARGE_CLIENTS.has(i)) await report.run('large result', who, large)
    if (i === CANCEL_CLIENT) {
      await report.run('cancel', who, async () => {
        results.cancelSeconds = await cancelLongQuery(c, schema)
      })
    }
    await report.run('search_path at the end', who, atTheEnd)
  } finally {
    await c.end()
  }
}

async function listenNotify() {
  const listener = await connect()
  const notifier = await connect()
  try {
    const queue = []
    let wake = null
    listener.on('notification', (m) => {
      queue.push(m)
      if (wake) wake()
    })
    await listener.query('LISTEN drivers_events')
    for (let k = 0; k < 3; k++) {
      const payload = `hello-${k}`
      await notifier.query({ name: 'notify', text: "SELECT pg_notify('drivers_events', $1)", values: [payload] })
      const deadline = Date.now() + TIMEOUT_MS
      while (queue.length === 0 && Date.now() < deadline) {
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, deadline - Date.now())
          wake = () => {
            clearTimeout(timer)
            resolve()
          }
        })
      }
      check(queue.length > 0, `notification ${k} did not arrive within ${TIMEOUT_MS / 1000}s`)
      const m = queue.shift()
      check(m.channel === 'drivers_events' && m.payload === payload, `notification ${k}: ${m.channel}/${m.payload}`)
      const one = await listener.query({ name: 'echo', text: 'SELECT $1::int AS v', values: [k] })
      check(one.rows[0].v === k, `listener's query answered ${one.rows[0].v}`)
    }
  } finally {
    await listener.end()
    await notifier.end()
  }
}

async function verify() {
  const c = await connect()
  try {
    for (let i = 0; i < CLIENTS; i++) {
      const r = await c.query(
        `SELECT count(*)::int AS n, (count(*) FILTER (WHERE client <> $1))::int AS foreign, ` +
          `(count(*) FILTER (WHERE id = $2))::int AS doomed FROM client_${i}.items`,
        [i, DOOMED_ID],
      )
      check(eq(r.rows[0], { n: ITERATIONS, foreign: 0, doomed: 0 }), `client_${i}.items holds ${JSON.stringify(r.rows[0])}`)
    }
  } finally {
    await c.end()
  }
}

// Failures by phase: each phase runs even when an earlier one failed, so
// one run tells everything that breaks.
class Report {
  constructor() {
    this.failed = new Map()
  }

  async run(phase, who, fn) {
    try {
      await fn()
    } catch (e) {
      if (!this.failed.has(phase)) this.failed.set(phase, [])
      this.failed.get(phase).push(`${who}: ${e.constructor.name}: ${String(e.message).split('\n')[0]}`)
    }
  }

  exitIfFailed(driver) {
    for (const [phase, msgs] of this.failed) {
      console.error(`FAIL ${driver} [${phase}]: ${msgs.length} failed, first: ${msgs[0]}`)
      for (const m of msgs.slice(1, 3)) console.error(`    also ${m}`)
    }
    if (this.failed.size > 0) process.exit(1)
  }
}

async function main() {
  await setup()
  const results = {}
  const report = new Report()
  // Connecting and the SETs belong to no phase: their failure is the session's.
  await Promise.all(Array.from({ length: CLIENTS }, (_, i) => report.run('session', `client ${i}`, () => client(i, results, report))))
  await report.run('LISTEN/NOTIFY', 'listener', listenNotify)
  await report.run('final table contents', 'checker', verify)
  report.exitIfFailed('node-postgres')
  const pids = Array.from({ length: CLIENTS }, (_, i) => results[i])
  const version = require('pg/package.json').version
  console.log(
    `node-postgres ${version}: ${CLIENTS} clients x ${ITERATIONS} transactions ok; ` +
      `server backends seen per client: ${Math.min(...pids)}..${Math.max(...pids)}; ` +
      `cancel ok (57014 after ${results.cancelSeconds.toFixed(2)}s); COPY, large result, rollback, LISTEN/NOTIFY ok`,
  )
}

main().catch((e) => {
  console.error(`FAIL node-postgres: ${e.stack || e}`)
  process.exit(1)
})
