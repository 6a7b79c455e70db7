// The compatibility suite's Node client: @clickhouse/client with its default settings. It
// prints one line per result row, "check<TAB>cell<TAB>...", which tests/compat/clients.py
// reads; the SQL comes from the environment (COMPAT_*), so the suite keeps one copy of it.
import { createClient } from '@clickhouse/client'

const env = process.env
const client = createClient({
  url: `http://127.0.0.1:${env.COMPAT_PORT}`,
  username: 'default',
  password: env.COMPAT_KEY,
  database: env.COMPAT_DATABASE,
})

const line = (check, cells) => console.log([check, ...cells].join('\t'))
const at = (value) => (value === null ? 'NULL' : value)
const rows = async (query, format, query_params) =>
  (await client.query({ query, format, query_params })).json()

try {
  const ping = await client.ping()
  if (!ping.success) throw ping.error
  for (const row of await rows(env.COMPAT_GROUP_BY, 'JSONEachRow')) {
    line('group_by', Object.values(row).map(String))
  }
  const typed = await rows(env.COMPAT_TYPED, 'JSONCompactEachRow')
  for (const [runId, createdAt, finishedAt, steps] of typed) {
    line('typed', [runId, at(createdAt), at(finishedAt), steps.join(',')])
  }
  const bound = await rows(env.COMPAT_SERVER_SIDE, 'JSONEachRow', { flow: 'checkout', steps: 2 })
  for (const row of bound) line('parameterized', Object.values(row).map(String))
  // The client's own introspection: the names and types of JSON's `meta`.
  const { meta } = await rows('SELECT * FROM runs_current LIMIT 0', 'JSON')
  for (const { name, type } of meta) {
    if (name.endsWith('ed_at')) line('columns', [name, type])
  }
} finally {
  await client.close()
}
