/**
 * Two Strapi nodes (two `strapi start` processes on one PostgreSQL
 * database) sharing the real Redis, as behind a load balancer: an edit on
 * one is an event on the other; a user blocked or an admin demoted through
 * one node loses access on the other within a second (revalidation is set
 * 10 min off, so Strapi's lifecycles and the bus do it); an entry's lock
 * is one lock across nodes, taken over across nodes, and a node killed
 * with SIGKILL gives its tabs' locks up when their lease lapses.
 */
import { randomUUID } from 'node:crypto'
import { ADMIN, TOPIC, UID, addAdmin, describeStrapi, open, startStrapi, until, type Running, type Socket } from './harness'

const DB = 'cms_realtime_strapi_nodes_test'
const LOCK_GRACE_MS = 2000
const LEASE_MS = 3000

describeStrapi()('two Strapi nodes on the Redis bus', () => {
  let a: Running
  let b: Running
  let jwt: string
  const sockets: Socket[] = []

  beforeAll(async () => {
    const env = { REDIS_URL: 'redis://127.0.0.1:6379', REALTIME_REVALIDATE_MS: '600000', REALTIME_LOCK_GRACE_MS: String(LOCK_GRACE_MS), REALTIME_LOCK_LEASE_MS: String(LEASE_MS) }
    a = await startStrapi(DB, env)
    b = await startStrapi(DB, env, { reset: false })
    jwt = (await a.api('/admin/login', { method: 'POST', body: ADMIN })).body.data.token
  }, 200_000)

  afterAll(async () => {
    for (const s of sockets) s.ws.terminate()
    await a?.stop()
    await b?.stop()
  })

  async function on(node: Running, token: string, topic = TOPIC): Promise<Socket> {
    const s = await open(node.wsUrl, { Authorization: `Bearer ${token}` })
    if (!('ws' in s)) throw new Error(`refused: ${s.status} ${s.body}`)
    sockets.push(s)
    s.ws.send(JSON.stringify({ op: 'subscribe', topic }))
    await until(() => s.frames.find((f) => f.topic === topic && (f.op === 'subscribed' || f.op === 'error')), `an answer for ${topic}`)
    return s
  }
  const events = (s: Socket) => s.frames.filter((f) => f.op === 'event').length

  test('an edit through node A is an event at a client of node B', async () => {
    const s = await on(b, jwt)
    const r = await a.api(`/content-manager/collection-types/${UID}`, { method: 'POST', token: jwt, body: { title: 'Across nodes' } })
    expect(r.status).toBe(201)
    const e = await until(() => s.frames.find((f) => f.op === 'event' && (f.data as { documentId: string }).documentId === r.body.data.documentId), 'the event on B')
    expect(e).toMatchObject({ type: 'created', data: { action: 'create', by: { kind: 'admin', name: 'Admin Example' } } })
  })

  test('a users-permissions user blocked through node A: their socket on node B ends within 1 s, 0 events after', async () => {
    const roles = await a.api('/users-permissions/roles', { token: jwt })
    const id = (roles.body.roles as Array<{ id: number; type: string }>).find((r) => r.type === 'authenticated')!.id
    const role = (await a.api(`/users-permissions/roles/${id}`, { token: jwt })).body.role
    role.permissions['api::article'].controllers.article.find.enabled = true
    expect((await a.api(`/users-permissions/roles/${id}`, { method: 'PUT', token: jwt, body: role })).status).toBe(200)
    const reg = await a.api('/api/auth/local/register', { method: 'POST', body: { username: 'farreader', email: 'far@example.com', password: 'Reader-pass-1' } })
    expect(reg.status).toBe(200)
    const s = await on(b, reg.body.jwt as string)
    expect(s.frames.find((f) => f.topic === TOPIC)?.op).toBe('subscribed')
    const t0 = Date.now()
    const r = await a.api(`/content-manager/collection-types/plugin::users-permissions.user/${reg.body.user.documentId as string}`, { method: 'PUT', token: jwt, body: { blocked: true } })
    expect(r.status).toBe(200)
    expect(await s.closed).toBe(4401)
    console.log(`blocked on A → 4401 on B in ${s.closedAt! - t0} ms`)
    expect(s.closedAt! - t0).toBeLessThan(1000)
    const n = events(s)
    await a.api(`/content-manager/collection-types/${UID}`, { method: 'POST', token: jwt, body: { title: 'After the block' } })
    await new Promise((r) => setTimeout(r, 500))
    expect(events(s)).toBe(n)
  })

  test("an admin moved through node A to a role that may not read articles loses the topic on node B within 1 s", async () => {
    const ben = await addAdmin(a, jwt, { firstname: 'Ben', lastname: 'Hale', email: 'ben.nodes@example.com', password: 'Ben-pass-12' })
    const s = await on(b, ben.jwt)
    expect(s.frames.find((f) => f.topic === TOPIC)?.op).toBe('subscribed')
    const role = await a.api('/admin/roles', { method: 'POST', token: jwt, body: { name: 'Nothing to read', description: '' } })
    const t0 = Date.now()
    expect((await a.api(`/admin/users/${ben.id}`, { method: 'PUT', token: jwt, body: { roles: [role.body.data.id] } })).status).toBe(200)
    const gone = await until(() => s.frames.find((f) => f.op === 'unsubscribed' && f.topic === TOPIC), 'the topic withdrawn on B', 2000)
    console.log(`admin demoted on A → unsubscribed on B in ${gone.at - t0} ms`)
    expect(gone.at - t0).toBeLessThan(1000)
  })

  test("an entry's lock is one lock across nodes: refused on B while held on A, taken over from B (A told at once), and a killed node's lock passes on when its lease lapses", async () => {
    const doc = await a.api(`/content-manager/collection-types/${UID}`, { method: 'POST', token: jwt, body: { title: 'Locked' } })
    const key = `${TOPIC}:${doc.body.data.documentId as string}`
    const lock = async (s: Socket, takeover = false) => {
      const from = s.frames.length
      s.ws.send(JSON.stringify({ op: 'lock', key, tab: randomUUID(), ...(takeover ? { takeover: true } : {}) }))
      return until(() => s.frames.slice(from).find((f) => f.op === 'lock' && f.key === key), 'the lock answer')
    }
    const onA = await on(a, jwt, key)
    const onB = await on(b, jwt, key)
    expect(await lock(onA)).toMatchObject({ result: 'held' })
    expect(await lock(onB)).toMatchObject({ result: 'refused', holder: { info: { name: 'Admin Example' } } })
    const t0 = Date.now()
    expect(await lock(onB, true)).toMatchObject({ result: 'held' })
    const lost = await until(() => onA.frames.find((f) => f.op === 'lock-lost' && f.key === key), 'A told', 2000)
    console.log(`take over on B → holder on A told in ${lost.at - t0} ms`)
    // A takes it back, then node A dies with it.
    expect(await lock(onA, true)).toMatchObject({ result: 'held' })
    const t1 = Date.now()
    a.process.kill('SIGKILL')
    await until(() => onA.closedAt, 'A gone', 5000)
    let answer: Record<string, unknown> | undefined
    while (Date.now() - t1 < LEASE_MS + 10_000) {
      answer = await lock(onB)
      if (answer.result === 'held') break
      await new Promise((r) => setTimeout(r, 250))
    }
    const ms = Date.now() - t1
    console.log(`node A killed holding the lock → B gets it after ${ms} ms (leaseMs ${LEASE_MS})`)
    expect(answer).toMatchObject({ result: 'held' })
    expect(ms).toBeLessThan(LEASE_MS + 2000)
  }, 30_000)
})
