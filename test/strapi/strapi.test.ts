/**
 * cms-realtime in a real Strapi 5 (examples/strapi, TypeScript, PostgreSQL),
 * started the way a user starts it (`strapi start`), on its own database and
 * a loopback port. Run by `npm run test:strapi` (which installs and compiles
 * the example first), not by `npm test`: Strapi is an example, not a
 * dependency of the core. Under CI=true it runs, and fails without PostgreSQL.
 *
 * Covers issue #9: admin JWTs over `Authorization: Bearer`; writes through
 * the REST API and the admin's content-manager API arriving as events; no
 * token → 401; a users-permissions user without read permission →
 * forbidden (and allowed once the role may read); the browser client with
 * the credentials hook live in Chromium; 1001 when Strapi shuts down; and
 * bugs 2 and 4 as Strapi itself shows them (stderr, access log).
 */
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import WebSocket from 'ws'
import { chromium } from 'playwright-core'
import { ADMIN, CHROMIUM, CHROMIUM_ARGS, TOPIC, UID, addAdmin, describeStrapi, open, startStrapi, until, type Running, type Socket } from './harness'

describeStrapi()('cms-realtime in Strapi 5', () => {
  let strapi: Running
  let base: string
  let wsUrl: string
  let adminJwt: string
  let apiToken: string
  const sockets: WebSocket[] = []
  const latencies: Record<string, number[]> = {}

  const api: Running['api'] = (path, init) => strapi.api(path, init)

  async function subscribed(headers: Record<string, string>, topic = TOPIC): Promise<Socket> {
    const s = await open(wsUrl, headers)
    if (!('ws' in s)) throw new Error(`refused: ${s.status} ${s.body}`)
    sockets.push(s.ws)
    s.ws.send(JSON.stringify({ op: 'subscribe', topic }))
    await until(() => s.frames.find((f) => f.topic === topic && (f.op === 'subscribed' || f.op === 'error')), `an answer for ${topic}`)
    return s
  }

  /** Time from starting a write to its event at `s`: the figure the closing note quotes. */
  async function timed(
    name: string, s: Socket, type: string, write: () => Promise<{ status: number; body: any }>, known?: string, // eslint-disable-line @typescript-eslint/no-explicit-any
  ) {
    const from = s.frames.length
    const t0 = Date.now()
    const r = await write()
    ;(latencies[`${name}: write sent → its HTTP response`] ??= []).push(Date.now() - t0)
    expect(r.status).toBeLessThan(300)
    const documentId = known ?? r.body?.data?.documentId ?? r.body?.documentId
    const event = await until(
      () => s.frames.slice(from).find((f) => f.op === 'event' && f.type === type && (f.data as { documentId: string }).documentId === documentId), `${type} event`,
    )
    ;(latencies[`${name}: write sent → event at a Node client`] ??= []).push(event.at - t0)
    return { r, event, documentId: documentId as string }
  }

  beforeAll(async () => {
    // Revalidation far off: Strapi's lifecycles, not the periodic check, must end what ends.
    strapi = await startStrapi('cms_realtime_strapi_test', { REALTIME_REVALIDATE_MS: '600000' })
    base = strapi.base
    wsUrl = strapi.wsUrl
    const login = await api('/admin/login', { method: 'POST', body: ADMIN })
    expect(login.status).toBe(200)
    adminJwt = login.body.data.token
    const token = await api('/admin/api-tokens', {
      method: 'POST', token: adminJwt, body: { name: 'ci', description: '', type: 'full-access', lifespan: null },
    })
    expect(token.status).toBe(201)
    apiToken = token.body.data.accessKey
  }, 120_000)

  afterAll(async () => {
    if (process.env.STRAPI_TEST_DEBUG !== undefined) console.log(strapi?.output())
    for (const ws of sockets) ws.terminate()
    await strapi?.stop()
    for (const [name, ms] of Object.entries(latencies)) {
      const sorted = [...ms].sort((a, b) => a - b)
      console.log(`through Strapi, ${name}: median ${sorted[sorted.length >> 1]} ms, max ${sorted[sorted.length - 1]} ms (n=${ms.length})`)
    }
  })

  test('an admin JWT (POST /admin/login) opens the channel; REST API writes arrive as events on the type and the document topics', async () => {
    const s = await subscribed({ Authorization: `Bearer ${adminJwt}` })
    expect(s.frames.find((f) => f.topic === TOPIC)?.op).toBe('subscribed')
    const created = await timed('REST', s, 'created', () => api('/api/articles', { method: 'POST', token: apiToken, body: { data: { title: 'First', body: 'Hello' } } }))
    expect(created.event).toMatchObject({ topic: TOPIC, type: 'created', data: { uid: UID, documentId: created.documentId, action: 'create', title: 'First' } })
    // The document's own topic, from a second socket.
    const doc = await subscribed({ Authorization: `Bearer ${adminJwt}` }, `${TOPIC}:${created.documentId}`)
    for (let i = 1; i <= 5; i++) {
      await timed('REST', s, 'updated', () => api(`/api/articles/${created.documentId}`, { method: 'PUT', token: apiToken, body: { data: { title: `First v${i}` } } }))
    }
    await until(() => doc.frames.filter((f) => f.op === 'event').length === 5, 'five updates on the document topic')
    expect(doc.frames.filter((f) => f.op === 'event').map((f) => (f.data as { title: string }).title)).toEqual(['First v1', 'First v2', 'First v3', 'First v4', 'First v5'])
  })

  test("the admin's content-manager API: create, publish, unpublish, delete each arrive, in order", async () => {
    const s = await subscribed({ Authorization: `Bearer ${adminJwt}` })
    const cm = `/content-manager/collection-types/${UID}`
    const { documentId } = await timed('content-manager', s, 'created', () => api(cm, { method: 'POST', token: adminJwt, body: { title: 'Draft' } }))
    await timed('content-manager', s, 'published', () => api(`${cm}/${documentId}/actions/publish`, { method: 'POST', token: adminJwt, body: {} }))
    await timed('content-manager', s, 'unpublished', () => api(`${cm}/${documentId}/actions/unpublish`, { method: 'POST', token: adminJwt, body: {} }))
    await timed('content-manager', s, 'deleted', () => api(`${cm}/${documentId}`, { method: 'DELETE', token: adminJwt }), documentId)
    const mine = s.frames.filter((f) => f.op === 'event' && (f.data as { documentId: string }).documentId === documentId).map((f) => f.type)
    // The content-manager's publish saves the draft first (an update), then publishes.
    expect(mine).toEqual(['created', 'updated', 'published', 'unpublished', 'deleted'])
  })

  test('no token → 401; an API token → 401 (not enabled); a bad token → 401; the ticket route refuses alike', async () => {
    const none = await open(wsUrl)
    expect('status' in none && none.status).toBe(401)
    const withApiToken = await open(wsUrl, { Authorization: `Bearer ${apiToken}` })
    expect('status' in withApiToken && withApiToken.status).toBe(401)
    const bad = await open(wsUrl, { Authorization: 'Bearer not-a-jwt' })
    expect('status' in bad && bad.status).toBe(401)
    expect((await api('/realtime/ticket', { method: 'POST', token: 'not-a-jwt' })).status).toBe(401)
    expect((await api('/realtime/ticket', { method: 'POST', token: adminJwt })).status).toBe(200)
  })

  test('a users-permissions user: forbidden while the role may not read articles, allowed (and served) once it may', async () => {
    const reg = await api('/api/auth/local/register', { method: 'POST', body: { username: 'reader', email: 'reader@example.com', password: 'Reader-pass-1' } })
    expect(reg.status).toBe(200)
    const jwt = reg.body.jwt as string
    const denied = await subscribed({ Authorization: `Bearer ${jwt}` })
    expect(denied.frames.find((f) => f.topic === TOPIC)).toMatchObject({ op: 'error', code: 'forbidden' })
    // The admin lets the Authenticated role read articles (Settings → Roles).
    const roles = await api('/users-permissions/roles', { token: adminJwt })
    const id = (roles.body.roles as Array<{ id: number; type: string }>).find((r) => r.type === 'authenticated')!.id
    const role = (await api(`/users-permissions/roles/${id}`, { token: adminJwt })).body.role
    role.permissions['api::article'].controllers.article.find.enabled = true
    expect((await api(`/users-permissions/roles/${id}`, { method: 'PUT', token: adminJwt, body: role })).status).toBe(200)
    const allowed = await subscribed({ Authorization: `Bearer ${jwt}` })
    expect(allowed.frames.find((f) => f.topic === TOPIC)?.op).toBe('subscribed')
    await timed('REST', allowed, 'created', () => api('/api/articles', { method: 'POST', token: apiToken, body: { data: { title: 'For readers' } } }))
  })

  test('the browser client with the credentials hook goes live in Chromium (Strapi CSP as is) and shows a write at once', async () => {
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS })
    try {
      const page = await browser.newPage()
      const problems: string[] = []
      // The one expected error: the page's own probe for a refresh session while signed out (401).
      page.on('console', (m) => { if (m.type() === 'error' && !m.location().url.endsWith('/admin/access-token')) problems.push(m.text()) })
      page.on('pageerror', (e) => problems.push(e.message))
      const upgrades: string[] = []
      page.on('websocket', (ws) => upgrades.push(ws.url()))
      await page.goto(`${base}/live.html`)
      // Not signed in yet: the token hook gets no access token, so the client is signed-out and the form shows.
      await page.waitForSelector('#login:not([hidden])', { timeout: 10_000 })
      expect(await page.textContent('#state')).toBe('signed-out')
      await page.fill('input[name=email]', ADMIN.email)
      await page.fill('input[name=password]', ADMIN.password)
      await page.click('#login button[type=submit]')
      await page.waitForFunction(() => document.getElementById('state')?.textContent === 'live', undefined, { timeout: 10_000 })
      await page.waitForFunction(() => document.querySelectorAll('#list li[data-id]').length > 0, undefined, { timeout: 10_000 })
      for (let i = 0; i < 5; i++) {
        const title = `From the API ${i}`
        const t0 = Date.now()
        expect((await api('/api/articles', { method: 'POST', token: apiToken, body: { data: { title } } })).status).toBe(201)
        ;(latencies['REST: write sent → its HTTP response'] ??= []).push(Date.now() - t0)
        await page.waitForFunction((t) => [...document.querySelectorAll('#list .title')].some((e) => e.textContent === t), title, { timeout: 5000, polling: 5 })
        ;(latencies['REST: write sent → shown in the Chromium page'] ??= []).push(Date.now() - t0)
      }
      // A reload: the hook gets a fresh access token from Strapi's refresh cookie; no sign-in needed.
      await page.reload()
      await page.waitForFunction(() => document.getElementById('state')?.textContent === 'live', undefined, { timeout: 10_000 })
      expect(upgrades).toHaveLength(2)
      // The ticket, and (after a reload's first connect, when the client already holds topics) the subscriptions.
      for (const url of upgrades) expect(url).toMatch(/\/realtime\?nonce=[^&]+&ticket=[A-Za-z0-9_-]+(&topics=[^&]+)?$/)
      expect(new Set(upgrades.map((u) => new URL(u).searchParams.get('ticket'))).size).toBe(2) // one ticket per connection
      expect(problems).toEqual([])
    } finally {
      await browser.close()
    }
  })

  test("Strapi's own log and stderr: 101 for an upgrade, no ECONNRESET when a client resets its socket", async () => {
    const s = await subscribed({ Authorization: `Bearer ${adminJwt}` })
    ;(s.ws as unknown as { _socket: import('node:net').Socket })._socket.resetAndDestroy()
    await new Promise((r) => setTimeout(r, 300))
    expect(strapi.output()).toMatch(/GET \/realtime \(\d+ ms\) 101/)
    expect(strapi.output()).not.toMatch(/GET \/realtime \(\d+ ms\) 404/)
    expect(strapi.output()).not.toMatch(/ECONNRESET/)
  })

  test("signing out of Strapi (POST /admin/logout, one device) ends that session's connections with 4401 and no other", async () => {
    const deviceId = randomUUID()
    const login = await api('/admin/login', { method: 'POST', body: { ...ADMIN, deviceId } })
    const jwt = login.body.data.token as string
    const leaving = await subscribed({ Authorization: `Bearer ${jwt}` })
    const staying = await subscribed({ Authorization: `Bearer ${adminJwt}` })
    const t0 = Date.now()
    expect((await api('/admin/logout', { method: 'POST', token: jwt, body: { deviceId } })).status).toBe(200)
    expect(await leaving.closed).toBe(4401)
    const ms = leaving.closedAt! - t0
    console.log(`Strapi admin sign-out → 4401 in ${ms} ms (revalidateMs 600000: the session's own lifecycle)`)
    expect(ms).toBeLessThan(1000)
    await new Promise((r) => setTimeout(r, 700))
    expect(staying.ws.readyState).toBe(WebSocket.OPEN)
  })

  /** The Authenticated role may (or may not) find articles (Settings → Users & Permissions → Roles). */
  async function authenticatedMayFind(find: boolean): Promise<void> {
    const roles = await api('/users-permissions/roles', { token: adminJwt })
    const id = (roles.body.roles as Array<{ id: number; type: string }>).find((r) => r.type === 'authenticated')!.id
    const role = (await api(`/users-permissions/roles/${id}`, { token: adminJwt })).body.role
    role.permissions['api::article'].controllers.article.find.enabled = find
    expect((await api(`/users-permissions/roles/${id}`, { method: 'PUT', token: adminJwt, body: role })).status).toBe(200)
  }

  /** A users-permissions user, signed in on one device: JWT, id, device. */
  async function reader(name: string) {
    const reg = await api('/api/auth/local/register', { method: 'POST', body: { username: name, email: `${name}@example.com`, password: 'Reader-pass-1' } })
    expect(reg.status).toBe(200)
    const deviceId = randomUUID()
    const login = await api('/api/auth/local', { method: 'POST', body: { identifier: `${name}@example.com`, password: 'Reader-pass-1', deviceId } })
    expect(login.status).toBe(200)
    return { jwt: login.body.jwt as string, documentId: reg.body.user.documentId as string, deviceId }
  }

  /** An SSE stream on TOPIC with a bearer token: its events, and when it ended. */
  async function stream(jwt: string) {
    const ac = new AbortController()
    const r = await fetch(`${base}/realtime/events?topics=${encodeURIComponent(TOPIC)}`, { headers: { Authorization: `Bearer ${jwt}` }, signal: ac.signal })
    expect(r.status).toBe(200)
    const out = { text: '', endedAt: undefined as number | undefined, events: () => out.text.split('\n\n').filter((b) => /^event: /m.test(b) || /"op":"event"/.test(b)).length, abort: () => ac.abort() }
    void (async () => {
      try {
        for await (const chunk of r.body!) out.text += Buffer.from(chunk as Uint8Array).toString()
      } catch {
        // aborted
      }
      out.endedAt = Date.now()
    })()
    await until(() => out.text.includes('subscribed'), 'the stream to subscribe')
    return out
  }

  /** Events on `s` (socket or stream) after a write made now: after `settle` ms, how many arrived. */
  async function eventsAfterWrite(title: string): Promise<void> {
    expect((await api('/api/articles', { method: 'POST', token: apiToken, body: { data: { title } } })).status).toBe(201)
    await new Promise((r) => setTimeout(r, 500))
  }

  test('a users-permissions user blocked by an admin: the open WebSocket (4401) and SSE stream end within 1 s, and receive 0 events after', async () => {
    await authenticatedMayFind(true)
    const u = await reader('blocked')
    const ws = await subscribed({ Authorization: `Bearer ${u.jwt}` })
    expect(ws.frames.find((f) => f.topic === TOPIC)?.op).toBe('subscribed')
    const sse = await stream(u.jwt)
    const t0 = Date.now()
    const blocked = await api(`/content-manager/collection-types/plugin::users-permissions.user/${u.documentId}`, { method: 'PUT', token: adminJwt, body: { blocked: true } })
    expect(blocked.status).toBe(200)
    expect(await ws.closed).toBe(4401)
    await until(() => sse.endedAt, 'the stream to end', 2000)
    console.log(`blocked → WebSocket 4401 in ${ws.closedAt! - t0} ms, SSE stream ended in ${sse.endedAt! - t0} ms`)
    expect(ws.closedAt! - t0).toBeLessThan(1000)
    expect(sse.endedAt! - t0).toBeLessThan(1000)
    expect(sse.text).toContain('"code":4401')
    const before = { ws: ws.frames.filter((f) => f.op === 'event').length, sse: sse.events() }
    await eventsAfterWrite('after the block')
    expect({ ws: ws.frames.filter((f) => f.op === 'event').length, sse: sse.events() }).toEqual(before)
    // And the door stays shut.
    const again = await open(wsUrl, { Authorization: `Bearer ${u.jwt}` })
    expect('status' in again && again.status).toBe(401)
  })

  test('a users-permissions user deleted by an admin: 4401 within 1 s, 0 events after', async () => {
    const u = await reader('deleted')
    const ws = await subscribed({ Authorization: `Bearer ${u.jwt}` })
    const t0 = Date.now()
    expect((await api(`/content-manager/collection-types/plugin::users-permissions.user/${u.documentId}`, { method: 'DELETE', token: adminJwt })).status).toBe(200)
    expect(await ws.closed).toBe(4401)
    console.log(`deleted → 4401 in ${ws.closedAt! - t0} ms`)
    expect(ws.closedAt! - t0).toBeLessThan(1000)
    const n = ws.frames.filter((f) => f.op === 'event').length
    await eventsAfterWrite('after the delete')
    expect(ws.frames.filter((f) => f.op === 'event').length).toBe(n)
  })

  test("the user's role loses find on articles: the subscription is withdrawn (forbidden) within 1 s, the connection stays, 0 events after", async () => {
    const u = await reader('demoted')
    const ws = await subscribed({ Authorization: `Bearer ${u.jwt}` })
    const t0 = Date.now()
    await authenticatedMayFind(false)
    const gone = await until(() => ws.frames.find((f) => f.op === 'unsubscribed' && f.topic === TOPIC), 'the subscription to be withdrawn', 2000)
    console.log(`role lost find → unsubscribed (${String(gone.reason)}) in ${gone.at - t0} ms`)
    expect(gone.reason).toBe('forbidden')
    expect(gone.at - t0).toBeLessThan(1000)
    const n = ws.frames.filter((f) => f.op === 'event').length
    await eventsAfterWrite('after the role change')
    expect(ws.frames.filter((f) => f.op === 'event').length).toBe(n)
    expect(ws.ws.readyState).toBe(WebSocket.OPEN)
    await authenticatedMayFind(true)
  })

  test('a users-permissions sign-out (POST /api/auth/logout, one device) ends that device within 1 s and not the other, and its token opens no new connection', async () => {
    const u = await reader('leaver')
    const other = await api('/api/auth/local', { method: 'POST', body: { identifier: 'leaver@example.com', password: 'Reader-pass-1', deviceId: randomUUID() } })
    const leaving = await subscribed({ Authorization: `Bearer ${u.jwt}` })
    const staying = await subscribed({ Authorization: `Bearer ${other.body.jwt as string}` })
    const t0 = Date.now()
    expect((await api('/api/auth/logout', { method: 'POST', token: u.jwt, body: { deviceId: u.deviceId } })).status).toBe(200)
    expect(await leaving.closed).toBe(4401)
    console.log(`users-permissions sign-out → 4401 in ${leaving.closedAt! - t0} ms`)
    expect(leaving.closedAt! - t0).toBeLessThan(1000)
    // Its access token is still within its lifetime, and users-permissions itself would accept it: we do not.
    const again = await open(wsUrl, { Authorization: `Bearer ${u.jwt}` })
    expect('status' in again && again.status).toBe(401)
    await new Promise((r) => setTimeout(r, 300))
    expect(staying.ws.readyState).toBe(WebSocket.OPEN)
  })

  test('an admin deactivated, moved to a role without read, or deleted: 4401 / forbidden within 1 s, 0 events after', async () => {
    const ben = await addAdmin(strapi, adminJwt, { firstname: 'Ben', lastname: 'Hale', email: 'ben@example.com', password: 'Ben-pass-12' })
    // Deactivated (Settings → Users → Active off).
    let ws = await subscribed({ Authorization: `Bearer ${ben.jwt}` })
    let t0 = Date.now()
    expect((await api(`/admin/users/${ben.id}`, { method: 'PUT', token: adminJwt, body: { isActive: false } })).status).toBe(200)
    expect(await ws.closed).toBe(4401)
    console.log(`admin deactivated → 4401 in ${ws.closedAt! - t0} ms`)
    expect(ws.closedAt! - t0).toBeLessThan(1000)
    expect((await api(`/admin/users/${ben.id}`, { method: 'PUT', token: adminJwt, body: { isActive: true } })).status).toBe(200)
    // A role that may not read articles.
    const role = await api('/admin/roles', { method: 'POST', token: adminJwt, body: { name: 'No articles', description: 'reads nothing' } })
    expect(role.status).toBe(201)
    const jwt = (await api('/admin/login', { method: 'POST', body: { email: 'ben@example.com', password: 'Ben-pass-12' } })).body.data.token as string
    ws = await subscribed({ Authorization: `Bearer ${jwt}` })
    expect(ws.frames.find((f) => f.topic === TOPIC)?.op).toBe('subscribed')
    t0 = Date.now()
    expect((await api(`/admin/users/${ben.id}`, { method: 'PUT', token: adminJwt, body: { roles: [role.body.data.id] } })).status).toBe(200)
    const gone = await until(() => ws.frames.find((f) => f.op === 'unsubscribed' && f.topic === TOPIC), 'the subscription to be withdrawn', 2000)
    console.log(`admin role changed → unsubscribed in ${gone.at - t0} ms`)
    expect(gone.reason).toBe('forbidden')
    expect(gone.at - t0).toBeLessThan(1000)
    const n = ws.frames.filter((f) => f.op === 'event').length
    await eventsAfterWrite('after the admin role change')
    expect(ws.frames.filter((f) => f.op === 'event').length).toBe(n)
    // Deleted (Settings → Users → delete).
    t0 = Date.now()
    expect((await api(`/admin/users/${ben.id}`, { method: 'DELETE', token: adminJwt })).status).toBe(200)
    expect(await ws.closed).toBe(4401)
    console.log(`admin deleted → 4401 in ${ws.closedAt! - t0} ms`)
    expect(ws.closedAt! - t0).toBeLessThan(1000)
  })

  test('Strapi shutting down (SIGTERM → destroy) closes every socket with 1001', async () => {
    const a = await subscribed({ Authorization: `Bearer ${adminJwt}` })
    const b = await subscribed({ Authorization: `Bearer ${adminJwt}` }, `${TOPIC}:x`)
    strapi.process.kill('SIGTERM')
    expect(await a.closed).toBe(1001)
    expect(await b.closed).toBe(1001)
    await once(strapi.process, 'exit')
  }, 20_000)
})
